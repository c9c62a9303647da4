//! Metadata and lock backends chosen by `--cache-database-url`,
//! `--cache-lock-backend` and `--cache-redis-addrs`, as ncps chooses them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use ncps_edge_host_services::locks::guard::Guarded;
use ncps_edge_host_services::locks::local::LocalLocks;
use ncps_edge_host_services::locks::mysql::MySqlSession;
use ncps_edge_host_services::locks::postgres::PgSession;
use ncps_edge_host_services::locks::redis::{RedisLocks, RedisOptions};
use ncps_edge_host_services::locks::session::SessionLocks;
use ncps_edge_host_services::locks::LockBackend;
use ncps_edge_host_services::metadata::mysql::MySqlMetadata;
use ncps_edge_host_services::metadata::postgres::PgMetadata;
use ncps_edge_host_services::metadata::sqlite::SqliteMetadata;
use ncps_edge_host_services::metadata::Database as MetadataDatabase;
use ncps_edge_host_services::storage::local::LocalStore;
use ncps_edge_host_services::storage::s3::{S3Options, S3Store};
use ncps_edge_host_services::storage::BlobStore;

use crate::config::ServeArgs;

/// Cool-down of an open circuit breaker.
const BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

/// Which database `--cache-database-url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// `sqlite:<path>` (the default, under the storage folder).
    Sqlite(PathBuf),
    /// `postgresql://…` or `postgres://…`.
    Postgres(String),
    /// `mysql://…`.
    Mysql(String),
}

/// Parse `--cache-database-url`.
pub fn database(args: &ServeArgs) -> anyhow::Result<Database> {
    match args.cache_database_url.as_deref() {
        None => Ok(Database::Sqlite(args.cache_storage_local.join("db").join("db.sqlite"))),
        Some(url) if url.starts_with("sqlite:") => {
            let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
            if path.is_empty() {
                bail!("--cache-database-url {url:?} has no path");
            }
            Ok(Database::Sqlite(PathBuf::from(path)))
        }
        Some(url) if url.starts_with("postgresql://") || url.starts_with("postgres://") => {
            Ok(Database::Postgres(url.to_owned()))
        }
        Some(url) if url.starts_with("mysql://") => Ok(Database::Mysql(url.to_owned())),
        Some(url) => bail!("--cache-database-url {url:?}: use sqlite:<path>, postgresql://… or mysql://…"),
    }
}

/// The lock backend's name: the flag, else redis when Redis addresses are
/// given, else local.
pub fn lock_backend_name(args: &ServeArgs) -> &str {
    match args.cache_lock_backend.as_deref() {
        Some(b) => b,
        None if !args.cache_redis_addrs.is_empty() => "redis",
        None => "local",
    }
}

/// Open the metadata database (migrations applied).
pub async fn metadata(args: &ServeArgs, db: &Database) -> anyhow::Result<Arc<dyn MetadataDatabase>> {
    Ok(match db {
        Database::Sqlite(path) => Arc::new(SqliteMetadata::open(path)?),
        Database::Postgres(url) => Arc::new(
            PgMetadata::connect(url, args.cache_database_pool_max_open_conns).await.context("PostgreSQL metadata")?,
        ),
        Database::Mysql(url) => Arc::new(MySqlMetadata::connect(url).await.context("MySQL metadata")?),
    })
}

/// The lock backend and the key prefix it uses.
pub async fn locks(args: &ServeArgs, db: &Database) -> anyhow::Result<(Arc<dyn LockBackend>, String)> {
    let name = lock_backend_name(args);
    if name != "local" && matches!(db, Database::Sqlite(_)) {
        bail!(
            "SQLite is not supported in HA mode (--cache-lock-backend={name}): use --cache-database-url postgresql://… or mysql://…"
        );
    }
    let degraded = args.cache_lock_allow_degraded_mode;
    let guard = |backend: Box<dyn LockBackend>, label| -> Arc<dyn LockBackend> {
        Arc::new(Guarded::new(backend, label, degraded, BREAKER_COOL_DOWN))
    };
    Ok(match (name, db) {
        ("local", _) => {
            tracing::info!("using local locks");
            (Arc::new(LocalLocks::new()), args.cache_lock_redis_key_prefix.clone())
        }
        ("redis", _) => {
            if args.cache_redis_addrs.is_empty() {
                bail!("--cache-lock-backend=redis needs --cache-redis-addrs");
            }
            let opts = RedisOptions {
                addrs: args.cache_redis_addrs.clone(),
                username: args.cache_redis_username.clone().filter(|u| !u.is_empty()),
                password: args.cache_redis_password.clone().filter(|p| !p.is_empty()),
                db: args.cache_redis_db,
                use_tls: args.cache_redis_use_tls,
            };
            let redis = RedisLocks::connect(&opts).await.context("connecting to Redis")?;
            (guard(Box::new(redis), "Redis"), args.cache_lock_redis_key_prefix.clone())
        }
        ("postgres", Database::Postgres(url)) => {
            let session = PgSession::connect(url).await.context("PostgreSQL lock session")?;
            (guard(Box::new(SessionLocks::new(session)), "PostgreSQL"), args.cache_lock_postgres_key_prefix.clone())
        }
        ("mysql", Database::Mysql(url)) => {
            let session = MySqlSession::connect(url).await.context("MySQL lock session")?;
            (guard(Box::new(SessionLocks::new(session)), "MySQL"), args.cache_lock_mysql_key_prefix.clone())
        }
        (other, _) => bail!("--cache-lock-backend={other} needs a --cache-database-url of the same kind"),
    })
}

/// NAR storage: the S3 bucket when one is given, else the local folder.
pub async fn storage(args: &ServeArgs) -> anyhow::Result<Arc<dyn BlobStore>> {
    let Some(bucket) = args.cache_storage_s3_bucket.clone().filter(|b| !b.is_empty()) else {
        return Ok(Arc::new(LocalStore::open(&args.cache_storage_local).await?));
    };
    let opts = S3Options {
        bucket,
        endpoint: args.cache_storage_s3_endpoint.clone().filter(|e| !e.is_empty()),
        region: args.cache_storage_s3_region.clone(),
        access_key_id: args.cache_storage_s3_access_key_id.clone(),
        secret_access_key: args.cache_storage_s3_secret_access_key.clone(),
        force_path_style: args.cache_storage_s3_force_path_style,
    };
    Ok(Arc::new(S3Store::connect(&opts).await.context("S3 storage")?))
}
