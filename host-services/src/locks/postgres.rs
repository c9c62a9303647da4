//! PostgreSQL advisory locks on the session connection of the node's
//! [`PgLink`] (`--cache-lock-backend=postgres`): any number of locks, no
//! connection of their own. Queries on it run concurrently (tokio-postgres
//! pipelines them); it is opened with `idle_session_timeout`, so the server
//! ends it — and frees its locks — when the node stops sending its heartbeat.

use std::time::Duration;

use super::session::{key_id, LockSession};
use super::Mode;
use crate::pg_link::{LinkLimits, PgLink};
use crate::{Error, Result};

/// The node's lock session.
pub struct PgSession {
    link: PgLink,
    call_timeout: Duration,
}

impl PgSession {
    /// Locks on `link`'s session connection; a query that takes longer
    /// than `call_timeout` ends the session.
    pub fn new(link: PgLink, call_timeout: Duration) -> Self {
        Self { link, call_timeout }
    }

    /// Locks on a link of their own to `url` (one connection, which the
    /// server ends after `idle_timeout` without a query).
    pub async fn connect(url: &str, idle_timeout: Duration, call_timeout: Duration) -> Result<Self> {
        let limits = LinkLimits { max_open: 1, max_idle: 1, session_idle_timeout: Some(idle_timeout) };
        Ok(Self::new(PgLink::connect(url, limits).await?, call_timeout))
    }

    async fn call(&self, sql: &'static str, key: &str) -> Result<Option<bool>> {
        let session = self.link.session().await?;
        match tokio::time::timeout(self.call_timeout, session.query_one(sql, &[&key_id(key)])).await {
            Ok(Ok(row)) => Ok(row.try_get::<_, Option<bool>>(0).ok().flatten()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.missed_deadline().await),
        }
    }

    /// A query that missed its deadline: the node cannot know what the
    /// server did, so the session ends (the server drops its locks).
    async fn missed_deadline(&self) -> Error {
        tracing::warn!("postgres lock session did not answer in time; ending it (its leases are lost)");
        self.reset().await;
        Error::timeout("postgres", format!("lock session: no answer within {:?}", self.call_timeout))
    }
}

#[async_trait::async_trait]
impl LockSession for PgSession {
    async fn try_lock(&self, key: &str, mode: Mode) -> Result<bool> {
        let sql = match mode {
            Mode::Exclusive => "SELECT pg_try_advisory_lock($1)",
            Mode::Shared => "SELECT pg_try_advisory_lock_shared($1)",
        };
        Ok(self.call(sql, key).await?.unwrap_or(false))
    }

    async fn unlock(&self, key: &str, mode: Mode) -> Result<()> {
        let sql = match mode {
            Mode::Exclusive => "SELECT pg_advisory_unlock($1)",
            Mode::Shared => "SELECT pg_advisory_unlock_shared($1)",
        };
        self.call(sql, key).await.map(|_| ())
    }

    async fn ping(&self) -> Result<()> {
        let session = self.link.session().await?;
        match tokio::time::timeout(self.call_timeout, session.client().simple_query("")).await {
            Ok(r) => r.map(|_| ()).map_err(|e| Error::unavailable("postgres", e)),
            Err(_) => Err(self.missed_deadline().await),
        }
    }

    async fn reset(&self) {
        // Closing the connection makes the server drop every advisory lock
        // of the session.
        self.link.reset_session().await;
    }

    fn generation(&self) -> u64 {
        self.link.generation()
    }
}
