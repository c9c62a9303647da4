//! A node-wide circuit breaker for the database, kept in the node-local
//! store, because under Spin every request is a fresh instance and only
//! the store outlives it.
//!
//! Spin 3.6.3 pools PostgreSQL connections (up to 64 per address) and
//! runs a statement on a pooled connection before it hands it out. Behind
//! a partition (packets dropped, nothing closed) that statement waits out
//! the connection's `tcp_user_timeout` before the pool drops it and tries
//! the next, and a new connection waits out `connect_timeout`: without a
//! breaker every request would wait at least one timeout, and a request
//! that meets several pooled connections one timeout for each.
//!
//! So an instance whose database did not answer (a connect or statement
//! that failed after half of `backend_timeout_ms` or more: a refusal fails
//! at once, and waiting for it costs nothing) notes under [`KEY`] until
//! when the node does not ask it ([`COOL_DOWN_MS`]) and why. Until then
//! every instance fails its database calls at once: what the tier keeps
//! is answered stale, a miss is passed through to the upstream, the rest
//! gets a 503. The first instance past that time moves the note on by one
//! cool-down and asks (a probe; about one instance per cool-down, since a
//! read and a write of the store are not one step). A probe that gets its
//! connection removes the note.
//!
//! The note is read in the same call as the settings and a hit's entry
//! (`tier::read_with`), so a hit pays nothing for it.

use std::cell::Cell;

use crate::error::Error;
use crate::metadata::now_ms;
use crate::{kv, settings};

/// The key of the note.
pub const KEY: &str = "breaker/database";

/// How long the node does not ask a database that did not answer: as long
/// as a native node's breakers (`runtime/src/backends.rs`).
pub const COOL_DOWN_MS: i64 = 2_000;

thread_local! {
    /// This instance found a note, so its success must remove it.
    static NOTED: Cell<bool> = const { Cell::new(false) };
}

/// `until cause`, the note's form.
fn note(until: i64, cause: &str) -> String {
    format!("{until} {cause}")
}

/// The time and cause of a note.
fn parse(note: &[u8]) -> Option<(i64, String)> {
    let (until, cause) = std::str::from_utf8(note).ok()?.split_once(' ')?;
    Some((until.parse().ok()?, cause.to_owned()))
}

/// Why the database is not to be asked now; none when it may be (no
/// note, or this instance is the probe).
pub fn open() -> Option<String> {
    let (until, cause) = parse(&kv::get(KEY)?)?;
    NOTED.set(true);
    let now = now_ms();
    if now < until {
        return Some(format!("{cause} (the node asks the database again in {} ms: it did not answer)", until - now));
    }
    // This instance probes; the others wait another cool-down.
    let _ = kv::set(KEY, note(now + COOL_DOWN_MS, &cause).as_bytes());
    None
}

/// A connect or statement begun at `started` (ms) failed with `e`: when
/// that took half of `backend_timeout_ms` or more, the database did not
/// answer, and the node stops asking it for a cool-down ([`trip`]). A
/// setting that was rejected (`Invalid`) is no answer of the database's.
pub fn trip_if_slow(started: i64, e: &Error) {
    let waited = now_ms() - started;
    if matches!(e, Error::Invalid(_)) {
        return;
    }
    if u128::try_from(waited).unwrap_or(0) * 2 >= settings::backend_timeout().as_millis() {
        trip(e);
    }
}

/// The database did not answer (`e`): the node stops asking it for a
/// cool-down.
fn trip(e: &Error) {
    let cause = match e {
        Error::Unavailable(_, m) | Error::Timeout(_, m) | Error::Internal(_, m) => m,
        Error::Conflict(m) | Error::Invalid(m) => m,
    };
    let first = cause.lines().next().unwrap_or_default();
    let _ = kv::set(KEY, note(now_ms() + COOL_DOWN_MS, first).as_bytes());
    NOTED.set(true);
    crate::log::warn(
        "the database did not answer: the node does not ask it for a cool-down",
        &[("cool_down_ms", &COOL_DOWN_MS.to_string()), ("error", first)],
    );
}

/// The database answered: a note this instance found (it probed) is
/// removed, and the node asks the database again.
pub fn close() {
    if NOTED.replace(false) {
        let _ = kv::delete(&[KEY.to_owned()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back_as_written() {
        let written = note(1_700_000_000_123, "database unavailable: connection timed out");
        assert_eq!(
            parse(written.as_bytes()),
            Some((1_700_000_000_123, "database unavailable: connection timed out".to_owned()))
        );
    }

    #[test]
    fn a_note_that_is_not_ours_is_no_note() {
        assert_eq!(parse(b"soon"), None);
        assert_eq!(parse(b"x y"), None);
        assert_eq!(parse(&[0xff, b' ', b'1']), None);
    }
}
