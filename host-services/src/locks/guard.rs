//! A circuit breaker around a distributed lock backend, with the optional
//! degraded mode of `--cache-lock-allow-degraded-mode`.
//!
//! After [`TRIP_AFTER`] consecutive connection failures the breaker opens:
//! calls fail at once (or, in degraded mode, go to node-local locks) until
//! the cool-down has passed; then one call is let through (half-open) and
//! its success closes the breaker.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::local::LocalLocks;
use super::{Lease, LockBackend, Mode};
use crate::{Error, Result};

/// Consecutive failures that open the breaker.
pub const TRIP_AFTER: u32 = 3;

#[derive(Default)]
struct State {
    failures: u32,
    open_until: Option<Instant>,
    degraded: bool,
}

/// A backend behind a circuit breaker.
pub struct Guarded {
    primary: Box<dyn LockBackend>,
    name: &'static str,
    fallback: Option<LocalLocks>,
    cool_down: Duration,
    state: Mutex<State>,
}

impl Guarded {
    /// Guard `primary` (called `name` in logs, e.g. "Redis"); with
    /// `degraded`, fall back to local locks while it is unavailable.
    pub fn new(primary: Box<dyn LockBackend>, name: &'static str, degraded: bool, cool_down: Duration) -> Self {
        Self { primary, name, fallback: degraded.then(LocalLocks::new), cool_down, state: Mutex::default() }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn unavailable(&self, key: &str, mode: Mode, ttl: Duration, why: &str) -> Result<Option<Box<dyn Lease>>> {
        let Some(local) = &self.fallback else {
            return Err(Error::unavailable(
                self.name,
                format!("lock backend unavailable ({why}); degraded mode is off"),
            ));
        };
        {
            let mut s = self.state();
            if !s.degraded {
                s.degraded = true;
                tracing::error!(
                    backend = self.name,
                    reason = why,
                    "using local locks: degraded mode, locks are not shared between nodes"
                );
            }
        }
        local.try_acquire(key, mode, ttl).await
    }
}

#[async_trait::async_trait]
impl LockBackend for Guarded {
    async fn try_acquire(&self, key: &str, mode: Mode, ttl: Duration) -> Result<Option<Box<dyn Lease>>> {
        let open = self.state().open_until.is_some_and(|t| Instant::now() < t);
        if open {
            return self.unavailable(key, mode, ttl, "circuit breaker open").await;
        }
        match self.primary.try_acquire(key, mode, ttl).await {
            Ok(lease) => {
                let mut s = self.state();
                if s.open_until.is_some() || s.degraded {
                    tracing::info!(backend = self.name, "circuit breaker closed: {} is available again", self.name);
                }
                *s = State::default();
                Ok(lease)
            }
            Err(e @ (Error::Unavailable(_) | Error::Timeout(_))) => {
                {
                    let mut s = self.state();
                    s.failures += 1;
                    if s.failures >= TRIP_AFTER {
                        if s.open_until.is_none_or(|t| Instant::now() >= t) {
                            tracing::error!(backend = self.name, error = %e, "circuit breaker open: {} is unavailable", self.name);
                        }
                        s.open_until = Some(Instant::now() + self.cool_down);
                    }
                }
                self.unavailable(key, mode, ttl, &e.to_string()).await
            }
            Err(e) => Err(e),
        }
    }
}
