//! `ncps:edge/log`: one JSON line per entry on stderr, which Spin keeps in
//! its component logs.

use crate::bindings::exports::ncps::edge::log::{Guest, Level};

fn write(level: &str, message: &str, fields: &[(&str, &str)]) {
    let mut line = serde_json::Map::new();
    line.insert("level".into(), level.into());
    line.insert("message".into(), message.into());
    line.insert("target".into(), "ncps_edge::spin".into());
    for (k, v) in fields {
        line.insert((*k).to_owned(), (*v).into());
    }
    eprintln!("{}", serde_json::Value::Object(line));
}

/// Log an error of the adapter itself.
pub fn error(message: &str, fields: &[(&str, &str)]) {
    write("ERROR", message, fields);
}

/// Log a warning of the adapter itself.
pub fn warn(message: &str, fields: &[(&str, &str)]) {
    write("WARN", message, fields);
}

impl Guest for crate::Adapter {
    fn log(level: Level, message: String, fields: Vec<(String, String)>) {
        let level = match level {
            Level::Trace => "TRACE",
            Level::Debug => "DEBUG",
            Level::Info => "INFO",
            Level::Warn => "WARN",
            Level::Error => "ERROR",
        };
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        write(level, &message, &fields);
    }
}
