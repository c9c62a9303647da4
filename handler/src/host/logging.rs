//! Structured logging into the host's log.

pub use crate::bindings::ncps::edge::log::Level;

/// Log `message` with `fields` (`hash`, `duration_ms`, `upstream`, …).
pub fn log(level: Level, message: &str, fields: &[(&str, &str)]) {
    let fields: Vec<(String, String)> = fields.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    crate::bindings::ncps::edge::log::log(level, message, &fields);
}

/// Log at info level.
pub fn info(message: &str, fields: &[(&str, &str)]) {
    log(Level::Info, message, fields);
}

/// Log at warn level.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    log(Level::Warn, message, fields);
}

/// Log at debug level.
pub fn debug(message: &str, fields: &[(&str, &str)]) {
    log(Level::Debug, message, fields);
}
