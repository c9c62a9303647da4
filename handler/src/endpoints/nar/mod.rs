//! `/nar/<hash>.nar<ext>`: hits streamed from storage inside the host
//! ([`hit`]), misses downloaded once under the download lock ([`miss`]),
//! uploads ([`upload`]) and deletes.

mod follow;
mod hit;
mod miss;
pub mod upload;

use std::time::Duration;

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata::{self, NarRecord};
use crate::bindings::ncps::edge::storage;
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::download_lock::{self, Wait};
use crate::cache::nars::{lock_for_eviction, stat, stat_or_failed};
use crate::endpoints::written::Written;
use crate::host::edge::{self, Served};
use crate::host::http::{text, Request};
use crate::host::logging;
use crate::protocol::hash::Sha256;
use crate::protocol::route::NarPath;

/// Content type of NAR files.
const CONTENT_TYPE: &str = "application/x-nix-nar";

/// `GET|HEAD /nar/<hash>.nar<ext>`.
pub fn get(settings: &Settings, req: &Request, path: &NarPath, out: ResponseOutparam, head: bool) {
    let key = path.key();
    if let Some(bytes) = edge::kept_nar(&key) {
        return hit::serve_kept(settings, req, &key, (bytes, Served::Hit), out, head);
    }
    // Before a whole GET's read: where the bytes come through this
    // instance, the host opens the object as it stats it (one request).
    let whole = req.header("range").is_none();
    match stat_or_failed(&key, whole && !head) {
        Ok(Some(size)) => return hit::serve(settings, req, &key, size, out, head),
        Ok(None) => {}
        // Storage failed: what the node's tier kept, marked stale.
        Err(_) => {
            if let Some(bytes) = edge::stale_nar(&key) {
                return hit::serve_kept(settings, req, &key, (bytes, Served::Stale), out, head);
            }
        }
    }
    let record = named_record(path);
    if head {
        return miss::head(settings, path, record.as_ref(), out);
    }
    // A whole-NAR request follows a download in progress (here or at a peer).
    let out = match whole {
        true => match follow::serve(&key, record.as_ref(), out) {
            Ok(()) => return,
            Err(out) => out,
        },
        false => out,
    };
    // Wait for a download in progress elsewhere rather than answering 5xx;
    // a download may hold the lock for up to its TTL. Meanwhile, a download
    // that starts on this node is followed.
    let patience = Duration::from_millis(settings.download_lock_ttl_ms) + Duration::from_secs(5);
    let ready = || match stat(&key) {
        Some(size) => Some(Ready::Stored(size)),
        None => (whole && follow::in_progress(&key)).then_some(Ready::Following),
    };
    match download_lock::acquire_or_wait("nar", &path.hash, settings, patience, ready) {
        Wait::Done(Ready::Stored(size)) => hit::serve(settings, req, &key, size, out, head),
        Wait::Done(Ready::Following) => match follow::serve(&key, record.as_ref(), out) {
            Ok(()) => {}
            // It ended between the two looks: stored, or given up.
            Err(out) => match stat(&key) {
                Some(size) => hit::serve(settings, req, &key, size, out, head),
                None => text(out, 503, "the download was abandoned; retry\n", false),
            },
        },
        Wait::Acquired(lease) => miss::download(settings, path, record, Some(lease), out),
        Wait::GaveUp => {
            logging::warn("download lock still held after its TTL; downloading without it", &[("hash", &path.hash)]);
            miss::download(settings, path, record, None, out)
        }
        // The lock service is down and degraded mode is off: fail fast
        // rather than download without the lock.
        Wait::Unavailable => text(out, 503, "lock service unavailable\n", false),
    }
}

/// What a client waiting for a NAR can have.
enum Ready {
    /// It is stored, this size.
    Stored(u64),
    /// It is being downloaded.
    Following,
}

/// The record of `path`'s NAR, when it agrees with the name: a record that
/// gives the file another hash (written before names were checked) is not
/// believed, nor is where it says to fetch from.
fn named_record(path: &NarPath) -> Option<NarRecord> {
    let record = match metadata::get_nar(&path.key()) {
        Ok(r) => r?,
        Err(e) => {
            logging::warn("metadata lookup failed", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            return None;
        }
    };
    let agrees = match record.file_hash.as_deref() {
        Some(h) => Sha256::parse(h).ok().is_some_and(|h| Some(h) == path.named_sha256()),
        None => true,
    };
    if !agrees {
        logging::warn("NAR record names another file hash; ignored", &[("url", &record.key)]);
    }
    agrees.then_some(record)
}

/// `DELETE /nar/<hash>.nar<ext>` (with `--cache-allow-delete-verb`): the
/// object, its record and every narinfo that points at it go, as in an
/// eviction (object first, under its publish lock taken exclusively), so
/// no narinfo is left served whose NAR is gone.
pub fn delete(path: &NarPath) -> Written {
    let key = path.key();
    let failed = |what: &str, e: HostError| {
        logging::warn("failed to delete NAR", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
        Written::failed(format!("{what} unavailable\n"), key.clone())
    };
    let _evicting = match lock_for_eviction(&key) {
        Ok(Some(lease)) => lease,
        Ok(None) => return Written::failed("the NAR is being published; retry\n", key),
        Err(e) => return failed("lock service", e),
    };
    let existed = match storage::delete(&key) {
        Ok(existed) => existed,
        Err(e) => return failed("storage", e),
    };
    let narinfos = match metadata::evict(&key) {
        Ok(eviction) => eviction.narinfos,
        Err(e) => return failed("metadata", e),
    };
    edge::purge(&narinfos.iter().map(|h| edge::narinfo_path(h)).collect::<Vec<_>>());
    if existed || !narinfos.is_empty() {
        Written::accepted(key)
    } else {
        Written::rejected(404, "not found\n", key)
    }
}
