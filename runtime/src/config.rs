//! Command line, environment and `config.yaml`, with ncps's names.
//!
//! Precedence: flag, then environment variable, then `--config` file, then
//! the default. The YAML keys are ncps's (`cache.upstream.urls`,
//! `cache.lock.download-lock-ttl`, `server.addr`, …).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, Parser, Subcommand};

/// `ncps-edge`: a Nix binary cache proxy for the edge.
#[derive(Debug, Parser)]
#[command(name = "ncps-edge", version, about, args_override_self = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the cache.
    #[command(args_override_self = true)]
    Serve(Box<ServeArgs>),
}

fn duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Flags of `ncps-edge serve` (ncps's names where ncps has the setting).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Path to a config.yaml with ncps's keys.
    #[arg(long, env = "CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Address to listen on.
    #[arg(long, env = "SERVER_ADDR", default_value = ":8501")]
    pub server_addr: String,
    /// Hostname of this cache; names the generated signing key.
    #[arg(long, env = "CACHE_HOSTNAME")]
    pub cache_hostname: String,
    /// Local data directory: NAR files, and the SQLite database by default.
    #[arg(long, env = "CACHE_STORAGE_LOCAL", default_value = "./ncps-edge-data")]
    pub cache_storage_local: PathBuf,
    /// S3 bucket for NAR files (instead of the local folder).
    #[arg(long, env = "CACHE_STORAGE_S3_BUCKET")]
    pub cache_storage_s3_bucket: Option<String>,
    /// S3 endpoint URL with scheme (default: AWS).
    #[arg(long, env = "CACHE_STORAGE_S3_ENDPOINT")]
    pub cache_storage_s3_endpoint: Option<String>,
    /// S3 region.
    #[arg(long, env = "CACHE_STORAGE_S3_REGION", default_value = "us-east-1")]
    pub cache_storage_s3_region: String,
    /// S3 access key id.
    #[arg(long, env = "CACHE_STORAGE_S3_ACCESS_KEY_ID", default_value = "")]
    pub cache_storage_s3_access_key_id: String,
    /// S3 secret access key.
    #[arg(long, env = "CACHE_STORAGE_S3_SECRET_ACCESS_KEY", default_value = "")]
    pub cache_storage_s3_secret_access_key: String,
    /// Path-style S3 addressing (MinIO and most S3-compatible servers).
    #[arg(long, env = "CACHE_STORAGE_S3_FORCE_PATH_STYLE", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_storage_s3_force_path_style: bool,
    /// Metadata database URL (default `sqlite:<storage>/db/db.sqlite`).
    #[arg(long, env = "CACHE_DATABASE_URL")]
    pub cache_database_url: Option<String>,
    /// Nix secret key file; default: a key generated once and kept in the database.
    #[arg(long, env = "CACHE_SECRET_KEY_PATH")]
    pub cache_secret_key_path: Option<PathBuf>,
    /// Add this cache's signature to narinfos.
    #[arg(long, env = "CACHE_SIGN_NARINFO", default_value_t = true, action = clap::ArgAction::Set)]
    pub cache_sign_narinfo: bool,
    /// `Priority:` served in /nix-cache-info (lower is preferred by Nix).
    #[arg(long, env = "CACHE_PRIORITY", default_value_t = 10)]
    pub cache_priority: u32,
    /// Upstream cache URL (repeatable; `?priority=N` sets its priority).
    #[arg(long = "cache-upstream-url", env = "CACHE_UPSTREAM_URLS", value_delimiter = ',')]
    pub cache_upstream_url: Vec<String>,
    /// Trusted upstream public key `name:base64` (repeatable).
    #[arg(long = "cache-upstream-public-key", env = "CACHE_UPSTREAM_PUBLIC_KEYS", value_delimiter = ',')]
    pub cache_upstream_public_key: Vec<String>,
    /// Time to wait for an upstream's response headers.
    #[arg(long, env = "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT", default_value = "3s", value_parser = duration)]
    pub cache_upstream_response_header_timeout: Duration,
    /// Accept PUT uploads of narinfos and NARs.
    #[arg(long, env = "CACHE_ALLOW_PUT_VERB", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_put_verb: bool,
    /// Accept DELETE of narinfos and NARs.
    #[arg(long, env = "CACHE_ALLOW_DELETE_VERB", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_delete_verb: bool,
    /// Require this token (bearer, or basic-auth password) on every request but /healthz.
    #[arg(long, env = "CACHE_GET_TOKEN")]
    pub cache_get_token: Option<String>,
    /// Lock backend: local, redis, postgres or mysql (default: redis when
    /// --cache-redis-addrs is given, else local).
    #[arg(long, env = "CACHE_LOCK_BACKEND", value_parser = ["local", "redis", "postgres", "mysql"])]
    pub cache_lock_backend: Option<String>,
    /// Prefix of every Redis lock key.
    #[arg(long, env = "CACHE_LOCK_REDIS_KEY_PREFIX", default_value = "ncps:lock:")]
    pub cache_lock_redis_key_prefix: String,
    /// Prefix of every PostgreSQL advisory lock key (hashed into the lock id).
    #[arg(long, env = "CACHE_LOCK_POSTGRES_KEY_PREFIX", default_value = "ncps:lock:")]
    pub cache_lock_postgres_key_prefix: String,
    /// Prefix of every MySQL lock name (hashed into the name).
    #[arg(long, env = "CACHE_LOCK_MYSQL_KEY_PREFIX", default_value = "ncps:lock:")]
    pub cache_lock_mysql_key_prefix: String,
    /// Fall back to local locks while the lock backend is unreachable (breaks HA guarantees).
    #[arg(long, env = "CACHE_LOCK_ALLOW_DEGRADED_MODE", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_lock_allow_degraded_mode: bool,
    /// Redis masters, `host:port` (repeatable or comma-separated); several are independent Redlock masters.
    #[arg(long = "cache-redis-addrs", env = "CACHE_REDIS_ADDRS", value_delimiter = ',')]
    pub cache_redis_addrs: Vec<String>,
    /// Redis ACL user name.
    #[arg(long, env = "CACHE_REDIS_USERNAME")]
    pub cache_redis_username: Option<String>,
    /// Redis password.
    #[arg(long, env = "CACHE_REDIS_PASSWORD")]
    pub cache_redis_password: Option<String>,
    /// Redis database number.
    #[arg(long, env = "CACHE_REDIS_DB", default_value_t = 0)]
    pub cache_redis_db: i64,
    /// Connect to Redis with TLS.
    #[arg(long, env = "CACHE_REDIS_USE_TLS", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_redis_use_tls: bool,
    /// Accepted for ncps compatibility: each master uses one multiplexed connection.
    #[arg(long, env = "CACHE_REDIS_POOL_SIZE", default_value_t = 10)]
    pub cache_redis_pool_size: u32,
    /// Connections of the PostgreSQL metadata pool.
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_OPEN_CONNS", default_value_t = 25)]
    pub cache_database_pool_max_open_conns: usize,
    /// TTL of per-hash download locks.
    #[arg(long, env = "CACHE_LOCK_DOWNLOAD_TTL", default_value = "5m", value_parser = duration)]
    pub cache_lock_download_ttl: Duration,
    /// TTL of the LRU lock.
    #[arg(long, env = "CACHE_LOCK_LRU_TTL", default_value = "30m", value_parser = duration)]
    pub cache_lock_lru_ttl: Duration,
    /// Retries of a lock acquisition.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub cache_lock_retry_max_attempts: usize,
    /// First retry delay.
    #[arg(long, env = "CACHE_LOCK_RETRY_INITIAL_DELAY", default_value = "100ms", value_parser = duration)]
    pub cache_lock_retry_initial_delay: Duration,
    /// Cap of the exponential retry delay.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_DELAY", default_value = "2s", value_parser = duration)]
    pub cache_lock_retry_max_delay: Duration,
    /// Random jitter on retry delays.
    #[arg(long, env = "CACHE_LOCK_RETRY_JITTER", default_value_t = true, action = clap::ArgAction::Set)]
    pub cache_lock_retry_jitter: bool,
    /// Largest narinfo accepted from upstream or by PUT, bytes.
    #[arg(long, env = "CACHE_NARINFO_MAX_SIZE", default_value_t = 1 << 20)]
    pub cache_narinfo_max_size: u64,
    /// Largest store size before the LRU pass evicts (units B, K, M, G, T; 1024-based).
    #[arg(long, env = "CACHE_MAX_SIZE", value_parser = parse_size)]
    pub cache_max_size: Option<u64>,
    /// Cron schedule (UTC) of LRU passes when --cache-max-size is set.
    #[arg(long, env = "CACHE_LRU_SCHEDULE", default_value = "0 * * * *")]
    pub cache_lru_schedule: String,
    /// Interval of upstream health checks.
    #[arg(long, env = "CACHE_UPSTREAM_HEALTH_INTERVAL", default_value = "1m", value_parser = duration)]
    pub cache_upstream_health_interval: Duration,
    /// Serve Prometheus metrics at /metrics.
    #[arg(long, env = "PROMETHEUS_ENABLED", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub prometheus_enabled: bool,
    /// Bearer token of the /admin/… routes (off when unset).
    #[arg(long, env = "ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Handler instances alive at once (requests served concurrently).
    #[arg(long, env = "WASM_MAX_INSTANCES", default_value_t = 1000)]
    pub wasm_max_instances: u32,
    /// Linear-memory cap per handler instance, bytes.
    #[arg(long, env = "WASM_MEMORY_LIMIT", default_value_t = 64 << 20)]
    pub wasm_memory_limit: usize,
    /// Deadline of one request's instance (long NAR downloads included).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "1h", value_parser = duration)]
    pub request_timeout: Duration,
    /// Cache of compiled handler code (default `<storage>/wasm-cache`).
    #[arg(long, env = "WASM_CACHE_DIR")]
    pub wasm_cache_dir: Option<PathBuf>,
}

