//! A distributed lock backend behind a deadline and a circuit breaker
//! ([`crate::breaker`]), with the optional degraded mode of
//! `--cache-lock-allow-degraded-mode`: while the backend is unavailable,
//! locks are taken from node-local locks instead (and that is logged).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::local::LocalLocks;
use super::{Lease, LockBackend, Mode};
use crate::breaker::Guard;
use crate::{Error, Result};

/// A backend behind a deadline and a circuit breaker.
pub struct Guarded {
    primary: Box<dyn LockBackend>,
    name: &'static str,
    guard: Guard,
    fallback: Option<LocalLocks>,
    degraded: AtomicBool,
}

impl Guarded {
    /// Guard `primary` (called `name` in logs, e.g. "Redis"): each acquisition
    /// must answer within `timeout`; with `degraded`, fall back to local
    /// locks while it is unavailable.
    pub fn new(
        primary: Box<dyn LockBackend>,
        name: &'static str,
        degraded: bool,
        timeout: Duration,
        cool_down: Duration,
    ) -> Self {
        Self {
            primary,
            name,
            guard: Guard::new(name, timeout, cool_down),
            fallback: degraded.then(LocalLocks::new),
            degraded: AtomicBool::new(false),
        }
    }

    async fn unavailable(&self, key: &str, mode: Mode, ttl: Duration, e: Error) -> Result<Option<Box<dyn Lease>>> {
        let Some(local) = &self.fallback else {
            return Err(e);
        };
        if !self.degraded.swap(true, Ordering::SeqCst) {
            tracing::error!(
                backend = self.name,
                reason = %e,
                "using local locks: degraded mode, locks are not shared between nodes"
            );
        }
        local.try_acquire(key, mode, ttl).await
    }
}

#[async_trait::async_trait]
impl LockBackend for Guarded {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        match self.guard.call(self.primary.try_acquire(key, mode, ttl)).await {
            Ok(lease) => {
                if self.degraded.swap(false, Ordering::SeqCst) {
                    tracing::info!(backend = self.name, "{} is available again: leaving degraded mode", self.name);
                }
                Ok(lease)
            }
            Err(e) if e.is_outage() => self.unavailable(key, mode, ttl, e).await,
            Err(e) => Err(e),
        }
    }
}
