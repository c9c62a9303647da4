//! PostgreSQL advisory locks on one dedicated session per node
//! (`--cache-lock-backend=postgres`): any number of locks, one connection.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::session::{key_id, LockSession};
use super::Mode;
use crate::{Error, Result};

/// The node's lock session.
pub struct PgSession {
    url: String,
    client: Mutex<Option<Client>>,
    generation: AtomicU64,
}

impl PgSession {
    /// A session to `url`, connected now.
    pub async fn connect(url: &str) -> Result<Self> {
        let session = Self { url: url.to_owned(), client: Mutex::default(), generation: AtomicU64::new(0) };
        drop(session.client().await?);
        Ok(session)
    }

    /// The live client, reconnecting (as a new generation) when the last one died.
    async fn client(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_some_and(|c| c.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            let (client, conn) =
                tokio_postgres::connect(&self.url, NoTls).await.map_err(|e| Error::unavailable("postgres", e))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(error = %e, "postgres lock session ended; its leases are lost");
                }
            });
            self.generation.fetch_add(1, Ordering::SeqCst);
            *guard = Some(client);
        }
        Ok(guard)
    }

    async fn call(&self, sql: &str, key: &str) -> Result<Option<bool>> {
        let guard = self.client().await?;
        let client = guard.as_ref().ok_or_else(|| Error::unavailable("postgres", "no session"))?;
        match client.query_one(sql, &[&key_id(key)]).await {
            Ok(row) => Ok(row.try_get::<_, Option<bool>>(0).ok().flatten()),
            Err(e) => Err(Error::unavailable("postgres", e)),
        }
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

    fn generation(&self) -> u64 {
        let closed = self.client.try_lock().map(|c| c.as_ref().is_none_or(|c| c.is_closed())).unwrap_or(false);
        // A closed session counts as the next generation at once.
        self.generation.load(Ordering::SeqCst) + u64::from(closed)
    }
}
