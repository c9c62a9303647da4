//! `config.yaml`: ncps's keys, each mapped to one flag.
//!
//! A key the file sets is added to the command line as its flag unless the
//! command line or the environment set that flag already (so a flag beats
//! the environment, which beats the file, which beats the default). Every
//! key is checked: one this table does not know is an error naming the
//! closest known key, except ncps keys for features ncps-edge does not
//! have, which load with a warning.

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use serde_yaml::Value;

use super::flags::ServeArgs;

/// `config.yaml` key paths and the flag (clap id) each one sets.
pub const KEYS: &[(&str, &str)] = &[
    ("log.level", "log_level"),
    ("server.addr", "server_addr"),
    ("server.request-timeout", "request_timeout"),
    ("server.read-header-timeout", "server_read_header_timeout"),
    ("server.max-connections", "server_max_connections"),
    ("server.max-header-size", "server_max_header_size"),
    ("server.shutdown-timeout", "shutdown_timeout"),
    ("cache.hostname", "cache_hostname"),
    ("cache.storage.local", "cache_storage_local"),
    ("cache.database-url", "cache_database_url"),
    ("cache.database.pool.max-open-conns", "cache_database_pool_max_open_conns"),
    ("cache.database.pool.max-idle-conns", "cache_database_pool_max_idle_conns"),
    ("cache.storage.s3.bucket", "cache_storage_s3_bucket"),
    ("cache.storage.s3.endpoint", "cache_storage_s3_endpoint"),
    ("cache.storage.s3.region", "cache_storage_s3_region"),
    ("cache.storage.s3.access-key-id", "cache_storage_s3_access_key_id"),
    ("cache.storage.s3.secret-access-key", "cache_storage_s3_secret_access_key"),
    ("cache.storage.s3.force-path-style", "cache_storage_s3_force_path_style"),
    ("cache.secret-key-path", "cache_secret_key_path"),
    ("cache.sign-narinfo", "cache_sign_narinfo"),
    ("cache.priority", "cache_priority"),
    ("cache.narinfo-max-size", "cache_narinfo_max_size"),
    ("cache.upstream.urls", "cache_upstream_url"),
    ("cache.upstream.public-keys", "cache_upstream_public_key"),
    ("cache.upstream.allow-unsigned", "cache_upstream_allow_unsigned"),
    ("cache.upstream.response-header-timeout", "cache_upstream_response_header_timeout"),
    ("cache.upstream.dialer-timeout", "cache_upstream_dialer_timeout"),
    ("cache.upstream.stall-timeout", "cache_upstream_stall_timeout"),
    ("cache.upstream.health-interval", "cache_upstream_health_interval"),
    ("cache.allow-put-verb", "cache_allow_put_verb"),
    ("cache.allow-delete-verb", "cache_allow_delete_verb"),
    ("cache.get-token", "cache_get_token"),
    ("cache.put-token", "cache_put_token"),
    ("cache.delete-token", "cache_delete_token"),
    ("cache.allow-anonymous-writes", "cache_allow_anonymous_writes"),
    ("cache.trusted-upload-keys", "cache_upload_trusted_key"),
    ("cache.require-trusted-signature", "cache_require_trusted_signature"),
    ("cache.max-upload-size", "cache_max_upload_size"),
    ("cache.lock.backend", "cache_lock_backend"),
    ("cache.lock.redis.key-prefix", "cache_lock_redis_key_prefix"),
    ("cache.lock.postgres.key-prefix", "cache_lock_postgres_key_prefix"),
    ("cache.lock.mysql.key-prefix", "cache_lock_mysql_key_prefix"),
    ("cache.lock.allow-degraded-mode", "cache_lock_allow_degraded_mode"),
    ("cache.lock.download-lock-ttl", "cache_lock_download_ttl"),
    ("cache.lock.lru-lock-ttl", "cache_lock_lru_ttl"),
    ("cache.lock.download-lease", "cache_lock_download_lease"),
    ("cache.lock.heartbeat-interval", "cache_lock_heartbeat_interval"),
    ("cache.backend-timeout", "cache_backend_timeout"),
    ("cache.lock.retry.max-attempts", "cache_lock_retry_max_attempts"),
    ("cache.lock.retry.initial-delay", "cache_lock_retry_initial_delay"),
    ("cache.lock.retry.max-delay", "cache_lock_retry_max_delay"),
    ("cache.lock.retry.jitter", "cache_lock_retry_jitter"),
    ("cache.redis.addrs", "cache_redis_addrs"),
    ("cache.redis.username", "cache_redis_username"),
    ("cache.redis.password", "cache_redis_password"),
    ("cache.redis.db", "cache_redis_db"),
    ("cache.redis.use-tls", "cache_redis_use_tls"),
    ("cache.redis.ca-cert", "cache_redis_ca_cert"),
    ("cache.redis.pool-size", "cache_redis_pool_size"),
    ("cache.max-size", "cache_max_size"),
    ("cache.lru.schedule", "cache_lru_schedule"),
    ("cache.lru.timezone", "cache_lru_timezone"),
    ("prometheus.enabled", "prometheus_enabled"),
    ("admin.token", "admin_token"),
    ("wasm.max-instances", "wasm_max_instances"),
    ("wasm.memory-limit", "wasm_memory_limit"),
    ("wasm.cache-dir", "wasm_cache_dir"),
    ("edge-cache.memory", "edge_cache_memory"),
    ("edge-cache.max-age", "edge_cache_max_age"),
    ("edge-cache.dir", "edge_cache_dir"),
    ("edge-cache.size", "edge_cache_size"),
    ("edge-cache.stale-if-error", "edge_cache_stale_if_error"),
    ("cache.negative-ttl", "cache_negative_ttl"),
    ("cache.node-url", "cache_node_url"),
];

