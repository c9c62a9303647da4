//! PostgreSQL advisory locks on one dedicated session per node
//! (`--cache-lock-backend=postgres`): any number of locks, one connection.
//! Queries on the session run concurrently (tokio-postgres pipelines them);
//! the session is opened with `idle_session_timeout`, so the server ends it
//! — and frees its locks — when the node stops sending its heartbeat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::session::{key_id, LockSession};
use super::Mode;
use crate::{Error, Result};

/// The node's lock session.
pub struct PgSession {
    config: tokio_postgres::Config,
    call_timeout: Duration,
    client: Mutex<Option<Arc<Client>>>,
    generation: Arc<AtomicU64>,
}

impl PgSession {
    /// A session to `url`, connected now; the server ends it after
    /// `idle_timeout` without a query; a query that takes longer than
    /// `call_timeout` ends it too.
    pub async fn connect(url: &str, idle_timeout: Duration, call_timeout: Duration) -> Result<Self> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| Error::invalid(format!("postgres URL: {e}")))?;
        config.options(format!("-c idle_session_timeout={}", idle_timeout.as_millis().max(1)));
        config.connect_timeout(Duration::from_secs(5));
        let session = Self { config, call_timeout, client: Mutex::default(), generation: Arc::new(AtomicU64::new(0)) };
        session.client().await?;
        Ok(session)
    }

    /// The live client, reconnecting (as a new generation) when the last one died.
    async fn client(&self) -> Result<Arc<Client>> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(client.clone());
        }
        let (client, conn) = self.config.connect(NoTls).await.map_err(|e| Error::unavailable("postgres", e))?;
        let generation = self.generation.clone();
        let current = generation.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::warn!(error = %e, "postgres lock session ended; its leases are lost");
            }
            // Whatever ended it, its locks are gone: leases of this
            // generation are lost from now on.
            let _ = generation.compare_exchange(current, current + 1, Ordering::SeqCst, Ordering::SeqCst);
        });
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }

    async fn call(&self, sql: &str, key: &str) -> Result<Option<bool>> {
        let client = self.client().await?;
        match tokio::time::timeout(self.call_timeout, client.query_one(sql, &[&key_id(key)])).await {
            Ok(Ok(row)) => Ok(row.try_get::<_, Option<bool>>(0).ok().flatten()),
            Ok(Err(e)) => Err(Error::unavailable("postgres", e)),
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
        let client = self.client().await?;
        match tokio::time::timeout(self.call_timeout, client.simple_query("")).await {
            Ok(r) => r.map(|_| ()).map_err(|e| Error::unavailable("postgres", e)),
            Err(_) => Err(self.missed_deadline().await),
        }
    }

    async fn reset(&self) {
        // Dropping the client closes the connection; the server drops every
        // advisory lock of the session.
        if self.client.lock().await.take().is_some() {
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}
