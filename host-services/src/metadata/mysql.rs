//! MySQL/MariaDB metadata (`--cache-database-url mysql://…`), pooled.
//! Migrations run at start under a `GET_LOCK`, so racing nodes apply each
//! one once.

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool, Row, TxOpts};

use super::access::now_ms;
use ncps_edge_wire::sql::mysql::*;

use super::{opt_i64, split, to_i64, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::pg_link::IDLE_CLOSE;
use crate::{Error, Result};

fn db(e: impl Into<crate::error::Cause>) -> Error {
    Error::unavailable("mysql", e)
}

fn col<T: mysql_async::prelude::FromValue>(r: &Row, i: usize) -> Result<T> {
    r.get_opt(i).ok_or_else(|| Error::internal("mysql", format!("column {i} missing")))?.map_err(db)
}

fn narinfo(r: &Row) -> Result<NarinfoRecord> {
    Ok(NarinfoRecord {
        hash: col(r, 0)?,
        store_path: col(r, 1)?,
        url: col(r, 2)?,
        compression: col(r, 3)?,
        file_hash: col(r, 4)?,
        file_size: col(r, 5)?,
        nar_hash: col(r, 6)?,
        nar_size: col(r, 7)?,
        references: split(col(r, 8)?, ' '),
        deriver: col(r, 9)?,
        system: col(r, 10)?,
        ca: col(r, 11)?,
        sigs: split(col(r, 12)?, '\n'),
    })
}

fn nar(r: &Row) -> Result<NarRecord> {
    Ok(NarRecord {
        key: col(r, 0)?,
        upstream_url: col(r, 1)?,
        file_hash: col(r, 2)?,
        file_size: col(r, 3)?,
        stored_size: col(r, 4)?,
    })
}

/// MySQL/MariaDB metadata store.
#[derive(Clone)]
pub struct MySqlMetadata {
    pool: Pool,
}

impl MySqlMetadata {
    /// Connect a pool of at most `size` connections, keeping at most
    /// `idle` of them open unused for longer than [`IDLE_CLOSE`], and
    /// apply pending migrations.
    pub async fn connect(url: &str, size: usize, idle: usize) -> Result<Self> {
        let opts = Opts::from_url(url).map_err(|e| Error::invalid(format!("mysql URL: {e}")))?;
        let size = size.max(1);
        let constraints =
            mysql_async::PoolConstraints::new(idle.min(size), size).ok_or_else(|| Error::invalid("mysql pool size"))?;
        let pool = mysql_async::PoolOpts::default()
            .with_constraints(constraints)
            .with_inactive_connection_ttl(IDLE_CLOSE)
            .with_ttl_check_interval(IDLE_CLOSE / 2);
        let opts = mysql_async::OptsBuilder::from_opts(opts).pool_opts(pool);
        let this = Self { pool: Pool::new(opts) };
        this.migrate().await?;
        Ok(this)
    }

    /// The pool, for what shares the node's metadata connections (the
    /// edge-cache channel).
    pub fn pool(&self) -> Pool {
        self.pool.clone()
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.pool.get_conn().await.map_err(db)?;
        let locked: Option<Option<i64>> = c.query_first(LOCK_MIGRATIONS).await.map_err(db)?;
        if locked.flatten() != Some(1) {
            return Err(Error::timeout("mysql", "waiting for another node's migration"));
        }
        let result = async {
            c.query_drop(CREATE_SCHEMA_TABLE).await?;
            let version: Option<i64> = c.query_first(SCHEMA_VERSION).await?;
            for (i, statements) in MIGRATIONS.iter().enumerate().skip(version.unwrap_or(0) as usize) {
                for sql in statements.iter() {
                    c.query_drop(*sql).await?;
                }
                c.exec_drop(RECORD_MIGRATION, (i + 1,)).await?;
                tracing::info!(version = i + 1, "applied MySQL migration");
            }
            Ok::<_, mysql_async::Error>(())
        }
        .await;
        let _ = c.query_drop(UNLOCK_MIGRATIONS).await;
        result.map_err(db)
    }

    async fn conn(&self) -> Result<mysql_async::Conn> {
        self.pool.get_conn().await.map_err(db)
    }
}

#[async_trait::async_trait]
impl MetadataStore for MySqlMetadata {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>> {
        let mut c = self.conn().await?;
        let row: Option<Row> = c.exec_first(GET_NARINFO, (hash,)).await.map_err(db)?;
        row.as_ref().map(narinfo).transpose()
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        let (file_size, nar_size) = (opt_i64(n.file_size)?, to_i64(n.nar_size)?);
        let mut c = self.conn().await?;
        let t = now_ms();
        let params: Vec<mysql_async::Value> = vec![
            n.hash.into(),
            n.store_path.into(),
            n.url.into(),
            n.compression.into(),
            n.file_hash.into(),
            file_size.into(),
            n.nar_hash.into(),
            nar_size.into(),
            n.references.join(" ").into(),
            n.deriver.into(),
            n.system.into(),
            n.ca.into(),
            n.sigs.join("\n").into(),
            t.into(),
            t.into(),
        ];
        c.exec_drop(PUT_NARINFO, params).await.map_err(db)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        c.exec_drop(DELETE_NARINFO, (hash,)).await.map_err(db)?;
        Ok(c.affected_rows() > 0)
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let mut c = self.conn().await?;
        let row: Option<Row> = c.exec_first(GET_NAR, (key,)).await.map_err(db)?;
        row.as_ref().map(nar).transpose()
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        let (file_size, stored_size) = (opt_i64(n.file_size)?, opt_i64(n.stored_size)?);
        let mut c = self.conn().await?;
        let t = now_ms();
        c.exec_drop(PUT_NAR, (n.key, n.upstream_url, n.file_hash, file_size, stored_size, t, t)).await.map_err(db)
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        c.exec_drop(DELETE_NAR, (key,)).await.map_err(db)?;
        Ok(c.affected_rows() > 0)
    }

    async fn total_size(&self) -> Result<u64> {
        let mut c = self.conn().await?;
        let v: Option<Option<i64>> = c.query_first(TOTAL_SIZE).await.map_err(db)?;
        Ok(v.flatten().unwrap_or(0).max(0) as u64)
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_batch(RECORD_ACCESS, accesses.into_iter().map(|(k, t)| (t, k))).await.map_err(db)
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c.exec(LRU_CANDIDATES, (limit,)).await.map_err(db)?;
        rows.iter().map(nar).collect()
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c.exec(NARS_AFTER, (after.unwrap_or_default(), limit)).await.map_err(db)?;
        rows.iter().map(nar).collect()
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        let found: Option<i64> = c.exec_first(IS_REFERENCED, (key,)).await.map_err(db)?;
        Ok(found.is_some())
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(db)?;
        let size: Option<Option<i64>> = tx.exec_first(EVICT_LOCK_NAR, (key,)).await.map_err(db)?;
        let narinfos: Vec<String> = tx.exec(EVICT_LOCK_NARINFOS, (key,)).await.map_err(db)?;
        tx.exec_drop(EVICT_NARINFOS, (key,)).await.map_err(db)?;
        tx.exec_drop(EVICT_NAR, (key,)).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Eviction { freed: size.flatten().unwrap_or(0).max(0) as u64, narinfos })
    }
}

#[async_trait::async_trait]
impl ConfigStore for MySqlMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let mut c = self.conn().await?;
        c.exec_first(GET_CONFIG, (key,)).await.map_err(db)
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let mut c = self.conn().await?;
        c.exec_drop(SET_CONFIG_IF_ABSENT, (key, value)).await.map_err(db)?;
        let v: Option<String> = c.exec_first(GET_CONFIG, (key,)).await.map_err(db)?;
        v.ok_or_else(|| Error::internal("mysql", format!("config {key} vanished")))
    }
}
