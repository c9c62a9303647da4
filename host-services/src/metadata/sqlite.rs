//! SQLite metadata (the embedded default): WAL mode, migrations at open.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::access::now_ms;
use super::{split, to_u64, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::{Error, Result};

/// Schema versions, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE narinfos (
    hash TEXT PRIMARY KEY,
    store_path TEXT NOT NULL,
    url TEXT NOT NULL,
    compression TEXT NOT NULL,
    file_hash TEXT,
    file_size INTEGER,
    nar_hash TEXT NOT NULL,
    nar_size INTEGER NOT NULL,
    refs TEXT NOT NULL,
    deriver TEXT,
    system TEXT,
    ca TEXT,
    sigs TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_accessed_at INTEGER NOT NULL
);
CREATE INDEX narinfos_url ON narinfos (url);
CREATE TABLE nars (
    key TEXT PRIMARY KEY,
    upstream_url TEXT,
    file_hash TEXT,
    file_size INTEGER,
    stored_size INTEGER,
    created_at INTEGER NOT NULL,
    last_accessed_at INTEGER NOT NULL
);
CREATE TABLE config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
CREATE INDEX nars_lru ON nars (last_accessed_at) WHERE stored_size IS NOT NULL;
"#,
];

/// SQLite metadata store (`--cache-database-url sqlite:<path>`).
#[derive(Clone)]
pub struct SqliteMetadata {
    conn: Arc<Mutex<Connection>>,
}

fn narinfo_from_row(r: &Row<'_>) -> rusqlite::Result<NarinfoRecord> {
    Ok(NarinfoRecord {
        hash: r.get(0)?,
        store_path: r.get(1)?,
        url: r.get(2)?,
        compression: r.get(3)?,
        file_hash: r.get(4)?,
        file_size: to_u64(r.get(5)?),
        nar_hash: r.get(6)?,
        nar_size: r.get::<_, i64>(7)?.max(0) as u64,
        references: split(r.get(8)?, ' '),
        deriver: r.get(9)?,
        system: r.get(10)?,
        ca: r.get(11)?,
        sigs: split(r.get(12)?, '\n'),
    })
}

fn nar_from_row(r: &Row<'_>) -> rusqlite::Result<NarRecord> {
    Ok(NarRecord {
        key: r.get(0)?,
        upstream_url: r.get(1)?,
        file_hash: r.get(2)?,
        file_size: to_u64(r.get(3)?),
        stored_size: to_u64(r.get(4)?),
    })
}

impl SqliteMetadata {
    /// Open (or create) the database at `path` and apply pending migrations.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Self::migrate(&conn)?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)) })
    }

    fn migrate(conn: &Connection) -> Result<()> {
        let version: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > MIGRATIONS.len() {
            return Err(Error::internal(
                "sqlite",
                format!("database schema version {version} is newer than this binary ({})", MIGRATIONS.len()),
            ));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            conn.execute_batch(&format!("BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;", i + 1))?;
            tracing::info!(version = i + 1, "applied SQLite migration");
        }
        Ok(())
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(Error::from)
        })
        .await
        .map_err(|e| Error::internal("sqlite", e))?
    }
}

