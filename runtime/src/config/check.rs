//! `ncps-edge config check`: the effective configuration, every key with
//! its value and where it came from, secrets masked.

use std::fmt::Write as _;

use clap::parser::ValueSource;
use clap::ArgMatches;

use super::values::mask_url;
use super::yaml::KEYS;
use super::{lock_name, Config, DatabaseUrl, StorageConfig};

/// Settings whose values are secrets.
const SECRETS: &[&str] = &[
    "cache_get_token",
    "cache_put_token",
    "cache_delete_token",
    "cache_redis_password",
    "cache_storage_s3_secret_access_key",
    "admin_token",
];

/// Settings that may carry a password inside a URL.
const URLS: &[&str] = &["cache_database_url", "cache_upstream_url"];

fn source(s: Option<ValueSource>) -> &'static str {
    match s {
        Some(ValueSource::CommandLine) => "flag or config file",
        Some(ValueSource::EnvVariable) => "environment",
        Some(ValueSource::DefaultValue) => "default",
        _ => "unset",
    }
}

/// The effective configuration as `key: value  # source` lines.
pub fn effective(matches: &ArgMatches, config: &Config) -> String {
    let mut out = String::new();
    for (key, id) in KEYS {
        let values: Vec<String> = matches
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let shown: Vec<String> = values
            .iter()
            .map(|v| {
                if SECRETS.contains(id) && !v.is_empty() {
                    "****".to_owned()
                } else if URLS.contains(id) {
                    mask_url(v)
                } else {
                    v.clone()
                }
            })
            .collect();
        let value = match shown.len() {
            0 => "~".to_owned(),
            1 => shown[0].clone(),
            _ => format!("[{}]", shown.join(", ")),
        };
        let _ = writeln!(out, "{key}: {value}  # {}", source(matches.value_source(id)));
    }
    let _ = writeln!(out, "# resolved");
    let _ = writeln!(out, "data-dir: {}", config.data_dir.display());
    let database = match &config.database.url {
        DatabaseUrl::Sqlite(p) => format!("sqlite:{}", p.display()),
        DatabaseUrl::Postgres(u) | DatabaseUrl::Mysql(u) => mask_url(u),
    };
    let _ = writeln!(out, "database: {database}");
    let _ = writeln!(out, "lock-backend: {} (prefix {:?})", lock_name(config.locks.backend), config.locks.prefix);
    let storage = match &config.storage {
        StorageConfig::Local(dir) => format!("local {}", dir.join("store").display()),
        StorageConfig::S3(s3) => format!("s3 bucket {} at {}", s3.bucket, s3.endpoint.as_deref().unwrap_or("AWS")),
    };
    let _ = writeln!(out, "storage: {storage}");
    let wasm_cache = config.engine.cache_dir.as_deref().map_or("none".into(), |d| d.display().to_string());
    let _ = writeln!(out, "wasm-cache-dir: {wasm_cache}");
    let memory = match config.edge.memory {
        0 => "off".to_owned(),
        bytes => format!("{bytes} bytes in memory"),
    };
    let disk = match &config.edge.disk {
        Some(disk) => format!("{} bytes of NARs in {}", disk.size, disk.dir.display()),
        None => "no local-disk tier".to_owned(),
    };
    let _ = writeln!(out, "edge-cache: {memory}, {disk}");
    for key in &config.without_effect {
        let _ = writeln!(out, "# warning: `{key}` is an ncps setting without effect in ncps-edge");
    }
    out
}