/// ncps keys (and sub-trees) of features ncps-edge does not have: an ncps
/// config file with them loads, with a warning for each one set.
pub const NCPS_WITHOUT_EFFECT: &[&str] = &[
    "analytics",
    "opentelemetry",
    "cache.cdc",
    "cache.inflight-staging",
    "cache.download.poll-timeout",
    "cache.temp-path",
    "cache.netrc-file",
];

/// What reading a config file found out besides the flags.
#[derive(Debug, Default)]
pub struct Folded {
    /// `--flag=value` arguments the file adds.
    pub flags: Vec<String>,
    /// ncps keys set in the file that have no effect here.
    pub without_effect: Vec<String>,
}

/// Every leaf of a YAML document as (dotted path, value).
fn leaves<'a>(prefix: &str, v: &'a Value, out: &mut Vec<(String, &'a Value)>) -> anyhow::Result<()> {
    match v {
        Value::Mapping(map) => {
            for (k, child) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => bail!("{prefix}: key {other:?} is not a string"),
                };
                let path = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                leaves(&path, child, out)?;
            }
            Ok(())
        }
        _ => {
            out.push((prefix.to_owned(), v));
            Ok(())
        }
    }
}

fn under(path: &str, tree: &str) -> bool {
    path == tree || path.strip_prefix(tree).is_some_and(|rest| rest.starts_with('.'))
}

/// The known key closest to `path`.
fn closest(path: &str) -> &'static str {
    KEYS.iter()
        .map(|(k, _)| *k)
        .max_by(|a, b| strsim::jaro_winkler(path, a).total_cmp(&strsim::jaro_winkler(path, b)))
        .unwrap_or("cache.hostname")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The flags `yaml` sets that neither the command line nor the environment
/// set already; an unknown key is an error.
pub fn fold(yaml: &Value, matches: &ArgMatches) -> anyhow::Result<Folded> {
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let mut found = Vec::new();
    if !yaml.is_null() {
        leaves("", yaml, &mut found)?;
    }
    let mut folded = Folded::default();
    for (path, value) in found {
        if let Some(tree) = NCPS_WITHOUT_EFFECT.iter().find(|t| under(&path, t)) {
            if !value.is_null() && !folded.without_effect.iter().any(|w| w == tree) {
                folded.without_effect.push((*tree).to_owned());
            }
            continue;
        }
        let Some((_, id)) = KEYS.iter().find(|(k, _)| *k == path) else {
            // An empty section (`pool:` with only comments under it).
            if value.is_null() && KEYS.iter().any(|(k, _)| under(k, &path)) {
                continue;
            }
            bail!("unknown key `{path}` in the config file; did you mean `{}`?", closest(&path));
        };
        if matches!(matches.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        let long = cmd
            .get_arguments()
            .find(|a| a.get_id() == id)
            .and_then(|a| a.get_long())
            .with_context(|| format!("no flag for {path}"))?;
        let values: Vec<String> = match value {
            Value::Sequence(items) => items
                .iter()
                .map(|i| scalar(i).with_context(|| format!("`{path}` must be a list of plain values")))
                .collect::<anyhow::Result<_>>()?,
            Value::Null => continue,
            other => vec![scalar(other).with_context(|| format!("`{path}` must be a value or a list"))?],
        };
        folded.flags.extend(values.into_iter().map(|v| format!("--{long}={v}")));
    }
    Ok(folded)
}
