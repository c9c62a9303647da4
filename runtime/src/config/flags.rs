//! The flags of a node (`ncps-edge serve`, and every command that acts as a
//! node): ncps's flag and environment variable names. Precedence: flag,
//! then environment variable, then `--config` file (see [`super::yaml`]),
//! then the default. [`super::Config`] turns them into typed settings.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::values::{parse_database_url, parse_duration, parse_public_key, parse_size, parse_upstream};
use super::values::{DatabaseUrl, UpstreamUrl};

/// A lock backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LockBackendKind {
    /// In-memory locks of one node.
    Local,
    /// Redlock over `--cache-redis-addrs`.
    Redis,
    /// PostgreSQL advisory locks on one session per node.
    Postgres,
    /// MySQL/MariaDB `GET_LOCK` on one session per node.
    Mysql,
}

fn database_url(s: &str) -> Result<DatabaseUrl, String> {
    parse_database_url(s).map_err(|e| format!("{e:#}"))
}

fn upstream(s: &str) -> Result<UpstreamUrl, String> {
    parse_upstream(s).map_err(|e| format!("{e:#}"))
}

fn public_key(s: &str) -> Result<String, String> {
    parse_public_key(s).map_err(|e| format!("{e:#}"))
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
    /// A request head must arrive within this (slow clients are cut); idle
    /// keep-alive connections are closed after it too.
    #[arg(long, env = "SERVER_READ_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub server_read_header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    #[arg(long, env = "SERVER_MAX_CONNECTIONS", default_value_t = 4096)]
    pub server_max_connections: usize,
    /// Largest request head (units B, K, M, G, T).
    #[arg(long, env = "SERVER_MAX_HEADER_SIZE", default_value = "64K", value_parser = parse_size)]
    pub server_max_header_size: u64,
    /// On SIGTERM: how long requests in flight may take to finish before
    /// they are cut.
    #[arg(long, env = "SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
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
    /// Metadata database URL: sqlite:<path>, postgresql://… or mysql://… (default `sqlite:<storage>/db/db.sqlite`).
    #[arg(long, env = "CACHE_DATABASE_URL", value_parser = database_url)]
    pub cache_database_url: Option<DatabaseUrl>,
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
    #[arg(long = "cache-upstream-url", env = "CACHE_UPSTREAM_URLS", value_delimiter = ',', value_parser = upstream)]
    pub cache_upstream_url: Vec<UpstreamUrl>,
    /// Trusted upstream public key `name:base64` (repeatable).
    #[arg(long = "cache-upstream-public-key", env = "CACHE_UPSTREAM_PUBLIC_KEYS", value_delimiter = ',', value_parser = public_key)]
    pub cache_upstream_public_key: Vec<String>,
    /// Accept narinfos from upstreams without verifying them (only when no
    /// --cache-upstream-public-key is given; logged loudly at start).
    #[arg(long, env = "CACHE_UPSTREAM_ALLOW_UNSIGNED", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_upstream_allow_unsigned: bool,
    /// Time to wait for an upstream's response headers.
    #[arg(long, env = "CACHE_UPSTREAM_RESPONSE_HEADER_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub cache_upstream_response_header_timeout: Duration,
    /// How long a NAR transfer from an upstream may stall before it is given up.
    #[arg(long, env = "CACHE_UPSTREAM_STALL_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub cache_upstream_stall_timeout: Duration,
    /// Time to establish a connection to an upstream.
    #[arg(long, env = "CACHE_UPSTREAM_DIALER_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub cache_upstream_dialer_timeout: Duration,
    /// Accept PUT uploads of narinfos and NARs.
    #[arg(long, env = "CACHE_ALLOW_PUT_VERB", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_put_verb: bool,
    /// Accept DELETE of narinfos and NARs.
    #[arg(long, env = "CACHE_ALLOW_DELETE_VERB", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_delete_verb: bool,
    /// Require this token (bearer, or basic-auth password) on reads; /healthz and /metrics are exempt.
    #[arg(long, env = "CACHE_GET_TOKEN")]
    pub cache_get_token: Option<String>,
    /// Token that uploads (PUT) must present (bearer, or basic-auth password).
    #[arg(long, env = "CACHE_PUT_TOKEN")]
    pub cache_put_token: Option<String>,
    /// Token that deletes (DELETE) must present.
    #[arg(long, env = "CACHE_DELETE_TOKEN")]
    pub cache_delete_token: Option<String>,
    /// Allow PUT/DELETE without a write token (anyone who can reach the node
    /// can then make it sign store paths; logged loudly at start).
    #[arg(long, env = "CACHE_ALLOW_ANONYMOUS_WRITES", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_allow_anonymous_writes: bool,
    /// Key `name:base64` one of which must have signed an uploaded narinfo
    /// before the cache adds its own signature (repeatable).
    #[arg(long = "cache-upload-trusted-key", env = "CACHE_UPLOAD_TRUSTED_KEYS", value_delimiter = ',', value_parser = public_key)]
    pub cache_upload_trusted_key: Vec<String>,
    /// Refuse uploaded narinfos without a signature by an upload-trusted key
    /// (with none configured: refuse them all).
    #[arg(long, env = "CACHE_REQUIRE_TRUSTED_SIGNATURE", num_args = 0..=1, default_value_t = false, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub cache_require_trusted_signature: bool,
    /// Largest PUT body accepted (units B, K, M, G, T).
    #[arg(long, env = "CACHE_MAX_UPLOAD_SIZE", default_value = "8G", value_parser = parse_size)]
    pub cache_max_upload_size: u64,
    /// Lock backend (default: redis when --cache-redis-addrs is given, else local).
    #[arg(long, env = "CACHE_LOCK_BACKEND", value_enum)]
    pub cache_lock_backend: Option<LockBackendKind>,
    /// Prefix of every Redis lock key.
    #[arg(long, env = "CACHE_LOCK_REDIS_KEY_PREFIX", default_value = ncps_edge_wire::locks::DEFAULT_PREFIX)]
    pub cache_lock_redis_key_prefix: String,
    /// Prefix of every PostgreSQL advisory lock key (hashed into the lock id).
    #[arg(long, env = "CACHE_LOCK_POSTGRES_KEY_PREFIX", default_value = ncps_edge_wire::locks::DEFAULT_PREFIX)]
    pub cache_lock_postgres_key_prefix: String,
    /// Prefix of every MySQL lock name (hashed into the name).
    #[arg(long, env = "CACHE_LOCK_MYSQL_KEY_PREFIX", default_value = ncps_edge_wire::locks::DEFAULT_PREFIX)]
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
    /// PEM file of the CA that signed the Redis servers' certificates (with
    /// --cache-redis-use-tls; default: the public web roots).
    #[arg(long, env = "CACHE_REDIS_CA_CERT")]
    pub cache_redis_ca_cert: Option<PathBuf>,
    /// Accepted for ncps compatibility: each master uses one multiplexed connection.
    #[arg(long, env = "CACHE_REDIS_POOL_SIZE", default_value_t = 10)]
    pub cache_redis_pool_size: u32,
    /// Deadline of every call to the database, the lock service and the
    /// object store; a stalled backend answers "timeout" within it.
    #[arg(long, env = "CACHE_BACKEND_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub cache_backend_timeout: Duration,
    /// Connections of the PostgreSQL or MySQL metadata pool, at most (0: the
    /// backend's default, PostgreSQL 1, MySQL 2). On PostgreSQL the node's
    /// advisory locks and edge-cache channel use the same connections, and
    /// one connection carries concurrent queries pipelined: more open only
    /// under load. On MySQL the edge-cache channel polls on them.
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_OPEN_CONNS", default_value_t = 0)]
    pub cache_database_pool_max_open_conns: usize,
    /// Connections a node keeps open while idle (0: 1); those above it close
    /// after 10 s unused.
    #[arg(long, env = "CACHE_DATABASE_POOL_MAX_IDLE_CONNS", default_value_t = 0)]
    pub cache_database_pool_max_idle_conns: usize,
    /// Longest one download may hold its lock (the ceiling of its renewals).
    #[arg(long, env = "CACHE_LOCK_DOWNLOAD_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cache_lock_download_ttl: Duration,
    /// How far ahead a download lease expires; the holder renews it every
    /// --cache-lock-heartbeat-interval while it lives, so a dead or frozen
    /// holder's download is taken over within this time.
    #[arg(long, env = "CACHE_LOCK_DOWNLOAD_LEASE", default_value = "15s", value_parser = parse_duration)]
    pub cache_lock_download_lease: Duration,
    /// How often held leases are renewed (and database lock sessions pinged).
    #[arg(long, env = "CACHE_LOCK_HEARTBEAT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub cache_lock_heartbeat_interval: Duration,
    /// TTL of the LRU lock.
    #[arg(long, env = "CACHE_LOCK_LRU_TTL", default_value = "30m", value_parser = parse_duration)]
    pub cache_lock_lru_ttl: Duration,
    /// Retries of a lock acquisition.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub cache_lock_retry_max_attempts: usize,
    /// First retry delay.
    #[arg(long, env = "CACHE_LOCK_RETRY_INITIAL_DELAY", default_value = "100ms", value_parser = parse_duration)]
    pub cache_lock_retry_initial_delay: Duration,
    /// Cap of the exponential retry delay.
    #[arg(long, env = "CACHE_LOCK_RETRY_MAX_DELAY", default_value = "2s", value_parser = parse_duration)]
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
    /// Cron schedule of LRU passes when --cache-max-size is set.
    #[arg(long, env = "CACHE_LRU_SCHEDULE", default_value = "0 * * * *")]
    pub cache_lru_schedule: String,
    /// Time zone of --cache-lru-schedule (IANA name, e.g. Europe/Berlin).
    #[arg(long, env = "CACHE_LRU_TIMEZONE", default_value = "UTC")]
    pub cache_lru_timezone: String,
    /// Interval of upstream health checks.
    #[arg(long, env = "CACHE_UPSTREAM_HEALTH_INTERVAL", default_value = "1m", value_parser = parse_duration)]
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
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "1h", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Cache of compiled handler code (default `<storage>/wasm-cache`).
    #[arg(long, env = "WASM_CACHE_DIR")]
    pub wasm_cache_dir: Option<PathBuf>,
    /// Memory of the edge tier, which answers cacheable hits without a
    /// handler instance (units B, K, M, G, T; 0: off, every request runs the handler).
    #[arg(long, env = "EDGE_CACHE_MEMORY", default_value = "256M", value_parser = parse_size)]
    pub edge_cache_memory: u64,
    /// Longest an answer may be kept by the edge tier (and by HTTP caches):
    /// the backstop of purges between nodes.
    #[arg(long, env = "EDGE_CACHE_MAX_AGE", default_value = "1m", value_parser = parse_duration)]
    pub edge_cache_max_age: Duration,
    /// Folder of the local-disk tier of NAR bytes when the storage is S3
    /// (default `<storage>/edge-cache`).
    #[arg(long, env = "EDGE_CACHE_DIR")]
    pub edge_cache_dir: Option<PathBuf>,
    /// Size of the local-disk tier when the storage is S3 (0: off).
    #[arg(long, env = "EDGE_CACHE_SIZE", default_value = "10G", value_parser = parse_size)]
    pub edge_cache_size: u64,
    /// This node's address for the other nodes of the cache
    /// (`http://host:port`): a node waiting for a NAR this node downloads
    /// follows the download there. Unset: downloads are not shared while
    /// in progress.
    #[arg(long, env = "CACHE_NODE_URL")]
    pub cache_node_url: Option<String>,
    /// While the region cannot be reached (the cluster's channel is not
    /// heard), the edge tier answers what it holds, marked stale
    /// (`x-cache: STALE`), for up to this long after it last heard the
    /// region (0: it answers nothing then).
    #[arg(long, env = "EDGE_CACHE_STALE_IF_ERROR", default_value = "6h", value_parser = parse_duration)]
    pub edge_cache_stale_if_error: Duration,
    /// How long "no upstream has this narinfo" is remembered (0: never);
    /// an upload of it clears it on every node.
    #[arg(long, env = "CACHE_NEGATIVE_TTL", default_value = "1m", value_parser = parse_duration)]
    pub cache_negative_ttl: Duration,
}
