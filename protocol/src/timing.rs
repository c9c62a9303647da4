//! Deadlines that the guest and the runtime's edge tier must agree on.

use std::time::Duration;

/// Longest one narinfo fetch from the upstreams takes, whatever they do:
/// connecting, the head of their answer, and its whole body (an upstream
/// that drips its answer is cut off here).
pub fn narinfo_fetch(connect: Duration, response: Duration) -> Duration {
    connect + response * 2
}

/// How long a request waits for another request's fetch of the same
/// narinfo: past that fetch's own deadline, so the waiter sees what it
/// found instead of asking the upstreams again.
pub fn narinfo_patience(connect: Duration, response: Duration) -> Duration {
    narinfo_fetch(connect, response) + Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiter_outlasts_the_fetch_it_waits_for() {
        let (connect, response) = (Duration::from_secs(3), Duration::from_secs(3));
        assert_eq!(narinfo_fetch(connect, response), Duration::from_secs(9));
        assert!(narinfo_patience(connect, response) > narinfo_fetch(connect, response));
    }
}
