//! `ncps:edge/log`: the guest's log lines in the node's log.
//!
//! The guest chooses its fields; they are passed through as one JSON
//! object in the `guest_fields` field, which the runtime's JSON log format
//! merges into the line, so every field the guest sends reaches the log.

use wasmtime::component::{HasData, Linker};

use crate::bindings::log;
use crate::NcpsEdgeView;

/// Target of every guest log line.
pub const GUEST_TARGET: &str = "ncps_edge::handler";

/// Name of the field that carries the guest's fields as a JSON object.
pub const GUEST_FIELDS: &str = "guest_fields";

struct LogView;

impl HasData for LogView {
    type Data<'a> = LogView;
}

/// The guest's fields as one JSON object.
fn fields_json(fields: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> =
        fields.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    serde_json::Value::Object(map).to_string()
}

impl log::Host for LogView {
    async fn log(&mut self, level: log::Level, message: String, fields: Vec<(String, String)>) -> wasmtime::Result<()> {
        macro_rules! emit {
            ($lvl:expr) => {
                if tracing::enabled!(target: GUEST_TARGET, $lvl) {
                    let guest_fields = fields_json(&fields);
                    tracing::event!(target: GUEST_TARGET, $lvl, guest_fields = guest_fields.as_str(), "{message}");
                }
            };
        }
        match level {
            log::Level::Trace => emit!(tracing::Level::TRACE),
            log::Level::Debug => emit!(tracing::Level::DEBUG),
            log::Level::Info => emit!(tracing::Level::INFO),
            log::Level::Warn => emit!(tracing::Level::WARN),
            log::Level::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    log::add_to_linker::<T, LogView>(linker, |_| LogView)
}
