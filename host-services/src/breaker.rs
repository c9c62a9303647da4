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
//!
//! Deadlines do not stack within a request: a request runs with a budget
//! of time it may lose to stalled backends ([`with_stall_budget`]). A call
//! that times out spends what it waited; a later call of the same request
//! gets at most what is left as its deadline, and once the budget is spent
//! calls fail at once ([`Error::Unavailable`], not counted by the breaker),
//! so a request is answered within the budget plus its own work, whichever
//! backends stall.

use std::cell::Cell;
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

tokio::task_local! {
    /// What the request this task serves may still lose to stalled backends.
    static STALL_BUDGET: Cell<Duration>;
}

/// Run `request` with `budget` of time to lose to stalled backends (see
/// the module documentation). Backend calls outside it (background work)
/// have their own deadlines only.
pub async fn with_stall_budget<F: Future>(budget: Duration, request: F) -> F::Output {
    STALL_BUDGET.scope(Cell::new(budget), request).await
}

/// What the current request may still lose to stalled backends, if it runs
/// with a budget.
fn budget_left() -> Option<Duration> {
    STALL_BUDGET.try_with(Cell::get).ok()
}

/// Spend `waited` of the current request's budget.
fn spend(waited: Duration) {
    let _ = STALL_BUDGET.try_with(|left| left.set(left.get().saturating_sub(waited)));
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
        let timeout = budget_left().map_or(timeout, |left| timeout.min(left));
        if timeout.is_zero() {
            return Err(Error::unavailable(self.breaker.name, "this request's time for stalled backends is spent"));
        }
        let permit = self.breaker.admit()?;
        let started = Instant::now();
        let result = match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(self.breaker.name, format!("no answer within {timeout:?}"))),
        };
        if matches!(result, Err(Error::Timeout(_))) {
            spend(started.elapsed());
        }
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

    #[tokio::test]
    async fn a_request_loses_at_most_its_budget_to_stalled_backends() {
        let stalled = || std::future::pending::<Result<()>>();
        let deadline = Duration::from_secs(1);
        let (a, b) = (Guard::new("a", deadline, Duration::ZERO), Guard::new("b", deadline, Duration::ZERO));
        let started = Instant::now();
        let (first, second, third) = with_stall_budget(Duration::from_millis(1200), async {
            (a.call(stalled()).await, b.call(stalled()).await, a.call(async { Ok(()) }).await)
        })
        .await;
        let took = started.elapsed();
        assert!(matches!(first, Err(Error::Timeout(_))), "{first:?}");
        assert!(matches!(second, Err(Error::Timeout(_))), "{second:?}");
        assert!(matches!(third, Err(Error::Unavailable(..))), "the spent budget let a call out: {third:?}");
        assert!(took >= Duration::from_millis(1190), "{took:?}");
        // 1 s, then the 200 ms left, then nothing: never the 2 s of two deadlines.
        assert!(took < Duration::from_millis(1900), "deadlines stacked: {took:?}");
        // Outside a request, every call has its own deadline.
        assert!(matches!(b.call(async { Ok(()) }).await, Ok(())));
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
