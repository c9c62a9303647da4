//! PostgreSQL metadata (`--cache-database-url postgresql://…`), pooled.
//! Migrations run at start under an advisory lock, so racing nodes apply
//! each one once.

use deadpool_postgres::{Manager, Pool};
use tokio_postgres::{NoTls, Row};

use super::access::now_ms;
use super::{split, to_u64, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::{Error, Result};

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY,
    store_path TEXT NOT NULL,
    url TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash TEXT,
    file_size BIGINT,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    refs TEXT NOT NULL,
    deriver TEXT,
    system TEXT,
    ca TEXT,
    sigs TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX narinfos_url ON narinfos (url);
CREATE TABLE nars (
    key TEXT PRIMARY KEY,
    upstream_url TEXT,
    file_hash TEXT,
    file_size BIGINT,
    stored_size BIGINT,
    created_at BIGINT NOT NULL,
    last_accessed_at BIGINT NOT NULL
);
CREATE INDEX nars_lru ON nars (last_accessed_at) WHERE stored_size IS NOT NULL;
CREATE TABLE config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#];

/// Advisory lock id serializing migrations across nodes.
const MIGRATION_LOCK: i64 = 0x6e63_7073_6564_6765;

fn db(e: impl Into<crate::error::Cause>) -> Error {
    Error::unavailable("postgres", e)
}

fn narinfo(r: &Row) -> NarinfoRecord {
    NarinfoRecord {
        hash: r.get(0),
        store_path: r.get(1),
        url: r.get(2),
        compression: r.get(3),
        file_hash: r.get(4),
        file_size: to_u64(r.get(5)),
        nar_hash: r.get(6),
        nar_size: r.get::<_, i64>(7).max(0) as u64,
        references: split(r.get(8), ' '),
        deriver: r.get(9),
        system: r.get(10),
        ca: r.get(11),
        sigs: split(r.get(12), '\n'),
    }
}

fn nar(r: &Row) -> NarRecord {
    NarRecord {
        key: r.get(0),
        upstream_url: r.get(1),
        file_hash: r.get(2),
        file_size: to_u64(r.get(3)),
        stored_size: to_u64(r.get(4)),
    }
}

/// PostgreSQL metadata store.
#[derive(Clone)]
pub struct PgMetadata {
    pool: Pool,
}

impl PgMetadata {
    /// Connect a pool of `size` connections and apply pending migrations.
    pub async fn connect(url: &str, size: usize) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| Error::invalid(format!("postgres URL: {e}")))?;
        let pool = Pool::builder(Manager::new(config, NoTls)).max_size(size).build().map_err(db)?;
        let this = Self { pool };
        this.migrate().await?;
        Ok(this)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS ncps_edge_schema (version INT NOT NULL)").await.map_err(db)?;
        let version: i64 = tx.query_one("SELECT COUNT(*) FROM ncps_edge_schema", &[]).await.map_err(db)?.get(0);
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute("INSERT INTO ncps_edge_schema (version) VALUES ($1)", &[&(i as i32 + 1)]).await.map_err(db)?;
            tracing::info!(version = i + 1, "applied PostgreSQL migration");
        }
        tx.commit().await.map_err(db)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(db)
    }
}

#[async_trait::async_trait]
impl MetadataStore for PgMetadata {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs FROM narinfos WHERE hash = $1",
                &[&hash],
            )
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(narinfo))
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        let c = self.client().await?;
        let t = now_ms();
        c.execute(
            "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs, created_at, last_accessed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)
             ON CONFLICT (hash) DO UPDATE SET store_path = EXCLUDED.store_path, url = EXCLUDED.url,
               compression = EXCLUDED.compression, file_hash = EXCLUDED.file_hash, file_size = EXCLUDED.file_size,
               nar_hash = EXCLUDED.nar_hash, nar_size = EXCLUDED.nar_size, refs = EXCLUDED.refs,
               deriver = EXCLUDED.deriver, system = EXCLUDED.system, ca = EXCLUDED.ca, sigs = EXCLUDED.sigs,
               last_accessed_at = EXCLUDED.last_accessed_at",
            &[
                &n.hash,
                &n.store_path,
                &n.url,
                &n.compression,
                &n.file_hash,
                &n.file_size.map(|v| v as i64),
                &n.nar_hash,
                &(n.nar_size as i64),
                &n.references.join(" "),
                &n.deriver,
                &n.system,
                &n.ca,
                &n.sigs.join("\n"),
                &t,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM narinfos WHERE hash = $1", &[&hash]).await.map_err(db)? > 0)
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key = $1", &[&key])
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(nar))
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO nars (key, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)
             ON CONFLICT (key) DO UPDATE SET upstream_url = EXCLUDED.upstream_url, file_hash = EXCLUDED.file_hash,
               file_size = EXCLUDED.file_size, stored_size = EXCLUDED.stored_size,
               last_accessed_at = EXCLUDED.last_accessed_at",
            &[
                &n.key,
                &n.upstream_url,
                &n.file_hash,
                &n.file_size.map(|v| v as i64),
                &n.stored_size.map(|v| v as i64),
                &now_ms(),
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute("DELETE FROM nars WHERE key = $1", &[&key]).await.map_err(db)? > 0)
    }

    async fn total_size(&self) -> Result<u64> {
        let c = self.client().await?;
        let v: i64 =
            c.query_one("SELECT COALESCE(SUM(stored_size), 0)::BIGINT FROM nars", &[]).await.map_err(db)?.get(0);
        Ok(v.max(0) as u64)
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        let (keys, times): (Vec<String>, Vec<i64>) = accesses.into_iter().unzip();
        let c = self.client().await?;
        c.execute(
            "UPDATE nars SET last_accessed_at = GREATEST(nars.last_accessed_at, a.at)
             FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS a(key, at) WHERE nars.key = a.key",
            &[&keys, &times],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars
                 WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, key ASC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(nar).collect())
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key > $1 ORDER BY key LIMIT $2",
                &[&after.unwrap_or_default(), &i64::from(limit)],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(nar).collect())
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.query_opt("SELECT 1 FROM narinfos WHERE url = $1 LIMIT 1", &[&key]).await.map_err(db)?.is_some())
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let size: Option<i64> = tx
            .query_opt("DELETE FROM nars WHERE key = $1 RETURNING stored_size", &[&key])
            .await
            .map_err(db)?
            .and_then(|r| r.get(0));
        let narinfos = tx.query("DELETE FROM narinfos WHERE url = $1 RETURNING hash", &[&key]).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Eviction { freed: size.unwrap_or(0).max(0) as u64, narinfos: narinfos.iter().map(|r| r.get(0)).collect() })
    }
}

#[async_trait::async_trait]
impl ConfigStore for PgMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        Ok(c.query_opt("SELECT value FROM config WHERE key = $1", &[&key]).await.map_err(db)?.map(|r| r.get(0)))
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let c = self.client().await?;
        c.execute("INSERT INTO config (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING", &[&key, &value])
            .await
            .map_err(db)?;
        Ok(c.query_one("SELECT value FROM config WHERE key = $1", &[&key]).await.map_err(db)?.get(0))
    }
}
