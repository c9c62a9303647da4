//! MySQL/MariaDB user locks (`GET_LOCK`) on one dedicated session per node
//! (`--cache-lock-backend=mysql`).
//!
//! MySQL has no shared user locks, so shared mode is built from exclusive
//! ones: a writer holds `W:<key>` and checks that no reader slot
//! `R<i>:<key>` is in use; a reader takes `W:<key>` for a moment (so no
//! writer can be starting), takes a free slot and lets `W` go. Each node
//! holds at most one slot per key (its own readers share it through the
//! node-local layer), so [`READER_SLOTS`] bounds the nodes reading one key
//! at once. Names are a hash of prefix and key, well inside MySQL's 64
//! characters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};
use tokio::sync::Mutex;

use super::session::{key_hex, LockSession};
use super::Mode;
use crate::{Error, Result};

/// Reader slots per key: how many nodes may hold one key shared at once.
pub const READER_SLOTS: usize = 16;

struct State {
    conn: Option<Conn>,
    /// Slot held by this session for each shared key.
    slots: HashMap<String, usize>,
}

/// The node's lock session. MySQL connections take one query at a time, so
/// the node's lock calls take turns on it. A query is not cancel-safe on a
/// MySQL connection (a cancelled one leaves the connection out of step), so
/// each call runs in a task of its own that finishes — or, past the
/// deadline, ends the session — whatever happens to its caller.
pub struct MySqlSession {
    shared: Arc<Shared>,
}

struct Shared {
    opts: Opts,
    idle_timeout: Duration,
    call_timeout: Duration,
    state: Mutex<State>,
    generation: AtomicU64,
}

fn writer_name(key: &str) -> String {
    format!("W:{}", &key_hex(key)[..40])
}

fn slot_name(key: &str, slot: usize) -> String {
    format!("R{slot}:{}", &key_hex(key)[..40])
}

fn unavailable(e: impl Into<crate::error::Cause>) -> Error {
    Error::unavailable("mysql", e)
}

/// A query on the session's connection (with the node's reader slots).
type Query<T> = Box<
    dyn for<'c> FnOnce(
            &'c mut Conn,
            &'c mut HashMap<String, usize>,
        ) -> futures_util::future::BoxFuture<'c, mysql_async::Result<T>>
        + Send,
>;

impl MySqlSession {
    /// A session to `url` (`mysql://user:pass@host:port/db`), connected now;
    /// the server ends it after `idle_timeout` (whole seconds) without a
    /// query; a query that takes longer than `call_timeout` ends it too.
    pub async fn connect(url: &str, idle_timeout: Duration, call_timeout: Duration) -> Result<Self> {
        let opts = Opts::from_url(url).map_err(|e| Error::invalid(format!("mysql URL: {e}")))?;
        let shared = Arc::new(Shared {
            opts,
            idle_timeout,
            call_timeout,
            state: Mutex::new(State { conn: None, slots: HashMap::new() }),
            generation: AtomicU64::new(0),
        });
        drop(shared.state().await?);
        Ok(Self { shared })
    }

    /// Run `f` on the connection in a task of its own.
    async fn with_conn<T: Send + 'static>(&self, f: Query<T>) -> Result<T> {
        let shared = self.shared.clone();
        tokio::spawn(async move { shared.run(f).await }).await.map_err(|e| Error::internal("mysql", e))?
    }
}

impl Shared {
    async fn state(&self) -> Result<tokio::sync::MutexGuard<'_, State>> {
        let mut state = self.state.lock().await;
        if state.conn.is_none() {
            let mut conn = Conn::new(self.opts.clone()).await.map_err(unavailable)?;
            let seconds = self.idle_timeout.as_secs().max(1);
            conn.query_drop(format!("SET SESSION wait_timeout = {seconds}")).await.map_err(unavailable)?;
            state.conn = Some(conn);
            state.slots.clear();
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        Ok(state)
    }

    /// Run `f` on the connection; a failure or a missed deadline drops the
    /// session (its locks are gone with it) and moves to a new generation.
    async fn run<T>(&self, f: Query<T>) -> Result<T> {
        let mut guard = self.state().await?;
        let state = &mut *guard;
        let conn = state.conn.as_mut().ok_or_else(|| unavailable("no session"))?;
        // The deadline counts the server's time only, not the wait for the
        // connection (the node's lock calls take turns on it).
        let result = match tokio::time::timeout(self.call_timeout, f(conn, &mut state.slots)).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => unavailable(e),
            Err(_) => Error::timeout("mysql", format!("lock session: no answer within {:?}", self.call_timeout)),
        };
        tracing::warn!(error = %result, "mysql lock session failed; ending it (its leases are lost)");
        state.conn = None;
        state.slots.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
        Err(result)
    }
}

async fn get_lock(conn: &mut Conn, name: &str) -> mysql_async::Result<bool> {
    let got: Option<Option<i64>> = conn.exec_first("SELECT GET_LOCK(?, 0)", (name,)).await?;
    Ok(got.flatten() == Some(1))
}

async fn release_lock(conn: &mut Conn, name: &str) -> mysql_async::Result<()> {
    conn.exec_drop("SELECT RELEASE_LOCK(?)", (name,)).await
}

/// Whether any reader slot of `key` is in use, in one round trip.
async fn any_reader(conn: &mut Conn, key: &str) -> mysql_async::Result<bool> {
    let checks = vec!["IS_USED_LOCK(?)"; READER_SLOTS].join(", ");
    let names: Vec<String> = (0..READER_SLOTS).map(|slot| slot_name(key, slot)).collect();
    let sql = format!("SELECT COALESCE({checks})");
    let holder: Option<Option<i64>> = conn.exec_first(sql, names).await?;
    Ok(holder.flatten().is_some())
}

#[async_trait::async_trait]
impl LockSession for MySqlSession {
    async fn try_lock(&self, key: &str, mode: Mode) -> Result<bool> {
        let key = key.to_owned();
        self.with_conn(Box::new(move |conn, slots| {
            Box::pin(async move {
                let w = writer_name(&key);
                if !get_lock(conn, &w).await? {
                    return Ok(false);
                }
                match mode {
                    Mode::Exclusive => {
                        if any_reader(conn, &key).await? {
                            release_lock(conn, &w).await?;
                            return Ok(false);
                        }
                        Ok(true)
                    }
                    Mode::Shared => {
                        let mut taken = None;
                        for slot in 0..READER_SLOTS {
                            if get_lock(conn, &slot_name(&key, slot)).await? {
                                taken = Some(slot);
                                break;
                            }
                        }
                        release_lock(conn, &w).await?;
                        match taken {
                            Some(slot) => {
                                slots.insert(key, slot);
                                Ok(true)
                            }
                            None => Ok(false),
                        }
                    }
                }
            })
        }))
        .await
    }

    async fn unlock(&self, key: &str, mode: Mode) -> Result<()> {
        let key = key.to_owned();
        self.with_conn(Box::new(move |conn, slots| {
            Box::pin(async move {
                match mode {
                    Mode::Exclusive => release_lock(conn, &writer_name(&key)).await,
                    Mode::Shared => match slots.remove(&key) {
                        Some(slot) => release_lock(conn, &slot_name(&key, slot)).await,
                        None => Ok(()),
                    },
                }
            })
        }))
        .await
    }

    async fn ping(&self) -> Result<()> {
        self.with_conn(Box::new(|conn, _| Box::pin(async move { conn.ping().await }))).await
    }

    async fn reset(&self) {
        let mut state = self.shared.state.lock().await;
        if state.conn.take().is_some() {
            state.slots.clear();
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }
}
