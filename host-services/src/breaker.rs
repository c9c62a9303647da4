//! Deadlines and circuit breakers for backend calls.
//!
//! Every call to a database, lock service or object store runs under a
//! [`Guard`]: it must answer within the deadline (a stalled connection —
//! packets dropped, nothing closed — becomes [`Error::Timeout`] instead of
//! a hang), and outages (timeouts and unreachable backends) are counted by
//! a circuit breaker. After [`TRIP_AFTER`] consecutive outages the breaker
//! opens and calls fail at once; after the cool-down exactly one call is let
//! through as a probe (half-open) while every other call keeps failing fast;
//! the probe's success closes the breaker, its failure opens it again.

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Consecutive outages that open a breaker.
pub const TRIP_AFTER: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Calls pass; `failures` consecutive outages so far.
    Closed { failures: u32 },
    /// Calls fail until `until`.
    Open { until: Instant },
    /// One probe is out; every other call fails.
    Probing,
}

/// A circuit breaker (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    name: &'static str,
    cool_down: Duration,
    state: Mutex<State>,
}

/// Permission to call the backend; report the outcome with [`Permit::record`].
/// A permit dropped without a report (the call was cancelled) counts as
/// neither: a probe that never reported lets the next call probe again.
#[must_use]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    recorded: bool,
}

impl Breaker {
    /// A closed breaker for backend `name`.
    pub fn new(name: &'static str, cool_down: Duration) -> Self {
        Self { name, cool_down, state: Mutex::new(State::Closed { failures: 0 }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the breaker lets no call through right now.
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }

    /// May a call go out? `Err` ([`Error::Unavailable`]) while open, and for
    /// everybody but the one probe once the cool-down has passed.
    pub fn admit(&self) -> Result<Permit<'_>> {
        let mut state = self.state();
        let probe = match *state {
            State::Closed { .. } => false,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => {
                return Err(Error::unavailable(self.name, "circuit breaker open"));
            }
        };
        Ok(Permit { breaker: self, probe, recorded: false })
    }
}

impl Permit<'_> {
    /// Report how the call went: outages ([`Error::is_outage`]) count
    /// towards opening the breaker, anything else closes it.
    pub fn record<T>(mut self, result: &Result<T>) {
        self.recorded = true;
        let b = self.breaker;
        let mut state = b.state();
        match result {
            Err(e) if e.is_outage() => {
                let failures = match *state {
                    State::Closed { failures } => failures + 1,
                    _ => TRIP_AFTER,
                };
                if failures >= TRIP_AFTER || self.probe {
                    if !matches!(*state, State::Open { .. } | State::Probing) {
                        tracing::error!(backend = b.name, error = %e, "circuit breaker open: {} is unavailable", b.name);
                    }
                    *state = State::Open { until: Instant::now() + b.cool_down };
                } else {
                    *state = State::Closed { failures };
                }
            }
            _ => {
                if !matches!(*state, State::Closed { .. }) {
                    tracing::info!(backend = b.name, "circuit breaker closed: {} is available again", b.name);
                }
                *state = State::Closed { failures: 0 };
            }
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.recorded {
            let mut state = self.breaker.state();
            if *state == State::Probing {
                *state = State::Open { until: Instant::now() };
            }
        }
    }
}

/// A deadline and a breaker for one backend.
#[derive(Debug)]
pub struct Guard {
    breaker: Breaker,
    timeout: Duration,
}

impl Guard {
    /// Calls to `name` must answer within `timeout`; the breaker cools down
    /// for `cool_down`.
    pub fn new(name: &'static str, timeout: Duration, cool_down: Duration) -> Self {
        Self { breaker: Breaker::new(name, cool_down), timeout }
    }

    /// The per-call deadline.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The breaker.
    pub fn breaker(&self) -> &Breaker {
        &self.breaker
    }

    /// Run `call` under the deadline and the breaker.
    pub async fn call<T>(&self, call: impl Future<Output = Result<T>>) -> Result<T> {
        self.call_within(self.timeout, call).await
    }

    /// Run `call` under the breaker with its own deadline (for operations
    /// that move a lot of data, such as completing an upload).
    pub async fn call_within<T>(&self, timeout: Duration, call: impl Future<Output = Result<T>>) -> Result<T> {
        let permit = self.breaker.admit()?;
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(self.breaker.name, format!("no answer within {timeout:?}"))),
        };
        permit.record(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> Result<()> {
        Err(Error::unavailable("test", "down"))
    }

    #[test]
    fn opens_after_consecutive_outages_and_lets_one_probe_through() {
        let b = Breaker::new("test", Duration::from_millis(50));
        for _ in 0..TRIP_AFTER {
            b.admit().unwrap().record(&outage());
        }
        assert!(b.admit().is_err(), "open: fails fast");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().expect("the probe");
        for _ in 0..10 {
            assert!(b.admit().is_err(), "half-open lets exactly one call through");
        }
        probe.record(&Ok(()));
        assert!(b.admit().is_ok(), "a good probe closes the breaker");
    }

    #[test]
    fn a_failed_or_cancelled_probe_reopens() {
        let b = Breaker::new("test", Duration::from_millis(20));
        for _ in 0..TRIP_AFTER {
            b.admit().unwrap().record(&outage());
        }
        std::thread::sleep(Duration::from_millis(30));
        b.admit().unwrap().record(&outage());
        assert!(b.admit().is_err(), "a failed probe opens it again");
        std::thread::sleep(Duration::from_millis(30));
        drop(b.admit().unwrap());
        assert!(b.admit().is_ok(), "a cancelled probe lets the next call probe");
    }

    #[test]
    fn non_outage_errors_do_not_count() {
        let b = Breaker::new("test", Duration::from_secs(60));
        for _ in 0..10 {
            b.admit().unwrap().record(&Err::<(), _>(Error::conflict("held")));
        }
        assert!(b.admit().is_ok());
    }
}
