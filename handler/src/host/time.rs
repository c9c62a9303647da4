//! Monotonic time through `wasi:clocks`.

use std::time::Duration;

use crate::bindings::wasi::clocks::monotonic_clock;
use crate::bindings::wasi::io::poll::Pollable;

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
    /// The point `d` after `self`.
    pub fn after(self, d: Duration) -> Self {
        Self(self.0.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)))
    }
    /// A pollable that is ready at `self`.
    pub fn timer(self) -> Pollable {
        monotonic_clock::subscribe_instant(self.0)
    }
}
