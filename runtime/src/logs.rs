//! The log format: JSON lines, one per event, fields at the top level.

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Install the JSON subscriber writing to `writer` at `level` (an env-filter
/// directive such as `info` or `info,ncps_edge::handler=debug`). Returns
/// false when a subscriber was installed already.
pub fn init<W>(level: &str, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(writer)
        .try_init()
        .is_ok()
}
