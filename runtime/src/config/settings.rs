//! Typed settings, one group per capability, resolved once from the flags
//! by [`super::Config::from_args`]: what the node, its backends and its
//! commands read (never the raw flags).

use std::path::PathBuf;
use std::time::Duration;

use ncps_edge_host_services::locks::redis::RedisOptions;
use ncps_edge_host_services::locks::RetryPolicy;
use ncps_edge_host_services::storage::s3::S3Options;

use super::flags::LockBackendKind;
use super::values::DatabaseUrl;

/// The metadata database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Where it is (an SQLite path is absolute).
    pub url: DatabaseUrl,
    /// Connections to PostgreSQL/MySQL a node opens at most (0: the backend's default).
    pub max_open: usize,
    /// Connections kept open while idle (0: 1).
    pub max_idle: usize,
}

/// The lock service.
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// Which one.
    pub backend: LockBackendKind,
    /// The prefix of every key (and of the cluster's channel).
    pub prefix: String,
    /// Redis connection settings (with the Redis backend).
    pub redis: Option<RedisOptions>,
    /// Retry policy of an acquire.
    pub retry: RetryPolicy,
    /// How far ahead a download lease expires.
    pub download_lease: Duration,
    /// How often leases are renewed (and database lock sessions pinged).
    pub heartbeat: Duration,
    /// Fall back to local locks while the lock service is down.
    pub allow_degraded: bool,
}

/// Where NARs are stored.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// Under the data folder.
    Local(PathBuf),
    /// An S3 bucket.
    S3(S3Options),
}

/// The local-disk tier of NAR bytes (with S3 storage).
#[derive(Debug, Clone)]
pub struct DiskTierSettings {
    /// Its folder, absolute.
    pub dir: PathBuf,
    /// Its size, bytes.
    pub size: u64,
    /// Whether the folder was given (`--edge-cache-dir`): then failing to
    /// open it is an error, not a warning.
    pub explicit: bool,
}

/// The edge tier and the node's place in the cluster.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    /// Bytes of the memory tier (0: off).
    pub memory: u64,
    /// How long "no upstream has it" is remembered.
    pub negative_ttl: Duration,
    /// How long after it last heard the region the tier answers stale.
    pub stale_if_error: Duration,
    /// The local-disk tier, when there is one.
    pub disk: Option<DiskTierSettings>,
    /// This node's address for its peers.
    pub node_url: Option<String>,
}

/// The signing key.
#[derive(Debug, Clone)]
pub struct SigningSettings {
    /// `--cache-hostname`: names a generated key.
    pub hostname: String,
    /// The key file, absolute, when one is given (else the database's).
    pub secret_key_path: Option<PathBuf>,
}

/// When LRU passes run.
#[derive(Debug, Clone)]
pub struct LruSchedule {
    /// The cron expression.
    pub cron: croner::Cron,
    /// Its time zone.
    pub timezone: chrono_tz::Tz,
}

/// Background work.
#[derive(Debug, Clone)]
pub struct Schedules {
    /// LRU passes, with `--cache-max-size`.
    pub lru: Option<LruSchedule>,
    /// How often the upstreams' health is checked.
    pub upstream_health: Duration,
    /// For each upstream, whether its URL set its priority (else its own
    /// `/nix-cache-info` may).
    pub explicit_priorities: Vec<bool>,
}
