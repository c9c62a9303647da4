//! Monotonic time and sleeping through `wasi:clocks`.

use std::time::Duration;

use crate::wasi::clocks::monotonic_clock;

/// A point on the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Instant(u64);

impl Instant {
    /// Now.
    pub fn now() -> Self {
        Self(monotonic_clock::now())
    }
    /// Time since `self`.
    pub fn elapsed(self) -> Duration {
        Duration::from_nanos(monotonic_clock::now().saturating_sub(self.0))
    }
    /// `self` plus `d`.
    pub fn add(self, d: Duration) -> Self {
        Self(self.0.saturating_add(d.as_nanos().min(u64::MAX as u128) as u64))
    }
}

/// Block this instance for `d`.
pub fn sleep(d: Duration) {
    monotonic_clock::subscribe_duration(d.as_nanos().min(u64::MAX as u128) as u64).block();
}