#[async_trait::async_trait]
impl MetadataStore for SqliteMetadata {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>> {
        let hash = hash.to_owned();
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs FROM narinfos WHERE hash = ?1",
            )?
            .query_row([hash], narinfo_from_row)
            .optional()
        })
        .await
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        self.with_conn(move |c| {
            let t = now_ms();
            c.prepare_cached(
                "INSERT INTO narinfos (hash, store_path, url, compression, file_hash, file_size, nar_hash, nar_size, refs, deriver, system, ca, sigs, created_at, last_accessed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14)
                 ON CONFLICT (hash) DO UPDATE SET store_path = excluded.store_path, url = excluded.url,
                   compression = excluded.compression, file_hash = excluded.file_hash, file_size = excluded.file_size,
                   nar_hash = excluded.nar_hash, nar_size = excluded.nar_size, refs = excluded.refs,
                   deriver = excluded.deriver, system = excluded.system, ca = excluded.ca, sigs = excluded.sigs,
                   last_accessed_at = excluded.last_accessed_at",
            )?
            .execute(params![
                n.hash,
                n.store_path,
                n.url,
                n.compression,
                n.file_hash,
                n.file_size.map(|v| v as i64),
                n.nar_hash,
                n.nar_size as i64,
                n.references.join(" "),
                n.deriver,
                n.system,
                n.ca,
                n.sigs.join("\n"),
                t
            ])?;
            Ok(())
        })
        .await
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let hash = hash.to_owned();
        self.with_conn(move |c| Ok(c.execute("DELETE FROM narinfos WHERE hash = ?1", [hash])? > 0)).await
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let key = key.to_owned();
        self.with_conn(move |c| {
            c.prepare_cached("SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key = ?1")?
                .query_row([key], nar_from_row)
                .optional()
        })
        .await
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        self.with_conn(move |c| {
            c.prepare_cached(
                "INSERT INTO nars (key, upstream_url, file_hash, file_size, stored_size, created_at, last_accessed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (key) DO UPDATE SET upstream_url = excluded.upstream_url, file_hash = excluded.file_hash,
                   file_size = excluded.file_size, stored_size = excluded.stored_size,
                   last_accessed_at = excluded.last_accessed_at",
            )?
            .execute(params![
                n.key,
                n.upstream_url,
                n.file_hash,
                n.file_size.map(|v| v as i64),
                n.stored_size.map(|v| v as i64),
                now_ms()
            ])?;
            Ok(())
        })
        .await
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.with_conn(move |c| Ok(c.execute("DELETE FROM nars WHERE key = ?1", [key])? > 0)).await
    }

    async fn total_size(&self) -> Result<u64> {
        self.with_conn(|c| {
            c.query_row("SELECT COALESCE(SUM(stored_size), 0) FROM nars", [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
        })
        .await
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        self.with_conn(move |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt =
                    tx.prepare_cached("UPDATE nars SET last_accessed_at = MAX(last_accessed_at, ?2) WHERE key = ?1")?;
                for (key, at) in &accesses {
                    stmt.execute(params![key, at])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars
                 WHERE stored_size IS NOT NULL ORDER BY last_accessed_at ASC, key ASC LIMIT ?1",
            )?
            .query_map([limit], nar_from_row)?
            .collect()
        })
        .await
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let after = after.unwrap_or_default().to_owned();
        self.with_conn(move |c| {
            c.prepare_cached(
                "SELECT key, upstream_url, file_hash, file_size, stored_size FROM nars WHERE key > ?1 ORDER BY key LIMIT ?2",
            )?
            .query_map(params![after, limit], nar_from_row)?
            .collect()
        })
        .await
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.with_conn(move |c| c.prepare_cached("SELECT 1 FROM narinfos WHERE url = ?1 LIMIT 1")?.exists([key])).await
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let key = key.to_owned();
        self.with_conn(move |c| {
            let tx = c.unchecked_transaction()?;
            let size: Option<Option<i64>> =
                tx.query_row("SELECT stored_size FROM nars WHERE key = ?1", [&key], |r| r.get(0)).optional()?;
            let narinfos = {
                let mut stmt = tx.prepare("DELETE FROM narinfos WHERE url = ?1 RETURNING hash")?;
                let rows = stmt.query_map([&key], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.execute("DELETE FROM nars WHERE key = ?1", [&key])?;
            tx.commit()?;
            Ok(Eviction { freed: size.flatten().unwrap_or(0).max(0) as u64, narinfos })
        })
        .await
    }
}

#[async_trait::async_trait]
impl ConfigStore for SqliteMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.with_conn(move |c| c.query_row("SELECT value FROM config WHERE key = ?1", [key], |r| r.get(0)).optional())
            .await
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_conn(move |c| {
            c.execute("INSERT INTO config (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING", [&key, &value])?;
            c.query_row("SELECT value FROM config WHERE key = ?1", [&key], |r| r.get(0))
        })
        .await
    }
}
