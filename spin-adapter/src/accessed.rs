//! Access times without a database write per hit: a node writes a NAR's
//! access time at most once per [`ACCESS_WRITE_EVERY_MS`] (as often as a
//! native node flushes its batch), noting when it last did in its node-local
//! store, shared by every instance of the node. LRU eviction sees access
//! times at most that old; a node whose store cannot be opened writes on
//! every hit. A note is a write to the store: it may start a sweep of it
//! (`crate::tier::sweep`), after the answer.

use ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS;

use crate::tier::{noted_within, scoped, sweep, Kind};

/// Whether `key`'s access time is to be written now: this node has not
/// written it in the last [`ACCESS_WRITE_EVERY_MS`]. When it is, notes it
/// written.
pub fn due(key: &str) -> bool {
    let due = !noted_within(&format!("{}/{key}", scoped(Kind::Accessed.prefix())), ACCESS_WRITE_EVERY_MS as i64);
    if due {
        sweep::if_due();
    }
    due
}
