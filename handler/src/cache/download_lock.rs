//! The download lock: one download of a narinfo or NAR at a time, however
//! many instances on however many nodes ask for it. One policy for both.
//!
//! Whoever takes `download:<kind>:<hash>` fetches. Everybody else waits in
//! rounds of the host's `acquire` (its retry policy, `--cache-lock-retry-*`)
//! and checks between rounds whether the result has appeared; a holder that
//! dies loses its lease to expiry and the next waiter takes over. After
//! `patience` a waiter gives up waiting and fetches without the lock.

use std::time::Duration;

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::locks::{self, Lease, Mode};
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::host::logging;
use crate::host::time::Instant;

/// What waiting for a download lock came to.
pub enum Wait<T> {
    /// This instance holds the lock and should fetch.
    Acquired(Lease),
    /// The result appeared (fetched by whoever held the lock).
    Done(T),
    /// The lock stayed held for longer than the patience: fetch without it.
    GaveUp,
    /// The lock service is down and degraded mode is off.
    Unavailable,
}

/// Take `download:<kind>:<hash>`, or wait up to `patience` for whoever
/// holds it, checking `done()` for the result before taking the lock and
/// between rounds. A lease taken here expires `download-lease-ms` ahead and
/// is kept alive by the host's heartbeat for at most `download-lock-ttl-ms`,
/// so a holder that dies or freezes is taken over within the lease.
pub fn acquire_or_wait<T>(
    kind: &str,
    hash: &str,
    settings: &Settings,
    patience: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> Wait<T> {
    let ttl_ms = settings.download_lease_ms;
    let key = format!("download:{kind}:{hash}");
    let lock_type = format!("download:{kind}");
    let started = Instant::now();
    loop {
        match locks::acquire(&key, Mode::Exclusive, ttl_ms) {
            Ok(lease) => {
                // Somebody may have finished between our check and the lock.
                if let Some(result) = done() {
                    return Wait::Done(result);
                }
                logging::debug(
                    "acquired download lock",
                    &[("hash", hash), ("lock_type", &lock_type), ("lock_key", &key)],
                );
                lease.keep_alive(settings.download_lease_ms, settings.download_lock_ttl_ms);
                return Wait::Acquired(lease);
            }
            Err(HostError::Timeout(_) | HostError::Conflict(_)) => {
                if let Some(result) = done() {
                    return Wait::Done(result);
                }
                if started.elapsed() >= patience {
                    let waited = started.elapsed().as_millis().to_string();
                    logging::warn(
                        "failed to acquire lock",
                        &[("hash", hash), ("lock_type", &lock_type), ("waited_ms", &waited)],
                    );
                    return Wait::GaveUp;
                }
            }
            Err(e) => {
                logging::warn(
                    "failed to acquire lock",
                    &[("hash", hash), ("lock_type", &lock_type), ("error", &format!("{e:?}"))],
                );
                return Wait::Unavailable;
            }
        }
    }
}
