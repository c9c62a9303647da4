//! `/nar/<hash>.nar<ext>`: hits streamed from storage inside the host
//! ([`hit`]), misses downloaded once under the download lock ([`miss`]),
//! uploads ([`upload`]) and deletes.

mod follow;
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
        return hit::serve(settings, req, &key, size, out, head);
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
    // A whole-NAR request follows a download in progress on this node.
    let whole = req.header("range").is_none();
    if let Some(stream) = follow::find(&key).filter(|_| whole) {
        return follow::serve(&key, record.as_ref(), stream, out);
    }
    // Wait for a download in progress elsewhere rather than answering 5xx;
    // a download may hold the lock for up to its TTL. Meanwhile, a download
    // that starts on this node is followed.
    let patience = Duration::from_millis(settings.download_lock_ttl_ms) + Duration::from_secs(5);
    let ready = || match stat(&key) {
        Some(size) => Some(Ready::Stored(size)),
        None => follow::find(&key).filter(|_| whole).map(Ready::Following),
    };
    match download_lock::acquire_or_wait("nar", &path.hash, settings, patience, ready) {
        Wait::Done(Ready::Stored(size)) => hit::serve(settings, req, &key, size, out, head),
        Wait::Done(Ready::Following(stream)) => follow::serve(&key, record.as_ref(), stream, out),
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
    /// This node is downloading it.
    Following(crate::bindings::wasi::io::streams::InputStream),
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
