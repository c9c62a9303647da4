//! In-memory locks for a single node: per key, one exclusive holder or many
//! shared holders, each with its own expiry; dropping a lease releases it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Lease, LockBackend, Mode};
use crate::Result;

#[derive(Default)]
struct KeyState {
    exclusive: Option<(u64, Instant)>,
    shared: HashMap<u64, Instant>,
}

impl KeyState {
    fn purge_expired(&mut self, now: Instant) {
        if self.exclusive.is_some_and(|(_, exp)| exp <= now) {
            self.exclusive = None;
        }
        self.shared.retain(|_, exp| *exp > now);
    }
    fn is_empty(&self) -> bool {
        self.exclusive.is_none() && self.shared.is_empty()
    }
    fn expiry_mut(&mut self, token: u64) -> Option<&mut Instant> {
        match &mut self.exclusive {
            Some((t, exp)) if *t == token => Some(exp),
            _ => self.shared.get_mut(&token),
        }
    }
}

type Table = Arc<Mutex<HashMap<String, KeyState>>>;

fn lock_table(table: &Table) -> MutexGuard<'_, HashMap<String, KeyState>> {
    // A panic while holding this mutex cannot leave the map inconsistent
    // (every update is a single insert/remove), so poisoning is ignored.
    table.lock().unwrap_or_else(|p| p.into_inner())
}

/// Local lock backend (`--cache-lock-backend=local`).
#[derive(Default, Clone)]
pub struct LocalLocks {
    table: Table,
}

impl LocalLocks {
    /// An empty lock table.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait::async_trait]
impl LockBackend for LocalLocks {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        let now = Instant::now();
        let token: u64 = rand::random();
        let mut table = lock_table(&self.table);
        let state = table.entry(key.to_owned()).or_default();
        state.purge_expired(now);
        let free = match mode {
            Mode::Exclusive => state.is_empty(),
            Mode::Shared => state.exclusive.is_none(),
        };
        if !free {
            return Ok(None);
        }
        match mode {
            Mode::Exclusive => state.exclusive = Some((token, now + ttl)),
            Mode::Shared => {
                state.shared.insert(token, now + ttl);
            }
        }
        Ok(Some(Box::new(LocalLease { table: self.table.clone(), key: key.to_owned(), token })))
    }
}

struct LocalLease {
    table: Table,
    key: String,
    token: u64,
}

#[async_trait::async_trait]
impl Lease for LocalLease {
    async fn extend(&self, ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut table = lock_table(&self.table);
        match table.get_mut(&self.key).and_then(|s| s.expiry_mut(self.token)) {
            Some(exp) if *exp > now => {
                *exp = now + ttl;
                Ok(())
            }
            _ => Err(crate::Error::conflict(format!("lease on {} was lost", self.key))),
        }
    }

    fn is_held(&self) -> bool {
        let mut table = lock_table(&self.table);
        table.get_mut(&self.key).and_then(|s| s.expiry_mut(self.token)).is_some_and(|exp| *exp > Instant::now())
    }
}

impl Drop for LocalLease {
    fn drop(&mut self) {
        let mut table = lock_table(&self.table);
        if let Some(state) = table.get_mut(&self.key) {
            if state.exclusive.is_some_and(|(t, _)| t == self.token) {
                state.exclusive = None;
            }
            state.shared.remove(&self.token);
            if state.is_empty() {
                table.remove(&self.key);
            }
        }
    }
}
