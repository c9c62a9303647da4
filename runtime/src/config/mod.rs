//! One checked configuration: a node's flags ([`flags`]: flags and
//! environment variables with ncps's names), the config file ([`yaml`]:
//! ncps's keys), single values ([`values`]), and [`Config`], where every
//! setting is validated and resolved once, into typed settings per
//! capability, before anything touches a database.

pub mod flags;
pub mod settings;
pub mod values;
pub mod yaml;

mod check;
mod guest;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use ncps_edge_host_services::config::{Settings, Upstream};
use ncps_edge_host_services::locks::redis::RedisOptions;
use ncps_edge_host_services::locks::RetryPolicy;
use ncps_edge_host_services::storage::s3::S3Options;

use crate::engine::EngineOptions;
use crate::server::ServerOptions;
pub use check::effective;
pub use flags::{LockBackendKind, ServeArgs};
pub use settings::*;
pub use values::{listen_addr, DatabaseUrl, UpstreamUrl};

/// A node's validated configuration: typed settings per capability.
#[derive(Debug, Clone)]
pub struct Config {
    /// The data folder, absolute.
    pub data_dir: PathBuf,
    /// Log level (an `EnvFilter` directive).
    pub log_level: String,
    /// The address to listen on.
    pub listen: String,
    /// On SIGTERM, how long requests in flight may take to finish.
    pub shutdown_timeout: Duration,
    /// The HTTP front door.
    pub server: ServerOptions,
    /// The wasmtime engine and its pool.
    pub engine: EngineOptions,
    /// Deadline of every database, lock service and S3 call.
    pub backend_timeout: Duration,
    /// The metadata database.
    pub database: DatabaseSettings,
    /// The lock service.
    pub locks: LockSettings,
    /// NAR storage.
    pub storage: StorageConfig,
    /// The edge tier and the node's place in the cluster.
    pub edge: EdgeSettings,
    /// The signing key.
    pub signing: SigningSettings,
    /// What the guest is told (`ncps:edge/config.get-settings`).
    pub guest: Settings,
    /// The upstream caches, as the guest is told of them.
    pub upstreams: Vec<Upstream>,
    /// Background work.
    pub schedules: Schedules,
    /// ncps keys of the config file that have no effect here.
    pub without_effect: Vec<String>,
}

/// `path` against the working directory at start.
fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))
}

