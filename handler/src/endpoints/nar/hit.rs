//! A NAR hit: streamed from storage to the client inside the host (the
//! bytes never enter this instance), with HEAD and single ranges.

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, ByteRange};
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::range::{self, Range};

/// Serve the stored object `key` of `size` bytes.
pub fn serve(req: &Request, key: &str, size: u64, out: ResponseOutparam, head: bool) {
    metadata::record_access(key);
    let range = range::parse(req.header("range"), size);
    let (status, length) = match range {
        Range::Whole => (200, size),
        Range::Part { .. } => (206, range.length(size)),
        Range::Unsatisfiable => {
            return Response::new(416).header("content-range", format!("bytes */{size}")).send(out, b"", head);
        }
    };
    let stream = if head {
        None
    } else {
        let byte_range = match range {
            Range::Part { first, .. } => Some(ByteRange { offset: first, length: Some(length) }),
            _ => None,
        };
        match storage::read(key, byte_range) {
            Ok(Some(s)) => Some(s),
            Ok(None) => return text(out, 404, "not found\n", false),
            Err(e) => {
                logging::warn("storage read failed", &[("url", key), ("error", &format!("{e:?}"))]);
                return text(out, 503, "storage unavailable\n", false);
            }
        }
    };
    let mut resp = Response::new(status)
        .header("content-type", CONTENT_TYPE)
        .header("content-length", length.to_string())
        .header("accept-ranges", "bytes")
        .header("x-cache", "HIT");
    if let Range::Part { first, last } = range {
        resp = resp.header("content-range", format!("bytes {first}-{last}/{size}"));
    }
    metrics::served(ObjectKind::Nar, CacheResult::Hit);
    let Some(mut body) = resp.start(out, head) else {
        return;
    };
    let Some(stream) = stream else { return };
    match body.splice_all(&stream) {
        Ok(n) if n == length => {
            drop(stream);
            body.finish();
        }
        Ok(n) => {
            logging::warn("stored NAR shorter than expected", &[("url", key), ("bytes", &n.to_string())]);
            drop(stream);
            body.abort();
        }
        Err(_) => {
            drop(stream);
            body.abort();
        }
    }
}