/// `config.yaml` key paths and the flags they set.
const YAML_KEYS: &[(&str, &str)] = &[
    ("log.level", "log_level"),
    ("server.addr", "server_addr"),
    ("cache.hostname", "cache_hostname"),
    ("cache.storage.local", "cache_storage_local"),
    ("cache.database-url", "cache_database_url"),
    ("cache.storage.s3.bucket", "cache_storage_s3_bucket"),
    ("cache.storage.s3.endpoint", "cache_storage_s3_endpoint"),
    ("cache.storage.s3.region", "cache_storage_s3_region"),
    ("cache.storage.s3.access-key-id", "cache_storage_s3_access_key_id"),
    ("cache.storage.s3.secret-access-key", "cache_storage_s3_secret_access_key"),
    ("cache.storage.s3.force-path-style", "cache_storage_s3_force_path_style"),
    ("cache.secret-key-path", "cache_secret_key_path"),
    ("cache.sign-narinfo", "cache_sign_narinfo"),
    ("cache.priority", "cache_priority"),
    ("cache.upstream.urls", "cache_upstream_url"),
    ("cache.upstream.public-keys", "cache_upstream_public_key"),
    ("cache.upstream.response-header-timeout", "cache_upstream_response_header_timeout"),
    ("cache.allow-put-verb", "cache_allow_put_verb"),
    ("cache.allow-delete-verb", "cache_allow_delete_verb"),
    ("cache.get-token", "cache_get_token"),
    ("cache.lock.backend", "cache_lock_backend"),
    ("cache.lock.redis.key-prefix", "cache_lock_redis_key_prefix"),
    ("cache.lock.postgres.key-prefix", "cache_lock_postgres_key_prefix"),
    ("cache.lock.mysql.key-prefix", "cache_lock_mysql_key_prefix"),
    ("cache.lock.allow-degraded-mode", "cache_lock_allow_degraded_mode"),
    ("cache.redis.addrs", "cache_redis_addrs"),
    ("cache.redis.username", "cache_redis_username"),
    ("cache.redis.password", "cache_redis_password"),
    ("cache.redis.db", "cache_redis_db"),
    ("cache.redis.use-tls", "cache_redis_use_tls"),
    ("cache.redis.pool-size", "cache_redis_pool_size"),
    ("cache.database.pool.max-open-conns", "cache_database_pool_max_open_conns"),
    ("cache.lock.download-lock-ttl", "cache_lock_download_ttl"),
    ("cache.lock.lru-lock-ttl", "cache_lock_lru_ttl"),
    ("cache.lock.retry.max-attempts", "cache_lock_retry_max_attempts"),
    ("cache.lock.retry.initial-delay", "cache_lock_retry_initial_delay"),
    ("cache.lock.retry.max-delay", "cache_lock_retry_max_delay"),
    ("cache.lock.retry.jitter", "cache_lock_retry_jitter"),
    ("cache.max-size", "cache_max_size"),
    ("cache.lru.schedule", "cache_lru_schedule"),
    ("prometheus.enabled", "prometheus_enabled"),
];

