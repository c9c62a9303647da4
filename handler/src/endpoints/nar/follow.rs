//! A NAR that this node is downloading right now: a client that asks for
//! it meanwhile gets its bytes as they arrive (from the download's spool,
//! in the host) rather than silence until the end. The host holds the last
//! bytes back until the download is checked and published, and breaks the
//! stream if it is refused, so this client too never receives a
//! complete-looking NAR that was not published.

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::metadata::NarRecord;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, ObjectKind};
use crate::bindings::ncps::edge::storage;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::bindings::wasi::io::streams::InputStream;
use crate::host::http::Response;
use crate::host::logging;

/// The download of `key` in progress on this node, if there is one.
pub fn find(key: &str) -> Option<InputStream> {
    match storage::follow(key) {
        Ok(stream) => stream,
        Err(e) => {
            logging::warn("cannot follow a download", &[("url", key), ("error", &format!("{e:?}"))]);
            None
        }
    }
}

/// Serve the download `stream` of `key` to this client.
pub fn serve(key: &str, record: Option<&NarRecord>, stream: InputStream, out: ResponseOutparam) {
    let size = record.and_then(|r| r.file_size);
    let mut head = Response::new(200).header("content-type", CONTENT_TYPE).header("x-cache", "MISS");
    if let Some(size) = size {
        head = head.header("content-length", size.to_string());
    }
    metrics::served(ObjectKind::Nar, CacheResult::Miss);
    logging::debug("following a download in progress", &[("url", key)]);
    let Some(mut body) = head.start(out, false) else { return };
    match body.splice_all(&stream) {
        Ok(n) if size.is_none_or(|s| s == n) => {
            drop(stream);
            body.finish();
        }
        // A short stream or one that broke: the client's transfer breaks too.
        _ => {
            drop(stream);
            body.abort();
        }
    }
}
