//! Locks held on one dedicated database session per node (PostgreSQL
//! advisory locks, MySQL `GET_LOCK`). Session-level locks are re-entrant, so
//! this node-local layer decides between the node's own requests and takes
//! the database lock once per key: the first holder takes it, the last one
//! to leave gives it back. TTLs are enforced here, on the holder side, by a
//! reaper; when the session dies its locks vanish with it, and every lease
//! taken on it reports itself lost.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{Lease, LockBackend, Mode};
use crate::{Error, Result};

/// A database session that holds named locks.
#[async_trait::async_trait]
pub trait LockSession: Send + Sync + 'static {
    /// Take `key` in `mode` without waiting: false when another session has it.
    async fn try_lock(&self, key: &str, mode: Mode) -> Result<bool>;
    /// Give `key` back.
    async fn unlock(&self, key: &str, mode: Mode) -> Result<()>;
    /// Changes whenever the session is replaced (the old one died, and its
    /// locks with it).
    fn generation(&self) -> u64;
}

struct Entry {
    mode: Mode,
    generation: u64,
    holders: HashMap<u64, Instant>,
}

struct Inner<S> {
    session: S,
    table: Mutex<HashMap<String, Entry>>,
}

impl<S: LockSession> Inner<S> {
    /// Drop expired holders of `key` (and the database lock when none is
    /// left); entries of a dead session are dropped without a call.
    async fn purge(&self, table: &mut HashMap<String, Entry>, key: &str, now: Instant) {
        let Some(entry) = table.get_mut(key) else { return };
        if entry.generation != self.session.generation() {
            table.remove(key);
            return;
        }
        entry.holders.retain(|_, exp| *exp > now);
        if entry.holders.is_empty() {
            let mode = entry.mode;
            table.remove(key);
            if let Err(e) = self.session.unlock(key, mode).await {
                tracing::warn!(lock_key = key, error = %e, "failed to release a database lock");
            }
        }
    }
}

/// A lock backend over one [`LockSession`].
pub struct SessionLocks<S> {
    inner: Arc<Inner<S>>,
    _reaper: tokio::task::JoinHandle<()>,
}

impl<S> Drop for SessionLocks<S> {
    fn drop(&mut self) {
        self._reaper.abort();
    }
}

/// How often expired leases are given back.
const REAP_INTERVAL: Duration = Duration::from_millis(250);

impl<S: LockSession> SessionLocks<S> {
    /// Locks on `session`; a reaper releases expired leases.
    pub fn new(session: S) -> Self {
        let inner = Arc::new(Inner { session, table: Mutex::default() });
        let weak: Weak<Inner<S>> = Arc::downgrade(&inner);
        let reaper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let mut table = inner.table.lock().await;
                let now = Instant::now();
                let keys: Vec<String> = table.keys().cloned().collect();
                for key in keys {
                    inner.purge(&mut table, &key, now).await;
                }
            }
        });
        Self { inner, _reaper: reaper }
    }
}

#[async_trait::async_trait]
impl<S: LockSession> LockBackend for SessionLocks<S> {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        let now = Instant::now();
        let token: u64 = rand::random();
        let mut table = self.inner.table.lock().await;
        self.inner.purge(&mut table, key, now).await;
        let generation = self.inner.session.generation();
        match table.get_mut(key) {
            Some(entry) if entry.mode == Mode::Shared && mode == Mode::Shared => {
                entry.holders.insert(token, now + ttl);
            }
            Some(_) => return Ok(None),
            None => {
                if !self.inner.session.try_lock(key, mode).await? {
                    return Ok(None);
                }
                let generation = self.inner.session.generation();
                table.insert(key.to_owned(), Entry { mode, generation, holders: HashMap::from([(token, now + ttl)]) });
            }
        }
        drop(table);
        Ok(Some(Box::new(SessionLease { inner: self.inner.clone(), key: key.to_owned(), token, generation })))
    }
}

struct SessionLease<S: LockSession> {
    inner: Arc<Inner<S>>,
    key: String,
    token: u64,
    generation: u64,
}

impl<S: LockSession> SessionLease<S> {
    fn alive<'a>(&self, entry: Option<&'a mut Entry>) -> Option<&'a mut Instant> {
        let entry = entry.filter(|e| e.generation == self.generation)?;
        if self.inner.session.generation() != self.generation {
            return None;
        }
        entry.holders.get_mut(&self.token).filter(|exp| **exp > Instant::now())
    }
}

#[async_trait::async_trait]
impl<S: LockSession> Lease for SessionLease<S> {
    async fn extend(&self, ttl: Duration) -> Result<()> {
        let mut table = self.inner.table.lock().await;
        match self.alive(table.get_mut(&self.key)) {
            Some(exp) => {
                *exp = Instant::now() + ttl;
                Ok(())
            }
            None => Err(Error::conflict(format!("lease on {} was lost", self.key))),
        }
    }

    fn is_held(&self) -> bool {
        match self.inner.table.try_lock() {
            Ok(mut table) => self.alive(table.get_mut(&self.key)).is_some(),
            // Busy table: answer from the session alone.
            Err(_) => self.inner.session.generation() == self.generation,
        }
    }
}

impl<S: LockSession> Drop for SessionLease<S> {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (inner, key, token, generation) = (self.inner.clone(), self.key.clone(), self.token, self.generation);
        rt.spawn(async move {
            let mut table = inner.table.lock().await;
            if let Some(entry) = table.get_mut(&key).filter(|e| e.generation == generation) {
                entry.holders.remove(&token);
                if entry.holders.is_empty() {
                    let now = Instant::now();
                    inner.purge(&mut table, &key, now).await;
                }
            }
        });
    }
}

/// A stable 64-bit number for a lock key (PostgreSQL advisory lock id).
pub fn key_id(key: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(key.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// Hex digest of a lock key, for backends with short lock names.
pub fn key_hex(key: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}
