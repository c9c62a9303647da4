//! NARs in storage: what is stored, and publishing a finished one.
//!
//! Publishing and evicting one NAR exclude each other through the shared
//! lock `publish:nar:<hash>`: every publisher (a download, an upload, an
//! uploaded narinfo that points at the NAR) holds it shared while it
//! commits and records, and the LRU pass takes it exclusively before it
//! evicts, so an eviction never interleaves with a publish of the same NAR.

use crate::bindings::ncps::edge::locks::{self, Lease, Mode};
use crate::bindings::ncps::edge::metadata::{self, NarRecord};
use crate::bindings::ncps::edge::storage::{self, Writer};
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::host::logging;

/// How long a publish or an eviction may hold `publish:nar:<hash>`.
pub const PUBLISH_LOCK_TTL_MS: u64 = 60_000;

/// Size of the stored object; storage failures are logged and count as absent.
pub fn stat(key: &str) -> Option<u64> {
    stat_or_failed(key, false).ok().flatten()
}

/// The size of the stored object `key`, or the storage failure (logged).
/// `for_read`: a read of the whole object follows (`storage.stat-for-read`).
pub fn stat_or_failed(key: &str, for_read: bool) -> Result<Option<u64>, HostError> {
    let info = if for_read { storage::stat_for_read(key) } else { storage::stat(key) };
    info.map(|info| info.map(|i| i.size)).inspect_err(|e| {
        logging::warn("storage stat failed", &[("url", key), ("error", &format!("{e:?}"))]);
    })
}

/// The publish lock of the NAR stored under `key` (`nar/<hash>.nar…`).
fn publish_lock_key(key: &str) -> String {
    let file = key.rsplit('/').next().unwrap_or(key);
    format!("publish:nar:{}", file.split('.').next().unwrap_or(file))
}

/// Hold the publish lock of `key` shared (publishers do not exclude each
/// other; an eviction excludes them all).
pub fn lock_for_publish(key: &str) -> Result<Lease, HostError> {
    locks::acquire(&publish_lock_key(key), Mode::Shared, PUBLISH_LOCK_TTL_MS)
}

/// Take the publish lock of `key` exclusively for an eviction, without
/// waiting: `None` while anybody publishes it.
pub fn lock_for_eviction(key: &str) -> Result<Option<Lease>, HostError> {
    locks::try_acquire(&publish_lock_key(key), Mode::Exclusive, PUBLISH_LOCK_TTL_MS)
}

/// Commit `writer` under `key` and record its stored size. Returns whether
/// the object is in storage afterwards (published now or before).
pub fn publish(key: &str, writer: Writer, size: u64, record: Option<NarRecord>) -> bool {
    let _publishing = match lock_for_publish(key) {
        Ok(lease) => lease,
        Err(e) => {
            logging::warn("publish lock unavailable; not caching", &[("url", key), ("error", &format!("{e:?}"))]);
            Writer::abort(writer);
            return false;
        }
    };
    match Writer::commit(writer) {
        Ok(_) => {
            let mut nar = record.unwrap_or(NarRecord {
                key: key.to_owned(),
                upstream_url: None,
                file_hash: None,
                file_size: None,
                stored_size: None,
            });
            nar.stored_size = Some(size);
            if let Err(e) = metadata::put_nar(&nar) {
                logging::warn("failed to record stored NAR", &[("url", key), ("error", &format!("{e:?}"))]);
            }
            true
        }
        Err(e) => {
            logging::warn("storage commit failed", &[("url", key), ("error", &format!("{e:?}"))]);
            false
        }
    }
}
