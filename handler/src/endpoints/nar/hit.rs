//! A NAR hit, with HEAD and single ranges: this instance decides status and
//! headers and hands the stored object to the host, which sends it after
//! the instance has ended (or, on a host that declines, it is spliced from
//! storage to the client inside the host: the bytes never enter the instance).

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::metrics::{self, CacheResult, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, ByteRange, HandOffOutcome};
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::host::edge;
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::range::{self, Range};

/// Serve the stored object `key` of `size` bytes, then record the access:
/// after the answer, so a client never waits for that write (under Spin a
/// round trip to the database).
pub fn serve(settings: &Settings, req: &Request, key: &str, size: u64, out: ResponseOutparam, head: bool) {
    answer(settings, req, key, size, out, head);
    metadata::record_access(key);
}

fn answer(settings: &Settings, req: &Request, key: &str, size: u64, out: ResponseOutparam, head: bool) {
    let range = range::parse(req.header("range"), size);
    let (status, length) = match range {
        Range::Whole => (200, size),
        Range::Part { .. } => (206, range.length(size)),
        Range::Unsatisfiable => {
            return Response::new(416).header("content-range", format!("bytes */{size}")).send(out, b"", head);
        }
    };
    let byte_range = match range {
        Range::Part { first, .. } => Some(ByteRange { offset: first, length: Some(length) }),
        _ => None,
    };
    // The host sends the bytes itself when it can; else they are streamed
    // through this instance (still inside the host: spliced, never copied in).
    let mut stream = None;
    if !head {
        match storage::hand_off(key, byte_range) {
            Ok(HandOffOutcome::Taken) => {}
            Ok(HandOffOutcome::Absent) => return text(out, 404, "not found\n", false),
            Ok(HandOffOutcome::Declined) => match storage::read(key, byte_range) {
                Ok(Some(s)) => stream = Some(s),
                Ok(None) => return text(out, 404, "not found\n", false),
                Err(e) => return unavailable(key, e, out),
            },
            Err(e) => return unavailable(key, e, out),
        }
    }
    let mut resp = Response::new(status)
        .header("content-type", CONTENT_TYPE)
        .header("content-length", length.to_string())
        .header("accept-ranges", "bytes")
        .header("x-cache", "HIT")
        .header_if("cache-control", edge::hit_control(settings));
    if let Range::Part { first, last } = range {
        resp = resp.header("content-range", format!("bytes {first}-{last}/{size}"));
    }
    metrics::served(ObjectKind::Nar, CacheResult::Hit);
    let Some(stream) = stream else {
        // A HEAD, or a body the host sends: the head only.
        resp.start(out, true);
        return;
    };
    let Some(mut body) = resp.start(out, false) else {
        return;
    };
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

fn unavailable(key: &str, e: HostError, out: ResponseOutparam) {
    logging::warn("storage read failed", &[("url", key), ("error", &format!("{e:?}"))]);
    text(out, 503, "storage unavailable\n", false)
}