/// Parse a size like ncps does: a number with an optional unit B, K, M, G
/// or T (powers of 1024), e.g. `100G`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| format!("{s:?} is not a size like 100G"))?;
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{s:?}: unit must be B, K, M, G or T")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

fn yaml_scalar(v: &serde_yaml::Value) -> Option<String> {
    match v {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Flags that `yaml` sets and that neither the command line nor the
/// environment set already.
fn flags_from_yaml(yaml: &serde_yaml::Value, matches: &ArgMatches) -> anyhow::Result<Vec<String>> {
    let cmd = ServeArgs::augment_args(clap::Command::new("serve"));
    let mut flags = Vec::new();
    for (path, id) in YAML_KEYS {
        let Some(value) = path.split('.').try_fold(yaml, |v, k| v.get(k)) else {
            continue;
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
            serde_yaml::Value::Sequence(items) => items.iter().filter_map(yaml_scalar).collect(),
            serde_yaml::Value::Null => continue,
            other => {
                vec![yaml_scalar(other).with_context(|| format!("{path} must be a scalar or a list"))?]
            }
        };
        flags.extend(values.into_iter().map(|v| format!("--{long}={v}")));
    }
    Ok(flags)
}

/// Parse `argv` (program name first), folding in `--config` when given.
pub fn parse_cli(argv: Vec<String>) -> anyhow::Result<Cli> {
    // First pass only finds `--config` and where each value came from;
    // required flags may still be missing until the file is folded in.
    let matches = Cli::command().ignore_errors(true).try_get_matches_from(&argv)?;
    let Some(path) = matches.subcommand_matches("serve").and_then(|m| m.get_one::<PathBuf>("config")) else {
        return Ok(Cli::try_parse_from(argv)?);
    };
    let serve = matches.subcommand_matches("serve").context("serve")?;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let mut argv = argv;
    argv.extend(flags_from_yaml(&yaml, serve)?);
    Ok(Cli::try_parse_from(argv)?)
}

/// One upstream cache from `--cache-upstream-url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Base URL without query or trailing slash.
    pub url: String,
    /// Priority from `?priority=N`, if given.
    pub priority: Option<u32>,
}

/// Parse an upstream URL: http(s) only, optional `?priority=N`.
pub fn parse_upstream(raw: &str) -> anyhow::Result<UpstreamUrl> {
    let parsed = url::Url::parse(raw).with_context(|| format!("upstream URL {raw:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        bail!("upstream URL {raw:?} must be http:// or https:// with a host");
    }
    let mut priority = None;
    for (k, v) in parsed.query_pairs() {
        match k.as_ref() {
            "priority" => priority = Some(v.parse().with_context(|| format!("priority in {raw:?}"))?),
            other => bail!("unknown upstream URL parameter {other:?} in {raw:?}"),
        }
    }
    let mut base = parsed.clone();
    base.set_query(None);
    Ok(UpstreamUrl { url: base.as_str().trim_end_matches('/').to_owned(), priority })
}

/// Turn ncps's `:8501` into a bindable address.
pub fn listen_addr(addr: &str) -> String {
    if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> ServeArgs {
        let argv = ["ncps-edge", "serve"].iter().chain(args).map(|s| s.to_string()).collect();
        let Command::Serve(s) = parse_cli(argv).unwrap().command;
        *s
    }

    #[test]
    fn defaults_match_ncps() {
        let s = serve(&["--cache-hostname=h"]);
        assert_eq!(s.server_addr, ":8501");
        assert_eq!(s.cache_lock_download_ttl, Duration::from_secs(300));
        assert_eq!(s.cache_lock_lru_ttl, Duration::from_secs(1800));
        assert_eq!(s.cache_lock_retry_max_attempts, 3);
        assert_eq!(s.cache_lock_retry_initial_delay, Duration::from_millis(100));
        assert_eq!(s.cache_lock_retry_max_delay, Duration::from_secs(2));
        assert!(s.cache_lock_retry_jitter && s.cache_sign_narinfo);
        assert_eq!(s.cache_lock_redis_key_prefix, "ncps:lock:");
        assert!(!s.cache_allow_put_verb);
    }

    #[test]
    fn config_yaml_fills_what_flags_do_not_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(
            &path,
            "cache:\n  hostname: from-yaml\n  allow-put-verb: true\n  upstream:\n    urls:\n      - https://a.example\n      - http://b.example?priority=5\n  lock:\n    download-lock-ttl: 90s\nserver:\n  addr: \":9000\"\n",
        )
        .unwrap();
        let s = serve(&[&format!("--config={}", path.display()), "--server-addr=127.0.0.1:1"]);
        assert_eq!(s.cache_hostname, "from-yaml");
        assert!(s.cache_allow_put_verb);
        assert_eq!(s.cache_upstream_url, vec!["https://a.example", "http://b.example?priority=5"]);
        assert_eq!(s.cache_lock_download_ttl, Duration::from_secs(90));
        assert_eq!(s.server_addr, "127.0.0.1:1", "a flag beats the file");
    }

    #[test]
    fn upstream_urls_and_priorities() {
        assert_eq!(
            parse_upstream("https://cache.nixos.org/?priority=40").unwrap(),
            UpstreamUrl { url: "https://cache.nixos.org".into(), priority: Some(40) }
        );
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("http://x?prio=1").is_err());
        assert_eq!(listen_addr(":8501"), "0.0.0.0:8501");
    }

    #[test]
    fn sizes_use_ncps_units() {
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("5K"), Ok(5 << 10));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("3MB"), Ok(3 << 20));
        assert!(parse_size("G").is_err() && parse_size("5X").is_err() && parse_size("99999999999T").is_err());
    }
}
