//! The log format: JSON lines, one per event, every field at the top level.
//!
//! Guest log lines carry their fields as one JSON object
//! ([`GUEST_FIELDS`]); they are merged into the line, so whatever fields
//! the guest chooses reach the log as fields of their own.

use std::fmt;

use ncps_edge_host_services::log::GUEST_FIELDS;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Install the JSON subscriber writing to `writer` at `level` (an env-filter
/// directive such as `info` or `info,ncps_edge::handler=debug`). Returns
/// false when a subscriber was installed already.
pub fn init<W>(level: &str, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .event_format(JsonLines)
        .with_env_filter(EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(writer)
        .try_init()
        .is_ok()
}

/// Names a guest may not take over.
const RESERVED: &[&str] = &["timestamp", "level", "target", "message"];

/// One JSON object per event: `timestamp`, `level`, `target`, `message` and
/// the event's fields.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut fields = Map::new();
        fields
            .insert("timestamp".into(), chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true).into());
        fields.insert("level".into(), meta.level().as_str().into());
        fields.insert("target".into(), meta.target().into());
        event.record(&mut FieldVisitor(&mut fields));
        let line = serde_json::to_string(&Value::Object(fields)).map_err(|_| fmt::Error)?;
        writer.write_str(&line)?;
        writer.write_char('\n')
    }
}

struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl FieldVisitor<'_> {
    fn merge_guest_fields(&mut self, json: &str) {
        let Ok(Value::Object(guest)) = serde_json::from_str::<Value>(json) else {
            self.0.insert(GUEST_FIELDS.into(), json.into());
            return;
        };
        for (k, v) in guest {
            if !RESERVED.contains(&k.as_str()) {
                self.0.insert(k, v);
            }
        }
    }
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == GUEST_FIELDS {
            self.merge_guest_fields(value);
        } else {
            self.0.insert(field.name().into(), value.into());
        }
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}
