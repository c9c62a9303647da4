//! A NAR that is being downloaded right now (on this node, or at a peer
//! that announced it): a client that asks for it meanwhile gets its bytes
//! as they arrive rather than silence until the end. The host sends them
//! (`storage.hand-off-download`) at the client's own pace, from the
//! download's spool, so no client slows the download or holds an instance;
//! it holds the last bytes back until the download is checked and
//! published, and breaks the transfer if it is refused, so no client
//! receives a complete-looking NAR that was not published.

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::metadata::NarRecord;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, HandOffOutcome};
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::host::http::Response;
use crate::host::logging;

/// Whether `key` is being downloaded.
pub fn in_progress(key: &str) -> bool {
    match storage::follow(key) {
        Ok(stream) => stream.is_some(),
        Err(e) => {
            logging::warn("cannot follow a download", &[("url", key), ("error", &format!("{e:?}"))]);
            false
        }
    }
}

/// Serve the download of `key` in progress to this client; `out` back
/// when there is none.
pub fn serve(key: &str, record: Option<&NarRecord>, out: ResponseOutparam) -> Result<(), ResponseOutparam> {
    let size = record.and_then(|r| r.file_size);
    let mut head = Response::new(200).header("content-type", CONTENT_TYPE).header("x-cache", "MISS");
    if let Some(size) = size {
        head = head.header("content-length", size.to_string());
    }
    match storage::hand_off_download(key) {
        Ok(HandOffOutcome::Taken) => {
            metrics::served(ObjectKind::Nar, CacheResult::Miss);
            logging::debug("following a download in progress", &[("url", key)]);
            head.start(out, true);
            Ok(())
        }
        // A host that cannot: the download streamed through this instance.
        Ok(HandOffOutcome::Declined) => {
            let Some(stream) = storage::follow(key).ok().flatten() else { return Err(out) };
            metrics::served(ObjectKind::Nar, CacheResult::Miss);
            let Some(mut body) = head.start(out, false) else { return Ok(()) };
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
            Ok(())
        }
        Ok(HandOffOutcome::Absent) => Err(out),
        Err(e) => {
            logging::warn("cannot follow a download", &[("url", key), ("error", &format!("{e:?}"))]);
            Err(out)
        }
    }
}
