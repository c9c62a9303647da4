//! Locks held on one dedicated database session per node (PostgreSQL
//! advisory locks, MySQL `GET_LOCK`). Session-level locks are re-entrant, so
//! this node-local layer decides between the node's own requests and takes
//! the database lock once per key: the first holder takes it, the last one
//! to leave gives it back.
//!
//! - Only requests for the same key wait for each other: each key has its
//!   own slot, and no node-wide lock is held across a database round trip.
//! - Every session call has a deadline for the server's answer; a call
//!   that misses it ends the session (its locks go with it, every lease on
//!   it reports itself lost) rather than leaving the node unsure what the
//!   server did. Waiting for a turn on the session is bounded separately.
//! - TTLs are enforced here, on the holder side: every lease carries its own
//!   expiry (so `is_held` needs no call), and a reaper gives expired ones
//!   back. A heartbeat keeps the session busy while the node lives; the
//!   session is opened with a server-side idle timeout, so the locks of a
//!   node that stops (killed, or frozen) are freed within that timeout.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Lease, LockBackend, Mode};
use crate::{Error, Result};

/// A database session that holds named locks.
#[async_trait::async_trait]
pub trait LockSession: Send + Sync + 'static {
    /// Take `key` in `mode` without waiting: false when another session has it.
    async fn try_lock(&self, key: &str, mode: Mode) -> Result<bool>;
    /// Give `key` back.
    async fn unlock(&self, key: &str, mode: Mode) -> Result<()>;
    /// A cheap round trip that keeps the session from idling out.
    async fn ping(&self) -> Result<()>;
    /// End the session (the server drops its locks); the next call opens a
    /// new one.
    async fn reset(&self);
    /// Changes whenever the session is replaced (the old one died, and its
    /// locks with it).
    fn generation(&self) -> u64;
}

/// How long a lease is valid, shared between the lease and the node's table.
type Clock = Arc<Mutex<Instant>>;

fn read(clock: &Clock) -> Instant {
    *clock.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the node holds on one key.
struct Held {
    mode: Mode,
    generation: u64,
    holders: HashMap<u64, Clock>,
}

/// One key's state; requests for the key take turns on it.
#[derive(Default)]
struct Slot(tokio::sync::Mutex<Option<Held>>);

struct Inner<S> {
    session: S,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    timeout: Duration,
}

impl<S: LockSession> Inner<S> {
    fn slot(&self, key: &str) -> Arc<Slot> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(key.to_owned()).or_default().clone()
    }

    /// Forget `key`'s slot when it is empty and nobody else is waiting on it.
    fn tidy(&self, key: &str, slot: &Arc<Slot>, empty: bool) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        // Two references: the table's and ours. Nobody else can pick it up
        // while we hold the table.
        if empty && Arc::strong_count(slot) == 2 && slots.get(key).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            slots.remove(key);
        }
    }

    /// A session call, waiting for its turn at most [`QUEUE_DEADLINES`]
    /// deadlines (the session ends itself when the server misses one).
    async fn call<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let limit = self.timeout * QUEUE_DEADLINES;
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout("lock session", format!("{what}: no turn within {limit:?}"))),
        }
    }

    /// Drop expired holders (and the database lock when none is left);
    /// entries of a dead session are dropped without a call.
    async fn purge(&self, held: &mut Option<Held>, key: &str, now: Instant) {
        let Some(h) = held else { return };
        if h.generation != self.session.generation() {
            *held = None;
            return;
        }
        h.holders.retain(|_, clock| read(clock) > now);
        if h.holders.is_empty() {
            let mode = h.mode;
            *held = None;
            if let Err(e) = self.call("unlock", self.session.unlock(key, mode)).await {
                tracing::warn!(lock_key = key, error = %e, "failed to release a database lock");
            }
        }
    }

    /// Remove holder `token` of `key` (a dropped lease).
    async fn release(&self, key: &str, token: u64, generation: u64) {
        let slot = self.slot(key);
        let empty = {
            let mut held = slot.0.lock().await;
            if let Some(h) = held.as_mut().filter(|h| h.generation == generation) {
                h.holders.remove(&token);
                if h.holders.is_empty() {
                    self.purge(&mut held, key, Instant::now()).await;
                }
            }
            held.is_none()
        };
        self.tidy(key, &slot, empty);
    }

    /// One reaper round: expired leases of every key not busy right now.
    async fn reap(&self) {
        let slots: Vec<(String, Arc<Slot>)> =
            self.slots.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, s)| (k.clone(), s.clone())).collect();
        let now = Instant::now();
        for (key, slot) in slots {
            let empty = match slot.0.try_lock() {
                Ok(mut held) => {
                    self.purge(&mut held, &key, now).await;
                    held.is_none()
                }
                Err(_) => continue,
            };
            self.tidy(&key, &slot, empty);
        }
    }
}

