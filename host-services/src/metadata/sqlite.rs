//! SQLite metadata (the embedded default): WAL mode, migrations at open.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::access::now_ms;
use ncps_edge_wire::sql::sqlite::*;

use super::{opt_i64, split, to_i64, to_u64, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::{Error, Result};

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
            conn.execute_batch(&format!("BEGIN; {}; PRAGMA user_version = {}; COMMIT;", sql.join(";\n"), i + 1))?;
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
        self.with_conn(move |c| c.prepare_cached(GET_NARINFO)?.query_row([hash], narinfo_from_row).optional()).await
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        let (file_size, nar_size) = (opt_i64(n.file_size)?, to_i64(n.nar_size)?);
        self.with_conn(move |c| {
            let t = now_ms();
            c.prepare_cached(PUT_NARINFO)?.execute(params![
                n.hash,
                n.store_path,
                n.url,
                n.compression,
                n.file_hash,
                file_size,
                n.nar_hash,
                nar_size,
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
        self.with_conn(move |c| Ok(c.execute(DELETE_NARINFO, [hash])? > 0)).await
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let key = key.to_owned();
        self.with_conn(move |c| c.prepare_cached(GET_NAR)?.query_row([key], nar_from_row).optional()).await
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        let (file_size, stored_size) = (opt_i64(n.file_size)?, opt_i64(n.stored_size)?);
        self.with_conn(move |c| {
            c.prepare_cached(PUT_NAR)?.execute(params![
                n.key,
                n.upstream_url,
                n.file_hash,
                file_size,
                stored_size,
                now_ms()
            ])?;
            Ok(())
        })
        .await
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.with_conn(move |c| Ok(c.execute(DELETE_NAR, [key])? > 0)).await
    }

    async fn total_size(&self) -> Result<u64> {
        self.with_conn(|c| c.query_row(TOTAL_SIZE, [], |r| r.get::<_, i64>(0)).map(|v| v.max(0) as u64)).await
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        self.with_conn(move |c| {
            let tx = c.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(RECORD_ACCESS)?;
                for (key, at) in &accesses {
                    stmt.execute(params![at, key])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        self.with_conn(move |c| c.prepare_cached(LRU_CANDIDATES)?.query_map([limit], nar_from_row)?.collect()).await
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let after = after.unwrap_or_default().to_owned();
        self.with_conn(move |c| c.prepare_cached(NARS_AFTER)?.query_map(params![after, limit], nar_from_row)?.collect())
            .await
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.with_conn(move |c| c.prepare_cached(IS_REFERENCED)?.exists([key])).await
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let key = key.to_owned();
        self.with_conn(move |c| {
            let tx = c.unchecked_transaction()?;
            let size: Option<Option<i64>> = tx.query_row(EVICT_LOCK_NAR, [&key], |r| r.get(0)).optional()?;
            let narinfos = {
                let mut stmt = tx.prepare(EVICT_NARINFOS)?;
                let rows = stmt.query_map([&key], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<Vec<String>>>()?
            };
            tx.execute(EVICT_NAR, [&key])?;
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
        self.with_conn(move |c| c.query_row(GET_CONFIG, [key], |r| r.get(0)).optional()).await
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.with_conn(move |c| {
            c.execute(SET_CONFIG_IF_ABSENT, [&key, &value])?;
            c.query_row(GET_CONFIG, [&key], |r| r.get(0))
        })
        .await
    }
}
