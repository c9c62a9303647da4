//! Access times without a database write per hit: a node writes a NAR's
//! access time at most once per [`ACCESS_WRITE_EVERY_MS`] (as often as a
//! native node flushes its batch), noting when it last did in its node-local
//! store, shared by every instance of the node. LRU eviction sees access
//! times at most that old; a node whose store cannot be opened writes on
//! every hit. A note is a write to the store: it may start a sweep of it
//! (`crate::tier::sweep`), after the answer.
//!
//! A hit reads its note with its entry, in one call (`crate::kv`): a NAR
//! hit's note is named by the NAR, a narinfo hit's by the narinfo's hash
//! (the NAR's name is not known before its record is read), so a NAR that
//! is asked for both ways has its access time written at most twice per
//! interval.

use std::cell::RefCell;

use ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS;

use crate::tier::{noted_within, sweep, Kind};

thread_local! {
    /// The NAR of the narinfo this instance answered, and that hit's note.
    static ANSWERED: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// The note of the NAR `key` (`nar/<file>`).
pub fn note_key(key: &str) -> String {
    format!("{}/{key}", Kind::Accessed.prefix())
}

/// The note of a hit of the narinfo `hash`.
pub fn narinfo_note_key(hash: &str) -> String {
    note_key(&format!("narinfo/{hash}"))
}

/// This instance answers the narinfo `hash`, whose NAR is `url`: the
/// access of `url` it records is noted as that narinfo's.
pub fn answered_narinfo(hash: &str, url: &str) {
    ANSWERED.with(|a| *a.borrow_mut() = Some((url.to_owned(), narinfo_note_key(hash))));
}

/// Whether `key`'s access time is to be written now: this node has not
/// written it in the last [`ACCESS_WRITE_EVERY_MS`]. When it is, notes it
/// written.
pub fn due(key: &str) -> bool {
    let answered = ANSWERED.with(|a| a.borrow().as_ref().filter(|(url, _)| url == key).map(|(_, note)| note.clone()));
    let note = answered.unwrap_or_else(|| note_key(key));
    let due = !noted_within(&note, ACCESS_WRITE_EVERY_MS as i64);
    if due {
        sweep::if_due();
    }
    due
}
