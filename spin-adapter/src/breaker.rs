//! Node-wide circuit breakers for the database, S3 and Redis, kept in the
//! node-local store, because under Spin every request is a fresh instance
//! and only the store outlives it.
//!
//! Spin 3.6.3 pools PostgreSQL connections (up to 64 per address) and
//! runs a statement on a pooled connection before it hands it out, and it
//! pools outbound HTTP connections (S3's). Behind a partition (packets
//! dropped, nothing closed) a call on a pooled connection waits out its
//! timeout (`tcp_user_timeout`, or `backend_timeout_ms` for S3) and a new
//! connection waits out the connect timeout: without a breaker every
//! request would wait at least one timeout per backend call, and a
//! database request that meets several pooled connections one timeout
//! for each.
//!
//! So an instance whose backend did not answer (a call that failed after
//! half of `backend_timeout_ms` or more: a refusal fails at once, and
//! waiting for it costs nothing) notes under the backend's key
//! ([`Backend::key`]) until when the node does not ask it
//! ([`COOL_DOWN_MS`]) and why. Until then every instance fails its calls
//! to that backend at once: what the tier keeps is answered stale, a miss
//! is passed through to the upstream (a NAR without being stored), the
//! rest gets a 503. The first instance past that time moves the note on by
//! one cool-down and asks (a probe; about one instance per cool-down,
//! since a read and a write of the store are not one step). A probe that
//! gets its answer removes the note.
//!
//! Spin 3.6.3 gives its Redis and MySQL clients no timeout at all: a call
//! to one that went silent waits until the kernel gives up (minutes), and
//! an instance cannot cut it short. So a call to those ([`watched`])
//! notes in the store when it began ([`Backend::asked_key`], unless a note
//! of an earlier call still stands) and removes the note when it returns.
//! An instance that finds such a note older than `backend_timeout_ms`
//! trips the breaker for the call that did not return: that call's
//! request still waits, the node's others do not.
//!
//! The notes are read in the same call as the settings and a hit's entry
//! (`tier::read_with`), so a hit pays nothing for them, and an instance
//! reads each note at most once (then once more per cool-down it outlives).

use std::cell::RefCell;

use crate::error::Error;
use crate::metadata::now_ms;
use crate::{kv, settings};

/// A backend with a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The metadata database.
    Database,
    /// The S3 bucket of NARs.
    Storage,
    /// Redis: locks and the purge log.
    Redis,
}

impl Backend {
    /// Every backend with a breaker.
    pub const ALL: [Backend; 3] = [Backend::Database, Backend::Storage, Backend::Redis];