impl Config {
    /// Validate and resolve `args`.
    pub fn from_args(args: ServeArgs, without_effect: Vec<String>) -> anyhow::Result<Self> {
        if args.cache_hostname.trim().is_empty() {
            bail!("--cache-hostname is empty");
        }
        tracing_subscriber::EnvFilter::try_new(&args.log_level)
            .with_context(|| format!("--log-level {:?}", args.log_level))?;
        if !args.cache_upstream_url.is_empty()
            && args.cache_upstream_public_key.is_empty()
            && !args.cache_upstream_allow_unsigned
        {
            bail!(
                "no --cache-upstream-public-key: give the upstreams' keys, or --cache-upstream-allow-unsigned to accept their narinfos unverified"
            );
        }
        let token = |t: &Option<String>| t.as_deref().is_some_and(|t| !t.is_empty());
        for (enabled, has_token, verb, flag) in [
            (args.cache_allow_put_verb, token(&args.cache_put_token), "--cache-allow-put-verb", "--cache-put-token"),
            (
                args.cache_allow_delete_verb,
                token(&args.cache_delete_token),
                "--cache-allow-delete-verb",
                "--cache-delete-token",
            ),
        ] {
            if enabled && !has_token && !args.cache_allow_anonymous_writes {
                bail!("{verb} without {flag}: anyone could write; set {flag}, or --cache-allow-anonymous-writes");
            }
        }
        let data_dir = absolute(&args.cache_storage_local)?;
        let database = match args.cache_database_url.clone() {
            None => DatabaseUrl::Sqlite(data_dir.join("db").join("db.sqlite")),
            Some(DatabaseUrl::Sqlite(path)) => DatabaseUrl::Sqlite(absolute(&path)?),
            Some(other) => other,
        };
        let lock_backend = match args.cache_lock_backend {
            Some(b) => b,
            None if !args.cache_redis_addrs.is_empty() => LockBackendKind::Redis,
            None => LockBackendKind::Local,
        };
        let lock_prefix = match (lock_backend, &database) {
            (LockBackendKind::Local, _) => args.cache_lock_redis_key_prefix.clone(),
            (_, DatabaseUrl::Sqlite(_)) => bail!(
                "SQLite is not supported in HA mode (--cache-lock-backend={}): use --cache-database-url postgresql://… or mysql://…",
                lock_name(lock_backend)
            ),
            (LockBackendKind::Redis, _) if args.cache_redis_addrs.is_empty() => {
                bail!("--cache-lock-backend=redis needs --cache-redis-addrs")
            }
            (LockBackendKind::Redis, _) => args.cache_lock_redis_key_prefix.clone(),
            (LockBackendKind::Postgres, DatabaseUrl::Postgres(_)) => args.cache_lock_postgres_key_prefix.clone(),
            (LockBackendKind::Mysql, DatabaseUrl::Mysql(_)) => args.cache_lock_mysql_key_prefix.clone(),
            (other, _) => {
                bail!("--cache-lock-backend={} needs a --cache-database-url of the same kind", lock_name(other))
            }
        };
        let redis = (lock_backend == LockBackendKind::Redis).then(|| RedisOptions {
            addrs: args.cache_redis_addrs.clone(),
            username: args.cache_redis_username.clone().filter(|u| !u.is_empty()),
            password: args.cache_redis_password.clone().filter(|p| !p.is_empty()),
            db: args.cache_redis_db,
            use_tls: args.cache_redis_use_tls,
            ca_cert: args.cache_redis_ca_cert.as_deref().map(absolute).transpose().ok().flatten(),
        });
        if let Some(ca) = redis.as_ref().and_then(|r| r.ca_cert.as_ref()) {
            std::fs::metadata(ca).with_context(|| format!("--cache-redis-ca-cert {}", ca.display()))?;
        }
        if args.cache_lock_retry_initial_delay > args.cache_lock_retry_max_delay {
            bail!("--cache-lock-retry-initial-delay is longer than --cache-lock-retry-max-delay");
        }
        if args.cache_lock_heartbeat_interval * 2 > args.cache_lock_download_lease {
            bail!("--cache-lock-heartbeat-interval must be at most half of --cache-lock-download-lease");
        }
        if args.cache_lock_download_lease > args.cache_lock_download_ttl {
            bail!("--cache-lock-download-lease is longer than --cache-lock-download-ttl, its ceiling");
        }
        if args.server_max_connections == 0 || args.server_max_header_size < 1024 {
            bail!("--server-max-connections must be at least 1 and --server-max-header-size at least 1K");
        }
        if args.cache_backend_timeout.is_zero() {
            bail!("--cache-backend-timeout must be more than 0");
        }
        let retry = RetryPolicy {
            max_attempts: args.cache_lock_retry_max_attempts,
            initial_delay: args.cache_lock_retry_initial_delay,
            max_delay: args.cache_lock_retry_max_delay,
            jitter: args.cache_lock_retry_jitter,
        };
        let storage = match args.cache_storage_s3_bucket.clone().filter(|b| !b.is_empty()) {
            None => StorageConfig::Local(data_dir.clone()),
            Some(bucket) => {
                if args.cache_storage_s3_access_key_id.is_empty() || args.cache_storage_s3_secret_access_key.is_empty()
                {
                    bail!("S3 storage needs --cache-storage-s3-access-key-id and --cache-storage-s3-secret-access-key");
                }
                if let Some(endpoint) = args.cache_storage_s3_endpoint.as_deref().filter(|e| !e.is_empty()) {
                    let u = url::Url::parse(endpoint)
                        .with_context(|| format!("--cache-storage-s3-endpoint {endpoint:?}"))?;
                    if !matches!(u.scheme(), "http" | "https") {
                        bail!("--cache-storage-s3-endpoint {endpoint:?} must be http:// or https://");
                    }
                }
                StorageConfig::S3(S3Options {
                    bucket,
                    endpoint: args.cache_storage_s3_endpoint.clone().filter(|e| !e.is_empty()),
                    region: args.cache_storage_s3_region.clone(),
                    access_key_id: args.cache_storage_s3_access_key_id.clone(),
                    secret_access_key: args.cache_storage_s3_secret_access_key.clone(),
                    force_path_style: args.cache_storage_s3_force_path_style,
                })
            }
        };
        let secret_key_path = args.cache_secret_key_path.as_deref().map(absolute).transpose()?;
        if let Some(path) = &secret_key_path {
            let text =
                std::fs::read_to_string(path).with_context(|| format!("--cache-secret-key-path {}", path.display()))?;
            ncps_edge_host_services::signer::Signer::parse(&text)
                .with_context(|| format!("--cache-secret-key-path {}", path.display()))?;
        }
        let wasm_cache_dir = match &args.wasm_cache_dir {
            Some(dir) => absolute(dir)?,
            None => data_dir.join("wasm-cache"),
        };
        if let Some(url) = args.cache_node_url.as_deref() {
            let parsed = url::Url::parse(url).with_context(|| format!("--cache-node-url {url:?}"))?;
            if parsed.scheme() != "http" || parsed.path() != "/" || parsed.host().is_none() {
                bail!("--cache-node-url {url:?} must be http://host:port");
            }
        }
        let edge_cache_dir = match (&storage, args.edge_cache_size, &args.edge_cache_dir) {
            (StorageConfig::S3(_), size, Some(dir)) if size > 0 => Some(absolute(dir)?),
            (StorageConfig::S3(_), size, None) if size > 0 => Some(data_dir.join("edge-cache")),
            _ => None,
        };
        if args.edge_cache_max_age.as_secs() > u64::from(u32::MAX)
            || args.cache_negative_ttl.as_secs() > u64::from(u32::MAX)
        {
            bail!("--edge-cache-max-age and --cache-negative-ttl must be shorter than 136 years");
        }
        let timezone: chrono_tz::Tz = args
            .cache_lru_timezone
            .parse()
            .map_err(|e| anyhow::anyhow!("--cache-lru-timezone {:?}: {e}", args.cache_lru_timezone))?;
        let cron: croner::Cron = args
            .cache_lru_schedule
            .parse()
            .map_err(|e| anyhow::anyhow!("--cache-lru-schedule {:?}: {e}", args.cache_lru_schedule))?;
        let lru = args.cache_max_size.map(|_| LruSchedule { cron, timezone });
        let disk = edge_cache_dir.map(|dir| DiskTierSettings {
            dir,
            size: args.edge_cache_size,
            explicit: args.edge_cache_dir.is_some(),
        });
        Ok(Self {
            data_dir,
            log_level: args.log_level.clone(),
            listen: args.server_addr.clone(),
            shutdown_timeout: args.shutdown_timeout,
            server: ServerOptions {
                request_timeout: args.request_timeout,
                stall_budget: args.cache_backend_timeout * 2,
                prometheus: args.prometheus_enabled,
                read_header_timeout: args.server_read_header_timeout,
                max_connections: args.server_max_connections,
                max_header_size: args.server_max_header_size.min(usize::MAX as u64) as usize,
            },
            engine: EngineOptions {
                max_instances: args.wasm_max_instances,
                memory_limit: args.wasm_memory_limit,
                cache_dir: Some(wasm_cache_dir),
            },
            backend_timeout: args.cache_backend_timeout,
            database: DatabaseSettings {
                url: database,
                max_open: args.cache_database_pool_max_open_conns,
                max_idle: args.cache_database_pool_max_idle_conns,
            },
            locks: LockSettings {
                backend: lock_backend,
                prefix: lock_prefix,
                redis,
                retry,
                download_lease: args.cache_lock_download_lease,
                heartbeat: args.cache_lock_heartbeat_interval,
                allow_degraded: args.cache_lock_allow_degraded_mode,
            },
            storage,
            edge: EdgeSettings {
                memory: args.edge_cache_memory,
                negative_ttl: args.cache_negative_ttl,
                stale_if_error: args.edge_cache_stale_if_error,
                disk,
                node_url: args.cache_node_url.as_deref().map(|u| u.trim_end_matches('/').to_owned()),
            },
            signing: SigningSettings { hostname: args.cache_hostname.clone(), secret_key_path },
            guest: guest::settings(&args),
            upstreams: guest::upstreams(&args),
            schedules: Schedules {
                lru,
                upstream_health: args.cache_upstream_health_interval,
                explicit_priorities: args.cache_upstream_url.iter().map(|u| u.priority.is_some()).collect(),
            },
            without_effect,
        })
    }
}

/// The flag value naming a lock backend.
pub fn lock_name(kind: LockBackendKind) -> &'static str {
    match kind {
        LockBackendKind::Local => "local",
        LockBackendKind::Redis => "redis",
        LockBackendKind::Postgres => "postgres",
        LockBackendKind::Mysql => "mysql",
    }
}
