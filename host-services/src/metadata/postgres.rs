//! PostgreSQL metadata (`--cache-database-url postgresql://…`), on the
//! node's [`PgLink`]. Migrations run at start under an advisory lock, so
//! racing nodes apply each one once.

use tokio_postgres::Row;

use crate::pg_link::{Lent, PgLink};

use super::access::now_ms;
use ncps_edge_wire::sql::postgres::*;

use super::{opt_i64, split, to_i64, to_u64, ConfigStore, Eviction, MetadataStore, NarRecord, NarinfoRecord};
use crate::{Error, Result};

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
    link: PgLink,
}

impl PgMetadata {
    /// The store on `link`, pending migrations applied. Call it before
    /// anything else uses the link: the migration is a transaction on the
    /// session connection.
    pub async fn connect(link: PgLink) -> Result<Self> {
        let this = Self { link };
        let session = this.link.session().await?;
        if let Err(e) = migrate(&session).await {
            // Closing the connection rolls the transaction back.
            drop(session);
            this.link.reset_session().await;
            return Err(e);
        }
        Ok(this)
    }

    async fn client(&self) -> Result<Lent> {
        self.link.lend().await
    }
}

/// Apply pending migrations, in one transaction.
async fn migrate(session: &Lent) -> Result<()> {
    let client = session.client();
    client.batch_execute("BEGIN").await.map_err(db)?;
    client.execute(LOCK_MIGRATIONS, &[&MIGRATION_LOCK]).await.map_err(db)?;
    client.batch_execute(CREATE_SCHEMA_TABLE).await.map_err(db)?;
    let version: i64 = client.query_one(SCHEMA_VERSION, &[]).await.map_err(db)?.get(0);
    for (i, statements) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        for sql in statements.iter() {
            client.batch_execute(sql).await.map_err(db)?;
        }
        client.execute(RECORD_MIGRATION, &[&(i as i32 + 1)]).await.map_err(db)?;
        tracing::info!(version = i + 1, "applied PostgreSQL migration");
    }
    client.batch_execute("COMMIT").await.map_err(db)
}

#[async_trait::async_trait]
impl MetadataStore for PgMetadata {
    async fn get_narinfo(&self, hash: &str) -> Result<Option<NarinfoRecord>> {
        let c = self.client().await?;
        let row = c.query_opt(GET_NARINFO, &[&hash]).await?;
        Ok(row.as_ref().map(narinfo))
    }

    async fn put_narinfo(&self, n: NarinfoRecord) -> Result<()> {
        let (file_size, nar_size) = (opt_i64(n.file_size)?, to_i64(n.nar_size)?);
        let c = self.client().await?;
        let t = now_ms();
        c.execute(
            PUT_NARINFO,
            &[
                &n.hash,
                &n.store_path,
                &n.url,
                &n.compression,
                &n.file_hash,
                &file_size,
                &n.nar_hash,
                &nar_size,
                &n.references.join(" "),
                &n.deriver,
                &n.system,
                &n.ca,
                &n.sigs.join("\n"),
                &t,
            ],
        )
        .await?;
        Ok(())
    }

    async fn delete_narinfo(&self, hash: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute(DELETE_NARINFO, &[&hash]).await? > 0)
    }

    async fn get_nar(&self, key: &str) -> Result<Option<NarRecord>> {
        let c = self.client().await?;
        let row = c.query_opt(GET_NAR, &[&key]).await?;
        Ok(row.as_ref().map(nar))
    }

    async fn put_nar(&self, n: NarRecord) -> Result<()> {
        let (file_size, stored_size) = (opt_i64(n.file_size)?, opt_i64(n.stored_size)?);
        let c = self.client().await?;
        c.execute(PUT_NAR, &[&n.key, &n.upstream_url, &n.file_hash, &file_size, &stored_size, &now_ms()]).await?;
        Ok(())
    }

    async fn delete_nar(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.execute(DELETE_NAR, &[&key]).await? > 0)
    }

    async fn total_size(&self) -> Result<u64> {
        let c = self.client().await?;
        let v: i64 = c.query_one(TOTAL_SIZE, &[]).await?.get(0);
        Ok(v.max(0) as u64)
    }

    async fn record_accesses(&self, accesses: Vec<(String, i64)>) -> Result<()> {
        let (keys, times): (Vec<String>, Vec<i64>) = accesses.into_iter().unzip();
        let c = self.client().await?;
        c.execute(RECORD_ACCESSES, &[&keys, &times]).await?;
        Ok(())
    }

    async fn lru_candidates(&self, limit: u32) -> Result<Vec<NarRecord>> {
        let c = self.client().await?;
        let rows = c.query(LRU_CANDIDATES, &[&i64::from(limit)]).await?;
        Ok(rows.iter().map(nar).collect())
    }

    async fn nars_after(&self, after: Option<&str>, limit: u32) -> Result<Vec<NarRecord>> {
        let c = self.client().await?;
        let rows = c.query(NARS_AFTER, &[&after.unwrap_or_default(), &i64::from(limit)]).await?;
        Ok(rows.iter().map(nar).collect())
    }

    async fn is_referenced(&self, key: &str) -> Result<bool> {
        let c = self.client().await?;
        Ok(c.query_opt(IS_REFERENCED, &[&key]).await?.is_some())
    }

    async fn evict(&self, key: &str) -> Result<Eviction> {
        let c = self.client().await?;
        let row = c.query_one(EVICT, &[&key]).await?;
        Ok(Eviction { freed: row.get::<_, i64>(0).max(0) as u64, narinfos: split(row.get(1), ' ') })
    }
}

#[async_trait::async_trait]
impl ConfigStore for PgMetadata {
    async fn get_config(&self, key: &str) -> Result<Option<String>> {
        let c = self.client().await?;
        Ok(c.query_opt(GET_CONFIG, &[&key]).await?.map(|r| r.get(0)))
    }

    async fn set_config_if_absent(&self, key: &str, value: &str) -> Result<String> {
        let c = self.client().await?;
        c.execute(SET_CONFIG_IF_ABSENT, &[&key, &value]).await?;
        Ok(c.query_one(GET_CONFIG, &[&key]).await?.get(0))
    }
}
