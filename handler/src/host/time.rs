//! Monotonic time through `wasi:clocks`.

use std::time::Duration;

use crate::bindings::wasi::clocks::monotonic_clock;

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
}
