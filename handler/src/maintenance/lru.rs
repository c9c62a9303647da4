//! The LRU pass: under the `lru` lock, evict least-recently-used NARs (with
//! their narinfos) until the store is under `--cache-max-size`. Each NAR is
//! evicted under its publish lock taken exclusively (skipped while anybody
//! publishes it); a batch's storage objects are deleted first, then its
//! records, so a failure at any step leaves at worst records without
//! objects, which requests fetch again and the reconcile pass unmarks.
//! Storage deletes never break a read in progress (the storage contract),
//! so a hit needs no lock.

use crate::bindings::exports::ncps::edge::maintenance::LruReport;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::locks::{self, Mode};
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::metrics::{self, LruOutcome};
use crate::bindings::ncps::edge::storage;
use crate::bindings::ncps::edge::types::Error;
use crate::cache::nars::lock_for_eviction;
use crate::host::edge;
use crate::host::logging;

/// NARs looked at per metadata round trip.
const BATCH: u32 = 64;

/// Run one pass and count it in the node's metrics.
pub fn run(settings: &Settings) -> Result<LruReport, Error> {
    let result = run_pass(settings);
    match &result {
        Ok(r) => metrics::lru_pass(if r.ran { LruOutcome::Ran } else { LruOutcome::Skipped }, r.evicted, r.bytes_freed),
        Err(_) => metrics::lru_pass(LruOutcome::Error, 0, 0),
    }
    result
}

fn run_pass(settings: &Settings) -> Result<LruReport, Error> {
    let skipped = LruReport { ran: false, total_before: 0, total_after: 0, evicted: 0, bytes_freed: 0 };
    let Some(max) = settings.max_size else {
        return Ok(skipped);
    };
    let Some(lease) = locks::try_acquire("lru", Mode::Exclusive, settings.lru_lock_ttl_ms)? else {
        logging::info("another instance is running LRU", &[("lock_type", "lru")]);
        return Ok(skipped);
    };
    let started = crate::host::time::Instant::now();
    let before = metadata::total_size()?;
    let mut report = LruReport { ran: true, total_before: before, total_after: before, evicted: 0, bytes_freed: 0 };
    // Candidates being published right now are skipped; ask for more of
    // them than the batch so a busy NAR does not end the pass early.
    let mut busy = 0;
    while report.total_after > max {
        let candidates = metadata::lru_candidates(BATCH + busy)?;
        if candidates.len() <= busy as usize {
            break;
        }
        // Objects go first: if their deletion fails nothing is forgotten in
        // metadata; if forgetting fails after it, the records are phantoms
        // that a request fetches again and the reconcile pass unmarks.
        let (mut keys, mut evicting) = (Vec::new(), Vec::new());
        let mut expected = report.total_after;
        for nar in candidates {
            if expected <= max {
                break;
            }
            let Some(lock) = lock_for_eviction(&nar.key)? else {
                busy += 1;
                logging::debug("NAR is being published; not evicting it now", &[("url", &nar.key)]);
                continue;
            };
            expected = expected.saturating_sub(nar.stored_size.unwrap_or(0));
            evicting.push(lock);
            keys.push(nar.key);
        }
        if keys.is_empty() {
            break;
        }
        storage::delete_many(&keys)?;
        let mut purged: Vec<String> = keys.iter().map(|k| edge::object_path(k)).collect();
        let forgotten = evict_all(&keys, &mut report, &mut purged);
        edge::purge(&purged);
        forgotten?;
        drop(evicting);
        if lease.extend(settings.lru_lock_ttl_ms).is_err() {
            logging::warn("LRU lock lost; stopping the pass", &[("lock_type", "lru")]);
            break;
        }
    }
    let ms = started.elapsed().as_millis().to_string();
    logging::info(
        "LRU pass finished",
        &[("bytes", &report.bytes_freed.to_string()), ("duration_ms", &ms), ("evicted", &report.evicted.to_string())],
    );
    Ok(report)
}

/// Forget the records of `keys` (their objects are gone), counting what was
/// freed and noting the narinfo paths that stop being true in `purged`.
fn evict_all(keys: &[String], report: &mut LruReport, purged: &mut Vec<String>) -> Result<(), Error> {
    for key in keys {
        let eviction = metadata::evict(key)?;
        report.total_after = report.total_after.saturating_sub(eviction.freed);
        report.bytes_freed += eviction.freed;
        report.evicted += 1;
        purged.extend(eviction.narinfos.iter().map(|h| edge::narinfo_path(h)));
    }
    Ok(())
}
