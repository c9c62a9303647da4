//! The backends a [`Config`] names: metadata database, lock service and
//! NAR storage, connected (and migrated) at start.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ncps_edge_host_services::cluster::channel::mysql::MySqlChannel;
use ncps_edge_host_services::cluster::channel::postgres::PgChannel;
use ncps_edge_host_services::cluster::channel::redis::RedisChannel;
use ncps_edge_host_services::cluster::channel::Channel;
use ncps_edge_host_services::locks::guard::Guarded;
use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::mysql::MySqlSession;
use ncps_edge_host_services::locks::postgres::PgSession;
use ncps_edge_host_services::locks::redis::RedisLocks;
use ncps_edge_host_services::locks::session::{SessionLocks, QUEUE_DEADLINES};
use ncps_edge_host_services::locks::LockBackend;
use ncps_edge_host_services::metadata::guarded::GuardedMetadata;
use ncps_edge_host_services::metadata::mysql::MySqlMetadata;
use ncps_edge_host_services::metadata::postgres::PgMetadata;
use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::Database;
use ncps_edge_host_services::pg_link::{LinkLimits, PgLink};
use ncps_edge_host_services::storage::disk_tier::{DiskTier, DiskTiered};
use ncps_edge_host_services::storage::follow::{Followed, Peers};
use ncps_edge_host_services::storage::guarded::GuardedStore;
use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::named::ContentNamed;
use ncps_edge_host_services::storage::s3::S3Store;
use ncps_edge_host_services::storage::BlobStore;

use crate::config::{Config, DatabaseUrl, LockBackendKind, StorageConfig};

/// Cool-down of an open circuit breaker: how long a backend found down is
/// not asked again (then one probe goes out).
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(2);

/// Connecting (and migrating) at start may take this many deadlines.
const CONNECT_DEADLINES: u32 = 10;

/// Run `connect` under `config`'s backend deadline (times [`CONNECT_DEADLINES`]).
async fn connecting<T>(
    config: &Config,
    what: &str,
    connect: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let limit = config.backend_timeout * CONNECT_DEADLINES;
    tokio::time::timeout(limit, connect).await.map_err(|_| anyhow::anyhow!("{what}: no answer within {limit:?}"))?
}

/// Default of `--cache-database-pool-max-open-conns` on PostgreSQL: one
/// pipelined connection serves a node, so 50 nodes fit a default server.
const PG_MAX_OPEN: usize = 1;
/// Default of `--cache-database-pool-max-open-conns` on MySQL (no
/// pipelining): with the lock session, 3 connections per node at most, so
/// 50 busy nodes fit a default server (`max_connections` 151).
const MYSQL_MAX_OPEN: usize = 2;

/// Connections the metadata database opened that the node's locks and
/// edge-cache channel share ([`locks`], [`edge_channel`]).
#[derive(Default)]
pub struct Shared {
    /// PostgreSQL: the link that carries metadata, advisory locks and `LISTEN`.
    pub pg: Option<PgLink>,
    /// MySQL: the metadata store, whose pool the purge channel polls on.
    pub mysql: Option<MySqlMetadata>,
}

/// The metadata database (migrations applied), behind its deadline, and
/// the connections it opened that others share ([`Shared`]).
pub async fn metadata(config: &Config) -> anyhow::Result<(Arc<dyn Database>, Shared)> {
    let timeout = config.backend_timeout;
    let (max_open, max_idle) = (config.database.max_open, config.database.max_idle.max(1));
    let or_default = |default: usize| if max_open == 0 { default } else { max_open };
    let (db, name, shared): (Arc<dyn Database>, &'static str, _) = match &config.database.url {
        DatabaseUrl::Sqlite(path) => (Arc::new(SqliteMetadata::open(path)?), "sqlite", Shared::default()),
        DatabaseUrl::Postgres(url) => {
            let limits = LinkLimits {
                max_open: or_default(PG_MAX_OPEN),
                max_idle,
                // Locks on it: the server frees them when the node stops
                // (the lock heartbeat keeps a live node's session busy).
                session_idle_timeout: (config.locks.backend == LockBackendKind::Postgres)
                    .then_some(config.locks.download_lease),
            };
            let (db, link) = connecting(config, "PostgreSQL metadata", async {
                let link = PgLink::connect(url, limits).await.context("PostgreSQL")?;
                Ok((PgMetadata::connect(link.clone()).await.context("PostgreSQL metadata")?, link))
            })
            .await?;
            (Arc::new(db), "postgres", Shared { pg: Some(link), mysql: None })
        }
        DatabaseUrl::Mysql(url) => {
            let db = connecting(config, "MySQL metadata", async {
                MySqlMetadata::connect(url, or_default(MYSQL_MAX_OPEN), max_idle).await.context("MySQL metadata")
            })
            .await?;
            (Arc::new(db.clone()), "mysql", Shared { pg: None, mysql: Some(db) })
        }
    };
    Ok((Arc::new(GuardedMetadata::new(db, name, timeout, BREAKER_COOL_DOWN)), shared))
}

/// The PostgreSQL link of a node whose locks are on PostgreSQL.
fn pg_link(pg: Option<&PgLink>) -> anyhow::Result<PgLink> {
    pg.cloned().context("PostgreSQL locks need the PostgreSQL metadata connection")
}