/// A lock backend over one [`LockSession`].
pub struct SessionLocks<S> {
    inner: Arc<Inner<S>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl<S> Drop for SessionLocks<S> {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// How often expired leases are given back.
const REAP_INTERVAL: Duration = Duration::from_millis(250);

/// How many deadlines a lock call may wait for its turn on the session
/// (so a caller's own deadline over a session backend should allow one more).
pub const QUEUE_DEADLINES: u32 = 5;

impl<S: LockSession> SessionLocks<S> {
    /// Locks on `session`; every session call must answer within `timeout`,
    /// and the session is pinged every `heartbeat`.
    pub fn new(session: S, timeout: Duration, heartbeat: Duration) -> Self {
        let inner = Arc::new(Inner { session, slots: Mutex::default(), timeout });
        let weak: Weak<Inner<S>> = Arc::downgrade(&inner);
        let reaper = tokio::spawn(async move {
            loop {
                tokio::time::sleep(REAP_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                inner.reap().await;
            }
        });
        let weak: Weak<Inner<S>> = Arc::downgrade(&inner);
        let pinger = tokio::spawn(async move {
            loop {
                tokio::time::sleep(heartbeat).await;
                let Some(inner) = weak.upgrade() else { return };
                if let Err(e) = inner.call("ping", inner.session.ping()).await {
                    tracing::warn!(error = %e, "lock session heartbeat failed");
                }
            }
        });
        Self { inner, tasks: vec![reaper, pinger] }
    }
}

#[async_trait::async_trait]
impl<S: LockSession> LockBackend for SessionLocks<S> {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        let token: u64 = rand::random();
        let clock: Clock = Arc::new(Mutex::new(Instant::now() + ttl));
        // The decision runs in a task of its own: if the caller gives up
        // (a deadline, a client gone) after the database granted the lock,
        // the grant is still recorded, under a clock that expires, and the
        // reaper gives it back; it is never left held and unknown.
        let (inner, owned_key, task_clock) = (self.inner.clone(), key.to_owned(), clock.clone());
        let decided = tokio::spawn(async move { inner.decide(&owned_key, mode, token, task_clock).await });
        let generation = decided.await.map_err(|e| Error::internal("lock session", e))??;
        Ok(generation.map(|generation| {
            Box::new(SessionLease { inner: self.inner.clone(), key: key.to_owned(), token, generation, clock })
                as Box<dyn Lease>
        }))
    }
}

impl<S: LockSession> Inner<S> {
    /// Take `key` for holder `token` (expiring on `clock`): its generation,
    /// or `None` when somebody else holds the key.
    async fn decide(&self, key: &str, mode: Mode, token: u64, clock: Clock) -> Result<Option<u64>> {
        let slot = self.slot(key);
        let (got, empty) = {
            let mut held = slot.0.lock().await;
            self.purge(&mut held, key, Instant::now()).await;
            let got = match held.as_mut() {
                Some(h) if h.mode == Mode::Shared && mode == Mode::Shared => {
                    h.holders.insert(token, clock);
                    Ok(Some(h.generation))
                }
                Some(_) => Ok(None),
                None => match self.call("lock", self.session.try_lock(key, mode)).await {
                    Ok(true) => {
                        let generation = self.session.generation();
                        *held = Some(Held { mode, generation, holders: HashMap::from([(token, clock)]) });
                        Ok(Some(generation))
                    }
                    Ok(false) => Ok(None),
                    Err(e) => Err(e),
                },
            };
            (got, held.is_none())
        };
        self.tidy(key, &slot, empty);
        got
    }
}

struct SessionLease<S: LockSession> {
    inner: Arc<Inner<S>>,
    key: String,
    token: u64,
    generation: u64,
    clock: Clock,
}

#[async_trait::async_trait]
impl<S: LockSession> Lease for SessionLease<S> {
    async fn extend(&self, ttl: Duration) -> Result<()> {
        let mut expiry = self.clock.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if self.inner.session.generation() != self.generation || *expiry <= now {
            return Err(Error::conflict(format!("lease on {} was lost", self.key)));
        }
        *expiry = now + ttl;
        Ok(())
    }

    fn is_held(&self) -> bool {
        self.inner.session.generation() == self.generation && read(&self.clock) > Instant::now()
    }
}

impl<S: LockSession> Drop for SessionLease<S> {
    fn drop(&mut self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (inner, key, token, generation) = (self.inner.clone(), self.key.clone(), self.token, self.generation);
        rt.spawn(async move { inner.release(&key, token, generation).await });
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
