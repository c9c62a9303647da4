//! What a node has read of a table of purges (MySQL's, which it polls;
//! PostgreSQL's, whose rows it hears as notifications and reads when it
//! listens again). The database numbers each row at insert, but rows
//! become visible at commit, possibly out of order, so a reader reads again
//! [`REORDER_WINDOW`] ids below the highest it read and keeps the ids it
//! read there. Rows are pruned only right after an insert, so the newest
//! one stays and ids only grow: a newest id below the highest read means
//! the table went back (a restore, a failover to a replica that lagged).

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long purge rows are kept.
pub const KEPT: Duration = Duration::from_secs(600);
/// How often a publisher deletes old rows.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Ids read again below the highest read, for rows committed out of order.
pub const REORDER_WINDOW: u64 = 256;
/// How long a listener may not hear and still be given, when it reads on,
/// every purge sent meanwhile: half of what the table keeps; the rest is
/// room for the clocks of the publishers and the server, and for the
/// prune's own pace.
pub const RESUMES_WITHIN: Duration = Duration::from_secs(KEPT.as_secs() / 2);

/// What a node has read of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The highest id when the node started reading: rows up to it are
    /// older than anything the node keeps.
    start: u64,
    /// The highest id read.
    highest: u64,
    /// The ids read within [`REORDER_WINDOW`] of `highest`.
    seen: BTreeSet<u64>,
}

impl Read {
    /// A reader that starts at the table's newest id (0: none).
    pub fn at(newest: u64) -> Self {
        Read { start: newest, highest: newest, seen: BTreeSet::new() }
    }

    /// Rows with ids above this are read (again).
    pub fn from(&self) -> u64 {
        self.highest.saturating_sub(REORDER_WINDOW)
    }

    /// Whether row `id` is one to apply: not read yet, and newer than the start.
    pub fn is_new(&self, id: u64) -> bool {
        id > self.start && !self.seen.contains(&id)
    }

    /// Note row `id` as read; whether it is new ([`Read::is_new`]).
    pub fn note(&mut self, id: u64) -> bool {
        if !self.is_new(id) {
            return false;
        }
        self.seen.insert(id);
        self.highest = self.highest.max(id);
        self.seen = self.seen.split_off(&self.from());
        true
    }

    /// Whether a table whose newest id is `newest` went back.
    pub fn went_back(&self, newest: u64) -> bool {
        newest < self.highest
    }
}

/// When a publisher last pruned the table.
#[derive(Debug)]
pub struct Pruned(Mutex<Instant>);

impl Default for Pruned {
    fn default() -> Self {
        Pruned(Mutex::new(Instant::now()))
    }
}

impl Pruned {
    /// Whether a prune is due (every [`PRUNE_EVERY`]); if so, it counts as
    /// done now.
    pub fn due(&self) -> bool {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let due = last.elapsed() > PRUNE_EVERY;
        if due {
            *last = Instant::now();
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_applied_once_in_any_order_and_never_from_before_the_start() {
        let mut read = Read::at(10);
        assert!(!read.note(10) && !read.note(3), "rows from before the start");
        assert!(read.note(12), "a row");
        assert!(read.note(11), "a row committed after a later one");
        assert!(!read.note(12) && !read.note(11), "rows read twice");
        assert_eq!(read.from(), 0);
        assert!(read.note(12 + REORDER_WINDOW));
        assert_eq!(read.from(), 12);
        assert!(!read.went_back(12 + REORDER_WINDOW) && read.went_back(11 + REORDER_WINDOW));
    }
}
