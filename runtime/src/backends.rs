//! The backends a [`Config`] names: metadata database, lock service and
//! NAR storage, connected (and migrated) at start.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use ncps_edge_host_services::locks::guard::Guarded;
use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::mysql::MySqlSession;
use ncps_edge_host_services::locks::postgres::PgSession;
use ncps_edge_host_services::locks::redis::RedisLocks;
use ncps_edge_host_services::locks::session::SessionLocks;
use ncps_edge_host_services::locks::LockBackend;
use ncps_edge_host_services::metadata::mysql::MySqlMetadata;
use ncps_edge_host_services::metadata::postgres::PgMetadata;
use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::Database;
use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::s3::S3Store;
use ncps_edge_host_services::storage::BlobStore;

use crate::config::{Config, DatabaseUrl, LockBackendKind, StorageConfig};

/// Cool-down of an open circuit breaker.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

/// Open the metadata database (migrations applied).
pub async fn metadata(config: &Config) -> anyhow::Result<Arc<dyn Database>> {
    Ok(match &config.database {
        DatabaseUrl::Sqlite(path) => Arc::new(SqliteMetadata::open(path)?),
        DatabaseUrl::Postgres(url) => Arc::new(
            PgMetadata::connect(url, config.args.cache_database_pool_max_open_conns)
                .await
                .context("PostgreSQL metadata")?,
        ),
        DatabaseUrl::Mysql(url) => Arc::new(MySqlMetadata::connect(url).await.context("MySQL metadata")?),
    })
}

/// The lock backend, behind a circuit breaker when it is distributed.
pub async fn locks(config: &Config) -> anyhow::Result<Arc<dyn LockBackend>> {
    let degraded = config.args.cache_lock_allow_degraded_mode;
    let guard = |backend: Box<dyn LockBackend>, label| -> Arc<dyn LockBackend> {
        Arc::new(Guarded::new(backend, label, degraded, BREAKER_COOL_DOWN))
    };
    Ok(match (config.lock_backend, &config.database, &config.redis) {
        (LockBackendKind::Redis, _, Some(opts)) => {
            let redis = RedisLocks::connect(opts).await.context("connecting to Redis")?;
            guard(Box::new(redis), "Redis")
        }
        (LockBackendKind::Postgres, DatabaseUrl::Postgres(url), _) => {
            let session = PgSession::connect(url).await.context("PostgreSQL lock session")?;
            guard(Box::new(SessionLocks::new(session)), "PostgreSQL")
        }
        (LockBackendKind::Mysql, DatabaseUrl::Mysql(url), _) => {
            let session = MySqlSession::connect(url).await.context("MySQL lock session")?;
            guard(Box::new(SessionLocks::new(session)), "MySQL")
        }
        _ => {
            tracing::info!("using local locks");
            Arc::new(LocalLocks::new())
        }
    })
}

/// NAR storage: the S3 bucket when one is given, else the local folder.
pub async fn storage(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match &config.storage {
        StorageConfig::Local(dir) => Arc::new(LocalStore::open(dir).await?),
        StorageConfig::S3(opts) => Arc::new(S3Store::connect(opts).await.context("S3 storage")?),
    })
}
