//! Sweeping the node-local store: an entry past its age (a narinfo or NAR
//! older than `max_age_s` plus `stale_if_error_s`, an absence that ran
//! out, an access note older than the access-write interval) can never be
//! served again, and nothing overwrites the entries of paths that are not
//! asked for again, so without a sweep the store would grow with every
//! path the node has served or been asked for, random misses included.
//!
//! The store only grows when an instance writes to it: an absence, or a
//! narinfo or NAR that was then answered, which writes its NAR's access
//! note (`crate::accessed`). So an instance that writes an absence or an
//! access note, both after its answer, starts a pass when none started on
//! this node in the last [`EVERY_MS`] (a note in the store), and no client
//! waits for a pass. A pass lists the store's keys and reads the next
//! `max(`[`PASS_MIN`]`, keys / `[`PASSES_PER_ROUND`]`)` of them after where
//! the last pass stopped (in key order, wrapping round), deleting each
//! entry that is dead ([`entry::expired`]), read [`READ_AT_ONCE`] in a
//! call and the dead of them deleted in one. So while the node writes,
//! every key is looked at once in twelve passes (a minute), an entry is
//! gone about a minute (plus [`EVERY_MS`]) after it died, and a pass of
//! `n` keys costs a node about `n / 16` calls to its store. A store that
//! cannot be listed is logged and left as it is.

use std::cell::Cell;

use super::{entry, noted_within, retention_ms};
use crate::kv;
use crate::metadata::now_ms;

/// A node starts at most one pass per this many ms.
pub const EVERY_MS: i64 = 5_000;

/// Passes in which every key is looked at once: a round is
/// `EVERY_MS * PASSES_PER_ROUND` (a minute) while the node writes.
const PASSES_PER_ROUND: usize = 12;

/// Fewest keys a pass looks at (a small store is swept whole).
const PASS_MIN: usize = 256;

/// Entries a pass reads in one call (a kept NAR is at most 64 KiB: 2 MiB).
const READ_AT_ONCE: usize = 32;

/// The note of the last pass's start.
const NOTE: &str = "sweep/at";

/// The last key the last pass looked at.
const CURSOR: &str = "sweep/cursor";

thread_local! {
    /// Whether this instance already asked (an instance is one request).
    static ASKED: Cell<bool> = const { Cell::new(false) };
}

/// After an answer that wrote to the store: a pass, when none started on
/// this node in the last [`EVERY_MS`].
pub fn if_due() {
    if ASKED.replace(true) || noted_within(NOTE, EVERY_MS) {
        return;
    }
    let keys = match kv::keys() {
        Some(Ok(keys)) => keys,
        Some(Err(e)) => {
            crate::log::warn("the node-local store cannot be listed: not swept", &[("error", &format!("{e:?}"))]);
            return;
        }
        None => return,
    };
    let cursor = kv::get(CURSOR).and_then(|b| String::from_utf8(b).ok());
    let turn = this_turn(keys, cursor.as_deref());
    let entries: Vec<String> = turn.iter().filter(|k| entry::Kind::of(k).is_some()).cloned().collect();
    let (now, retention) = (now_ms(), retention_ms());
    for chunk in entries.chunks(READ_AT_ONCE) {
        let Some(values) = kv::get_many(chunk) else { return };
        let dead: Vec<String> = values
            .into_iter()
            .filter(|(key, value)| entry::expired(key, value, now, retention))
            .map(|(key, _)| key)
            .collect();
        if let Some(Err(e)) = kv::delete(&dead) {
            crate::log::warn("sweeping the node-local store failed", &[("error", &format!("{e:?}"))]);
            return;
        }
    }
    if let Some(last) = turn.last() {
        let _ = kv::set(CURSOR, last.as_bytes());
    }
}

/// The keys a pass looks at, of the store's `keys`: the next
/// `max(PASS_MIN, keys / PASSES_PER_ROUND)` after `cursor`, in key order,
/// wrapping round.
fn this_turn(mut keys: Vec<String>, cursor: Option<&str>) -> Vec<String> {
    keys.sort_unstable();
    let count = (keys.len() / PASSES_PER_ROUND).max(PASS_MIN).min(keys.len());
    let start = cursor.map_or(0, |c| keys.partition_point(|k| k.as_str() <= c));
    keys.iter().cycle().skip(start).take(count).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("absent/narinfo/s/{i:06}")).collect()
    }

    #[test]
    fn a_small_store_is_looked_at_whole() {
        let mut store = keys(10);
        store.extend([NOTE.to_owned(), CURSOR.to_owned(), "settings/variables".to_owned()]);
        let mut turn = this_turn(store.clone(), Some("sweep/at"));
        assert_eq!(turn.len(), store.len());
        turn.sort();
        store.sort();
        assert_eq!(turn, store);
    }

    #[test]
    fn a_large_store_is_looked_at_whole_in_a_round_of_passes() {
        let store = keys(PASS_MIN * PASSES_PER_ROUND * 2);
        let (mut seen, mut cursor) = (std::collections::BTreeSet::new(), None::<String>);
        for _ in 0..PASSES_PER_ROUND {
            let turn = this_turn(store.clone(), cursor.as_deref());
            assert_eq!(turn.len(), store.len() / PASSES_PER_ROUND);
            cursor = turn.last().cloned();
            seen.extend(turn);
        }
        assert_eq!(seen.len(), store.len());
        // The next round starts over.
        assert_eq!(this_turn(store.clone(), cursor.as_deref())[0], store[0]);
    }
}