    /// The key of the backend's note in the node-local store.
    pub const fn key(self) -> &'static str {
        match self {
            Backend::Database => "breaker/database",
            Backend::Storage => "breaker/storage",
            Backend::Redis => "breaker/redis",
        }
    }

    /// The key of the note of a [`watched`] call to the backend under way
    /// (when it began, ms); none for S3, whose client under Spin has
    /// timeouts: only the backends whose client may have none are watched
    /// (Redis; the database when it is MySQL).
    pub const fn asked_key(self) -> Option<&'static str> {
        match self {
            Backend::Database => Some("breaker/database/asked"),
            Backend::Storage => None,
            Backend::Redis => Some("breaker/redis/asked"),
        }
    }

    /// The backend its errors name.
    const fn error_name(self) -> &'static str {
        match self {
            Backend::Database => "database",
            Backend::Storage => "s3",
            Backend::Redis => "redis",
        }
    }

    /// What the log calls it.
    const fn name(self) -> &'static str {
        match self {
            Backend::Database => "the database",
            Backend::Storage => "S3",
            Backend::Redis => "Redis",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// How long the node does not ask a backend that did not answer: as long
/// as a native node's breakers (`runtime/src/backends.rs`).
pub const COOL_DOWN_MS: i64 = 2_000;

/// What this instance knows of a backend's note.
#[derive(Clone, Debug, Default)]
enum Seen {
    /// Not read yet.
    #[default]
    Unread,
    /// The backend may be asked; `noted`: this instance found a note (it
    /// probes), so an answer must remove it.
    Asking { noted: bool },
    /// The node does not ask the backend until `until` (ms), because of
    /// `cause`.
    Open { until: i64, cause: String },
}

thread_local! {
    static SEEN: RefCell<[Seen; Backend::ALL.len()]> = RefCell::default();
}

fn seen(backend: Backend) -> Seen {
    SEEN.with_borrow(|s| s[backend.index()].clone())
}

fn set_seen(backend: Backend, seen: Seen) {
    SEEN.with_borrow_mut(|s| s[backend.index()] = seen);
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

/// Whether the node has a note for `backend`: it did not answer, and it
/// is not to be asked, or the probe that asks it has not had its answer.
pub fn noted(backend: Backend) -> bool {
    match seen(backend) {
        Seen::Asking { noted } => noted,
        Seen::Open { .. } => true,
        // Left for `open`, which reads it next when there is none.
        Seen::Unread => kv::peek(backend.key()).is_some(),
    }
}

/// Why `backend` is not to be asked now; none when it may be (no note, or
/// this instance is the probe).
pub fn open(backend: Backend) -> Option<String> {
    let now = now_ms();
    match seen(backend) {
        Seen::Asking { .. } => return None,
        Seen::Open { until, cause } if now < until => return Some(refusal(backend, &cause, until - now)),
        Seen::Open { .. } | Seen::Unread => {}
    }
    if let Some(cause) = unanswered(backend, now) {
        return Some(cause);
    }
    let Some((until, cause)) = kv::get(backend.key()).as_deref().and_then(parse) else {
        set_seen(backend, Seen::Asking { noted: false });
        return None;
    };
    if now < until {
        set_seen(backend, Seen::Open { until, cause: cause.clone() });
        return Some(refusal(backend, &cause, until - now));
    }
    // This instance probes; the others wait another cool-down.
    let _ = kv::set(backend.key(), note(now + COOL_DOWN_MS, &cause).as_bytes());
    set_seen(backend, Seen::Asking { noted: true });
    None
}

/// When a [`watched`] call to `backend` began `backend_timeout_ms` or
/// more before `now` and has not returned: the breaker trips (the note of
/// that call goes, so the probe after the cool-down starts a note of its
/// own), and why the backend is not to be asked.
fn unanswered(backend: Backend, now: i64) -> Option<String> {
    let key = backend.asked_key()?;
    // Left for `watched`, which reads it next when the call is made.
    let began: i64 = std::str::from_utf8(&kv::peek(key)?).ok()?.parse().ok()?;
    let waited = now - began;
    if u128::try_from(waited).unwrap_or(0) < settings::backend_timeout().as_millis() {
        return None;
    }
    let _ = kv::delete(&[key.to_owned()]);
    let e = Error::Timeout(
        backend.error_name(),
        format!("a call begun {waited} ms ago has not returned (`backend_timeout_ms`; its client has no timeout)"),
    );
    Some(trip(backend, &e))
}

/// Call `backend` with `call`, noting in the node-local store when it
/// began unless a note of a call under way stands, and removing the note
/// it wrote when the call returns: for the backends whose client under
/// Spin has no timeout (Redis, MySQL), so that the node's other instances
/// see a call that never returns ([`unanswered`]). Up to three calls to
/// the store around each (the first of an instance's calls reads nothing:
/// its breaker's check just read the note): for calls that go to the
/// region anyway.
pub fn watched<R>(backend: Backend, call: impl FnOnce() -> R) -> R {
    let Some(key) = backend.asked_key() else { return call() };
    let noted = kv::get(key).is_none() && matches!(kv::set(key, now_ms().to_string().as_bytes()), Some(Ok(())));
    let answer = call();
    if noted {
        let _ = kv::delete(&[key.to_owned()]);
    }
    answer
}

fn refusal(backend: Backend, cause: &str, in_ms: i64) -> String {
    format!("{cause} (the node asks {} again in {in_ms} ms: it did not answer)", backend.name())
}

/// A call to `backend` begun at `started` (ms) failed with `e`: when that
/// took half of `backend_timeout_ms` or more, the backend did not answer,
/// and the node stops asking it for a cool-down. A request or setting
/// that was rejected (`Invalid`) is no answer of the backend's.
pub fn trip_if_slow(backend: Backend, started: i64, e: &Error) {
    let waited = now_ms() - started;
    if matches!(e, Error::Invalid(_)) {
        return;
    }
    if u128::try_from(waited).unwrap_or(0) * 2 >= settings::backend_timeout().as_millis() {
        trip(backend, e);
    }
}

/// `backend` did not answer (`e`): the node stops asking it for a
/// cool-down. Why it is not to be asked.
fn trip(backend: Backend, e: &Error) -> String {
    let cause = match e {
        Error::Unavailable(_, m) | Error::Timeout(_, m) | Error::Internal(_, m) => m,
        Error::Conflict(m) | Error::Invalid(m) => m,
    };
    let first = cause.lines().next().unwrap_or_default();
    let until = now_ms() + COOL_DOWN_MS;
    let _ = kv::set(backend.key(), note(until, first).as_bytes());
    set_seen(backend, Seen::Open { until, cause: first.to_owned() });
    crate::log::warn(
        &format!("{} did not answer: the node does not ask it for a cool-down", backend.name()),
        &[("cool_down_ms", &COOL_DOWN_MS.to_string()), ("error", first)],
    );
    refusal(backend, first, COOL_DOWN_MS)
}

/// `backend` answered: a note this instance found (it probed) or wrote
/// is removed, and the node asks the backend again.
pub fn close(backend: Backend) {
    if matches!(seen(backend), Seen::Asking { noted: true } | Seen::Open { .. }) {
        let _ = kv::delete(&[backend.key().to_owned()]);
    }
    set_seen(backend, Seen::Asking { noted: false });
}

/// Ask `backend` with `call`, unless its breaker is open (then an
/// `Unavailable` error that says why); a call that failed slowly trips the
/// breaker, one that succeeded closes it.
pub fn guarded<T>(backend: Backend, call: impl FnOnce() -> crate::error::Result<T>) -> crate::error::Result<T> {
    if let Some(cause) = open(backend) {
        return Err(Error::Unavailable(backend.error_name(), cause));
    }
    let started = now_ms();
    let answer = call();
    match &answer {
        Ok(_) => close(backend),
        Err(e) => trip_if_slow(backend, started, e),
    }
    answer
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
