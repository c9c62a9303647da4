//! MySQL/MariaDB metadata (`--cache-database-url mysql://…`), pooled.
//! Migrations run at start under a `GET_LOCK`, so racing nodes apply each
//! one once.

use mysql_async::prelude::Queryable;
use mysql_async::{Opts, Pool, Row, TxOpts};

use super::access::now_ms;
use super::{split, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::{Error, Result};

const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Schema versions; each is a list of statements.
fn migrations() -> Vec<Vec<String>> {
    vec![vec![
        format!(
            "CREATE TABLE narinfos (
                hash VARCHAR(64) PRIMARY KEY,
                store_path VARCHAR(512) NOT NULL,
                url VARCHAR(255) NOT NULL,
                compression VARCHAR(32) NOT NULL,
                file_hash VARCHAR(128),
                file_size BIGINT,
                nar_hash VARCHAR(128) NOT NULL,
                nar_size BIGINT NOT NULL,
                refs MEDIUMTEXT NOT NULL,
                deriver VARCHAR(512),
                `system` VARCHAR(64),
                ca TEXT,
                sigs TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                last_accessed_at BIGINT NOT NULL,
                INDEX narinfos_url (url)
            ) {TABLE_OPTIONS}"
        ),
        format!(
            "CREATE TABLE nars (
                `key` VARCHAR(255) PRIMARY KEY,
                upstream_url TEXT,
                file_hash VARCHAR(128),
                file_size BIGINT,
                stored_size BIGINT,
                created_at BIGINT NOT NULL,
                last_accessed_at BIGINT NOT NULL,
                INDEX nars_lru (last_accessed_at)
            ) {TABLE_OPTIONS}"
        ),
        format!("CREATE TABLE config (`key` VARCHAR(255) PRIMARY KEY, value TEXT NOT NULL) {TABLE_OPTIONS}"),
    ]]
}

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
    /// Connect a pool of at most `size` connections and apply pending migrations.
    pub async fn connect(url: &str, size: usize) -> Result<Self> {
        let opts = Opts::from_url(url).map_err(|e| Error::invalid(format!("mysql URL: {e}")))?;
        let constraints =
            mysql_async::PoolConstraints::new(0, size.max(1)).ok_or_else(|| Error::invalid("mysql pool size"))?;
        let opts = mysql_async::OptsBuilder::from_opts(opts)
            .pool_opts(mysql_async::PoolOpts::default().with_constraints(constraints));
        let this = Self { pool: Pool::new(opts) };
        this.migrate().await?;
        Ok(this)
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.pool.get_conn().await.map_err(db)?;
        let locked: Option<Option<i64>> =
            c.query_first("SELECT GET_LOCK('ncps-edge-migrate', 60)").await.map_err(db)?;
        if locked.flatten() != Some(1) {
            return Err(Error::timeout("mysql", "waiting for another node's migration"));
        }
        let result = async {
            c.query_drop(format!("CREATE TABLE IF NOT EXISTS ncps_edge_schema (version INT NOT NULL) {TABLE_OPTIONS}"))
                .await?;
            let version: Option<i64> = c.query_first("SELECT COUNT(*) FROM ncps_edge_schema").await?;
            for (i, statements) in migrations().iter().enumerate().skip(version.unwrap_or(0) as usize) {
                for sql in statements {
                    c.query_drop(sql).await?;
                }
                c.exec_drop("INSERT INTO ncps_edge_schema (version) VALUES (?)", (i + 1,)).await?;
                tracing::info!(version = i + 1, "applied MySQL migration");
            }
            Ok::<_, mysql_async::Error>(())
        }
        .await;
        let _ = c.query_drop("SELECT RELEASE_LOCK('ncps-edge-migrate')").await;
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
        let row: Option<Row> = c
            .exec_first(
                "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, `system`, ca, sigs FROM narinfos WHERE hash = ?",
                (hash,),
            )
            .await
            .map_err(db)?;
        row.as_ref().map(narinfo).transpose()
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        let mut c = self.conn().await?;
        let t = now_ms();
        let params: Vec<mysql_async::Value> = vec![
            n.hash.into(),
            n.store_path.into(),
            n.url.into(),
            n.compression.into(),
            n.file_hash.into(),
            n.file_size.into(),
            n.nar_hash.into(),
            n.nar_size.into(),
            n.references.join(" ").into(),
            n.deriver.into(),
            n.system.into(),
            n.ca.into(),
            n.sigs.join("\n").into(),
            t.into(),
            t.into(),
        ];
        c.exec_drop(
            "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, `system`, ca, sigs, created_at, last_accessed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE store_path = VALUES(store_path), url = VALUES(url), compression = VALUES(compression),
               file_hash = VALUES(file_hash), file_size = VALUES(file_size), nar_hash = VALUES(nar_hash),
               nar_size = VALUES(nar_size), refs = VALUES(refs), deriver = VALUES(deriver), `system` = VALUES(`system`),
               ca = VALUES(ca), sigs = VALUES(sigs), last_accessed_at = VALUES(last_accessed_at)",
            params,
        )
        .await
        .map_err(db)
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        c.exec_drop("DELETE FROM narinfos WHERE hash = ?", (hash,)).await.map_err(db)?;
        Ok(c.affected_rows() > 0)
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let mut c = self.conn().await?;
        let row: Option<Row> = c
            .exec_first(
                "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars WHERE `key` = ?",
                (key,),
            )
            .await
            .map_err(db)?;
        row.as_ref().map(nar).transpose()
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        let mut c = self.conn().await?;
        let t = now_ms();
        c.exec_drop(
            "INSERT INTO nars (`key`, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
             VALUES (?, ?, ?, ?, ?, ?, ?)
             ON DUPLICATE KEY UPDATE upstream_url = VALUES(upstream_url), file_hash = VALUES(file_hash),
               file_size = VALUES(file_size), stored_size = VALUES(stored_size), last_accessed_at = VALUES(last_accessed_at)",
            (n.key, n.upstream_url, n.file_hash, n.file_size, n.stored_size, t, t),
        )
        .await
        .map_err(db)
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        c.exec_drop("DELETE FROM nars WHERE `key` = ?", (key,)).await.map_err(db)?;
        Ok(c.affected_rows() > 0)
    }

    async fn total_size(&self) -> Result<u64> {
        let mut c = self.conn().await?;
        let v: Option<Option<i64>> =
            c.query_first("SELECT CAST(COALESCE(SUM(stored_size), 0) AS SIGNED) FROM nars").await.map_err(db)?;
        Ok(v.flatten().unwrap_or(0).max(0) as u64)
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        let mut c = self.conn().await?;
        c.exec_batch(
            "UPDATE nars SET last_accessed_at = GREATEST(last_accessed_at, ?) WHERE `key` = ?",
            accesses.into_iter().map(|(k, t)| (t, k)),
        )
        .await
        .map_err(db)
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars
                 WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, `key` ASC LIMIT ?",
                (limit,),
            )
            .await
            .map_err(db)?;
        rows.iter().map(nar).collect()
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let mut c = self.conn().await?;
        let rows: Vec<Row> = c
            .exec(
                "SELECT `key`, upstream_url, file_hash, file_size, stored_size FROM nars WHERE `key` > ? ORDER BY `key` LIMIT ?",
                (after.unwrap_or_default(), limit),
            )
            .await
            .map_err(db)?;
        rows.iter().map(nar).collect()
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let mut c = self.conn().await?;
        let found: Option<i64> =
            c.exec_first("SELECT 1 FROM narinfos WHERE url = ? LIMIT 1", (key,)).await.map_err(db)?;
        Ok(found.is_some())
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let mut c = self.conn().await?;
        let mut tx = c.start_transaction(TxOpts::default()).await.map_err(db)?;
        let size: Option<Option<i64>> =
            tx.exec_first("SELECT stored_size FROM nars WHERE `key` = ? FOR UPDATE", (key,)).await.map_err(db)?;
        let narinfos: Vec<String> =
            tx.exec("SELECT hash FROM narinfos WHERE url = ? FOR UPDATE", (key,)).await.map_err(db)?;
        tx.exec_drop("DELETE FROM narinfos WHERE url = ?", (key,)).await.map_err(db)?;
        tx.exec_drop("DELETE FROM nars WHERE `key` = ?", (key,)).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Eviction { freed: size.flatten().unwrap_or(0).max(0) as u64, narinfos })
    }
}

#[async_trait::async_trait]
impl ConfigStore for MySqlMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let mut c = self.conn().await?;
        c.exec_first("SELECT value FROM config WHERE `key` = ?", (key,)).await.map_err(db)
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let mut c = self.conn().await?;
        c.exec_drop("INSERT IGNORE INTO config (`key`, value) VALUES (?, ?)", (key, value)).await.map_err(db)?;
        let v: Option<String> = c.exec_first("SELECT value FROM config WHERE `key` = ?", (key,)).await.map_err(db)?;
        v.ok_or_else(|| Error::internal("mysql", format!("config {key} vanished")))
    }
}
