//! Spin's node-local key-value store (`wasi:keyvalue`, the `default`
//! store), opened once per instance, with the reads an instance makes
//! together.
//!
//! Spin 3.6.3 runs every key-value call on a blocking hand-off of its
//! worker thread. So where an instance knows which keys it will read, it
//! reads them in one `batch.get-many` ([`read_ahead`]), and [`get`]
//! serves each of them once from what that call found: a warm narinfo
//! hit opens the store and makes one read (the settings, the record,
//! where the node stands in the purge log and its access note) instead of
//! four. A key read ahead is read from the store again the
//! second time it is asked for (a re-read is meant to see what other
//! instances wrote meanwhile), and a write or delete of it drops what was
//! read ahead.
//!
//! A store that refuses batch reads (Spin 3.6.3's Redis store sends one as
//! `KEYS`, which Redis refuses) is read one call per key instead: hits
//! and sweeps work as on Spin's own store, a call per key dearer, and the
//! node logs why at most once per [`BATCH_REFUSED_LOG_EVERY_MS`].

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashMap;

use crate::bindings::wasi::keyvalue::batch;
use crate::bindings::wasi::keyvalue::store::{self, Bucket, Error};

/// The store the adapter keeps its notes and tier in (Spin's node-local
/// default).
const STORE: &str = "default";

thread_local! {
    static OPENED: OnceCell<Option<Bucket>> = const { OnceCell::new() };
    /// This instance's store refused a batch read: read one key per call.
    static BATCH_REFUSED: Cell<bool> = const { Cell::new(false) };
    /// What [`read_ahead`] found, each served once by [`get`] (none: the
    /// key is not in the store).
    static AHEAD: RefCell<HashMap<String, Option<Vec<u8>>>> = RefCell::default();
}

/// `f` on the node-local store; none when it cannot be opened (logged once
/// per instance).
fn with_store<T>(f: impl FnOnce(&Bucket) -> T) -> Option<T> {
    OPENED.with(|cell| {
        cell.get_or_init(|| {
            store::open(STORE)
                .inspect_err(|e| {
                    crate::log::warn(
                        "the node-local tier is off: Spin's key-value store cannot be opened",
                        &[("store", STORE), ("error", &format!("{e:?}")), ("fix", "key_value_stores = [\"default\"]")],
                    )
                })
                .ok()
        })
        .as_ref()
        .map(f)
    })
}

/// `keys` and their values, in one call; none when the store cannot be
/// opened or refuses batch reads ([`batch_refused`]: this instance asks
/// no more).
fn read_together(keys: &[String]) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    if BATCH_REFUSED.get() {
        return None;
    }
    with_store(|s| batch::get_many(s, keys))?.inspect_err(batch_refused).ok()
}

/// `keys` and their values: in one call, or one call per key where the
/// store refuses batch reads. None when the store cannot be opened or read
/// (logged).
fn read_many(keys: &[String]) -> Option<Vec<(String, Option<Vec<u8>>)>> {
    if let Some(found) = read_together(keys) {
        return Some(found);
    }
    let read = with_store(|s| keys.iter().map(|k| Ok((k.clone(), s.get(k)?))).collect::<Result<Vec<_>, Error>>())?;
    read.inspect_err(|e| crate::log::warn("a read of the node-local store failed", &[("error", &format!("{e:?}"))]))
        .ok()
}

/// How often a node logs that its store refuses batch reads.
pub const BATCH_REFUSED_LOG_EVERY_MS: i64 = 600_000;

/// The store refused a batch read: this instance reads one key per call
/// from now on, and says why when the node has not in the last
/// [`BATCH_REFUSED_LOG_EVERY_MS`].
fn batch_refused(e: &Error) {
    BATCH_REFUSED.set(true);
    let write = |key: &str, value: &[u8]| drop(set(key, value));
    if noted_within_by("batch-refused", BATCH_REFUSED_LOG_EVERY_MS, get, write) {
        return;
    }
    crate::log::warn(
        "the node-local store refuses batch reads: each key is read on its own, a call per key",
        &[
            ("error", &format!("{e:?}")),
            ("fix", "make `default` Spin's own key-value store (type \"spin\"); Spin 3.6.3's Redis store sends a batch read as KEYS"),
        ],
    );
}

