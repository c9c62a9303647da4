//! Access times without a database write per hit: a node writes a NAR's
//! access time at most once per [`ACCESS_WRITE_EVERY_MS`] (as often as a
//! native node flushes its batch), noting when it last did in its node-local
//! store, shared by every instance of the node. LRU eviction sees access
//! times at most that old; a node whose store cannot be opened writes on
//! every hit.

use ncps_edge_wire::sql::ACCESS_WRITE_EVERY_MS;

use crate::metadata::now_ms;
use crate::tier::{scoped, with_store};

/// Whether `key`'s access time is to be written now: this node has not
/// written it in the last [`ACCESS_WRITE_EVERY_MS`]. When it is, notes it
/// written.
pub fn due(key: &str) -> bool {
    let noted = format!("{}/{key}", scoped("accessed"));
    let now = now_ms();
    let last = with_store(|s| s.get(&noted).ok().flatten()).flatten();
    let last: Option<i64> = last.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok());
    if last.is_some_and(|t| (0..ACCESS_WRITE_EVERY_MS as i64).contains(&(now - t))) {
        return false;
    }
    let _ = with_store(|s| s.set(&noted, now.to_string().as_bytes()));
    true
}