/// The lock backend, behind a deadline and a circuit breaker when it is
/// distributed. PostgreSQL locks live on `pg`'s session connection.
pub async fn locks(config: &Config, pg: Option<&PgLink>) -> anyhow::Result<Arc<dyn LockBackend>> {
    let locks = &config.locks;
    let (timeout, lease, heartbeat) = (config.backend_timeout, locks.download_lease, locks.heartbeat);
    let guard = |backend: Box<dyn LockBackend>, label, limit| -> Arc<dyn LockBackend> {
        Arc::new(Guarded::new(backend, label, locks.allow_degraded, limit, BREAKER_COOL_DOWN))
    };
    // A database lock call may first wait for its turn on the node's session.
    let session_limit = timeout * (QUEUE_DEADLINES + 1);
    Ok(match (locks.backend, &config.database.url, &locks.redis) {
        (LockBackendKind::Redis, _, Some(opts)) => {
            let redis =
                connecting(config, "Redis", async { RedisLocks::connect(opts).await.context("connecting to Redis") })
                    .await?;
            guard(Box::new(redis), "Redis", timeout)
        }
        (LockBackendKind::Postgres, DatabaseUrl::Postgres(_), _) => {
            let session = PgSession::new(pg_link(pg)?, timeout);
            guard(Box::new(SessionLocks::new(session, timeout, heartbeat)), "PostgreSQL", session_limit)
        }
        (LockBackendKind::Mysql, DatabaseUrl::Mysql(url), _) => {
            let session = connecting(config, "MySQL lock session", async {
                MySqlSession::connect(url, lease, timeout).await.context("MySQL lock session")
            })
            .await?;
            guard(Box::new(SessionLocks::new(session, timeout, heartbeat)), "MySQL", session_limit)
        }
        _ => {
            tracing::info!("using local locks");
            Arc::new(LocalLocks::new())
        }
    })
}

/// The channel that carries edge-tier purges between nodes: the lock
/// service's own (none with local locks: a single node); on PostgreSQL,
/// on the metadata's link, on MySQL on its pool ([`Shared`]).
pub async fn edge_channel(config: &Config, shared: &Shared) -> anyhow::Result<Option<Arc<dyn Channel>>> {
    let locks = &config.locks;
    let prefix = &locks.prefix;
    Ok(match (locks.backend, &config.database.url, &locks.redis) {
        (LockBackendKind::Redis, _, Some(opts)) => Some(Arc::new(RedisChannel::new(opts, prefix)?)),
        (LockBackendKind::Postgres, DatabaseUrl::Postgres(_), _) => {
            let link = pg_link(shared.pg.as_ref())?;
            let channel = connecting(config, "PostgreSQL edge-cache channel", async {
                PgChannel::on_link(link, prefix).await.context("PostgreSQL edge-cache channel")
            })
            .await?;
            Some(Arc::new(channel))
        }
        (LockBackendKind::Mysql, DatabaseUrl::Mysql(_), _) => {
            let pool = shared.mysql.as_ref().context("the MySQL channel needs the MySQL metadata")?.pool();
            let channel = connecting(config, "MySQL edge-cache channel", async {
                MySqlChannel::on_pool(pool).await.context("MySQL edge-cache channel")
            })
            .await?;
            Some(Arc::new(channel))
        }
        _ => None,
    })
}

/// NAR storage: the S3 bucket when one is given, else the local folder;
/// behind its deadline. (What writes to it goes through [`ContentNamed`].)
pub async fn storage(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    let timeout = config.backend_timeout;
    let (store, name): (Arc<dyn BlobStore>, &'static str) = match &config.storage {
        StorageConfig::Local(dir) => (Arc::new(LocalStore::open(dir).await?), "disk"),
        StorageConfig::S3(opts) => {
            let s3 =
                connecting(config, "S3 storage", async { S3Store::connect(opts).await.context("S3 storage") }).await?;
            (Arc::new(s3), "s3")
        }
    };
    Ok(Arc::new(GuardedStore::new(store, name, timeout, BREAKER_COOL_DOWN)))
}

/// `store` publishing only objects whose bytes hash to their name: what
/// every writer of a node (requests, import) writes through.
pub fn content_named(store: Arc<dyn BlobStore>) -> Arc<dyn BlobStore> {
    Arc::new(ContentNamed::new(store))
}

/// `storage` whose writes other requests can follow as they happen
/// (spooled under the data folder): on this node, and on `peers`.
pub fn followed(config: &Config, storage: Arc<dyn BlobStore>, peers: Option<Peers>) -> anyhow::Result<Followed> {
    let dir = config.data_dir.join("downloads");
    let followed = Followed::new(storage, &dir).with_context(|| format!("preparing {}", dir.display()))?;
    Ok(match peers {
        Some(peers) => followed.with_peers(peers),
        None => followed,
    })
}

/// A store, and the local-disk tier in front of it if any.
type Tiered = (Arc<dyn BlobStore>, Option<Arc<DiskTier>>);

/// `storage` with the local-disk tier in front when the configuration has
/// one (remote storage); the tier, to purge. A tier in the default folder
/// that cannot be opened (nodes sharing one data folder) is left off with a
/// warning; one in a folder given with `--edge-cache-dir` is an error.
pub fn with_disk_tier(config: &Config, storage: Arc<dyn BlobStore>) -> anyhow::Result<Tiered> {
    let Some(disk) = &config.edge.disk else { return Ok((storage, None)) };
    let dir = &disk.dir;
    let tier = match DiskTier::open(dir, disk.size) {
        Ok(tier) => Arc::new(tier),
        Err(e) if !disk.explicit => {
            tracing::warn!(dir = %dir.display(), error = %e, "local-disk tier of NARs off");
            return Ok((storage, None));
        }
        Err(e) => return Err(e).with_context(|| format!("opening the edge cache in {}", dir.display())),
    };
    tracing::info!(dir = %dir.display(), bytes = disk.size, "local-disk tier of NARs");
    Ok((Arc::new(DiskTiered::new(storage, tier.clone())), Some(tier)))
}