/// Whether the note `key` (read by `read`) says a time less than `ms`
/// ago. When it does not, `write` notes now.
pub(crate) fn noted_within_by(
    key: &str,
    ms: i64,
    read: impl FnOnce(&str) -> Option<Vec<u8>>,
    write: impl FnOnce(&str, &[u8]),
) -> bool {
    let now = crate::metadata::now_ms();
    let noted: Option<i64> = read(key).and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok());
    if noted.is_some_and(|t| (0..ms).contains(&(now - t))) {
        return true;
    }
    write(key, now.to_string().as_bytes());
    false
}

/// Read `keys` in one call; [`get`] then serves each once. When the store
/// refuses batch reads, nothing is read ahead (each is read on its own,
/// when asked for). A key still read ahead is not read again.
pub fn read_ahead(keys: &[String]) {
    let keys: Vec<String> = AHEAD.with(|ahead| {
        let ahead = ahead.borrow();
        keys.iter().filter(|k| !ahead.contains_key(*k)).cloned().collect()
    });
    // One key is one call either way: [`get`] reads it.
    if keys.len() < 2 {
        return;
    }
    let Some(found) = read_together(&keys) else { return };
    let mut found: HashMap<String, Option<Vec<u8>>> = found.into_iter().collect();
    AHEAD.with(|ahead| {
        let mut ahead = ahead.borrow_mut();
        for key in keys {
            let value = found.remove(&key).flatten();
            ahead.insert(key, value);
        }
    });
}

/// The value of `key`: what [`read_ahead`] found, the first time, else
/// from the store. None when the store has none, or cannot be read.
pub fn get(key: &str) -> Option<Vec<u8>> {
    if let Some(value) = AHEAD.with(|ahead| ahead.borrow_mut().remove(key)) {
        return value;
    }
    with_store(|s| s.get(key).ok().flatten()).flatten()
}

/// The value of `key` as [`get`] gives it, left for the next [`get`] to
/// serve (a read that decides whether the next is needed: the second
/// costs no call to the store).
pub fn peek(key: &str) -> Option<Vec<u8>> {
    let value = get(key);
    AHEAD.with(|ahead| ahead.borrow_mut().insert(key.to_owned(), value.clone()));
    value
}

/// The values of `keys` that the store has, in one call where it can
/// (none when it cannot be read).
pub fn get_many(keys: &[String]) -> Option<HashMap<String, Vec<u8>>> {
    let found = read_many(keys)?;
    Some(found.into_iter().filter_map(|(k, v)| Some((k, v?))).collect())
}

/// Write `value` under `key`. None when the store cannot be opened.
pub fn set(key: &str, value: &[u8]) -> Option<Result<(), Error>> {
    AHEAD.with(|ahead| ahead.borrow_mut().remove(key));
    with_store(|s| s.set(key, value))
}

/// Delete `keys`, in one call. None when the store cannot be opened.
pub fn delete(keys: &[String]) -> Option<Result<(), Error>> {
    AHEAD.with(|ahead| {
        let mut ahead = ahead.borrow_mut();
        keys.iter().for_each(|k| drop(ahead.remove(k)));
    });
    match keys {
        [] => Some(Ok(())),
        [key] => with_store(|s| s.delete(key)),
        _ => with_store(|s| batch::delete_many(s, keys)),
    }
}

/// Every key in the store (Spin lists them in one answer). None when the
/// store cannot be opened.
pub fn keys() -> Option<Result<Vec<String>, Error>> {
    with_store(|s| s.list_keys(None).map(|r| r.keys))
}

/// Whether the store can be used (opened, or opened now).
pub fn opened() -> bool {
    with_store(|_| ()).is_some()
}
