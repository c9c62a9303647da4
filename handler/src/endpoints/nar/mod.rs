//! `/nar/<hash>.nar<ext>`: hits streamed from storage inside the host
//! ([`hit`]), misses downloaded once under the download lock ([`miss`]),
//! uploads ([`upload`]) and deletes.

mod hit;
mod miss;
pub mod upload;

use std::time::Duration;

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::storage;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::cache::download_lock::{self, Wait};
use crate::cache::nars::stat;
use crate::endpoints::writes::Written;
use crate::host::http::{text, Request};
use crate::host::logging;
use crate::protocol::route::NarPath;

/// Content type of NAR files.
const CONTENT_TYPE: &str = "application/x-nix-nar";

/// `GET|HEAD /nar/<hash>.nar<ext>`.
pub fn get(settings: &Settings, req: &Request, path: &NarPath, out: ResponseOutparam, head: bool) {
    let key = path.key();
    if let Some(size) = stat(&key) {
        return hit::serve(req, &key, size, out, head);
    }
    if head {
        return text(out, 404, "not found\n", true);
    }
    let record = match metadata::get_nar(&key) {
        Ok(r) => r,
        Err(e) => {
            logging::warn("metadata lookup failed", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            None
        }
    };
    // Wait for a download in progress elsewhere rather than answering 5xx;
    // a download may hold the lock for up to its TTL.
    let patience = Duration::from_millis(settings.download_lock_ttl_ms) + Duration::from_secs(5);
    match download_lock::acquire_or_wait("nar", &path.hash, settings, patience, || stat(&key)) {
        Wait::Done(size) => hit::serve(req, &key, size, out, head),
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

/// `DELETE /nar/<hash>.nar<ext>` (with `--cache-allow-delete-verb`).
pub fn delete(path: &NarPath) -> Written {
    let key = path.key();
    let deleted = storage::delete(&key);
    let _ = metadata::delete_nar(&key);
    match deleted {
        Ok(true) => Written::accepted(key),
        Ok(false) => Written::rejected(404, "not found\n", key),
        Err(e) => {
            logging::warn("failed to delete NAR", &[("hash", &path.hash), ("error", &format!("{e:?}"))]);
            Written::failed("storage unavailable\n", key)
        }
    }
}
