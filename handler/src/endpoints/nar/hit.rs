//! A NAR hit, with HEAD and single ranges: this instance decides status and
//! headers and hands the stored object to the host, which sends it after
//! the instance has ended (or, on a host that declines, it is spliced from
//! storage to the client inside the host: the bytes never enter the instance;
//! such a host opened the object of a whole GET when it was stat'ed).
//! A host that declines and keeps small objects itself (Spin's node-local
//! tier) is offered each NAR of at most [`KEEP_MAX`] bytes read whole, and
//! answers from what it keeps ([`serve_kept`]) the same bytes and headers.

use super::CONTENT_TYPE;
use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metadata;
use crate::bindings::ncps::edge::metrics::{self, ObjectKind};
use crate::bindings::ncps::edge::storage::{self, ByteRange, HandOffOutcome};
use crate::bindings::ncps::edge::types::Error as HostError;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::bindings::wasi::io::streams::{InputStream, StreamError};
use crate::host::edge::{self, Served};
use crate::host::http::{text, BodyWriter, Request, Response, CHUNK};
use crate::host::logging;
use crate::protocol::range::{self, Range};

/// NARs no bigger than this, streamed whole through the instance, are
/// offered to the node's tier (`edge-cache.keep-nar`).
pub const KEEP_MAX: u64 = 64 << 10;

/// What a hit is answered from.
enum Source {
    /// The stored object, of this size.
    Stored(u64),
    /// The whole object, as the node's tier keeps it, fresh or stale.
    Kept(Vec<u8>, Served),
}

/// Serve the stored object `key` of `size` bytes, then record the access:
/// after the answer, so a client never waits for that write (under Spin a
/// round trip to the database).
pub fn serve(settings: &Settings, req: &Request, key: &str, size: u64, out: ResponseOutparam, head: bool) {
    answer(settings, req, key, Source::Stored(size), out, head);
    metadata::record_access(key);
}

/// Serve `bytes`, the whole object `key` as the node's tier keeps it, as
/// [`serve`] serves the stored one (`x-cache` says whether it is stale).
pub fn serve_kept(
    settings: &Settings,
    req: &Request,
    key: &str,
    (bytes, served): (Vec<u8>, Served),
    out: ResponseOutparam,
    head: bool,
) {
    answer(settings, req, key, Source::Kept(bytes, served), out, head);
    metadata::record_access(key);
}

fn answer(settings: &Settings, req: &Request, key: &str, source: Source, out: ResponseOutparam, head: bool) {
    let (size, served) = match &source {
        Source::Stored(size) => (*size, Served::Hit),
        Source::Kept(bytes, served) => (bytes.len() as u64, *served),
    };
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
    if !head && matches!(source, Source::Stored(_)) {
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
        .header("x-cache", served.x_cache())
        .header_if("cache-control", edge::hit_control(settings));
    if let Range::Part { first, last } = range {
        resp = resp.header("content-range", format!("bytes {first}-{last}/{size}"));
    }
    metrics::served(ObjectKind::Nar, served.result());
    if let Source::Kept(bytes, _) = &source {
        let part = match range {
            Range::Part { first, last } => bytes.get(first as usize..=last as usize).unwrap_or_default(),
            _ => &bytes[..],
        };
        return resp.send_body(out, part, head);
    }
    let Some(stream) = stream else {
        // A HEAD, or a body the host sends: the head only.
        resp.start(out, true);
        return;
    };
    let Some(mut body) = resp.start(out, false) else {
        return;
    };
    if range == Range::Whole && size <= KEEP_MAX {
        return send_and_offer(key, size, stream, body);
    }
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

/// Read the whole small object `key` (`size` bytes) from `stream`, send it,
/// and offer it to the node's tier once the client has it all.
fn send_and_offer(key: &str, size: u64, stream: InputStream, mut body: BodyWriter) {
    let mut bytes = Vec::with_capacity(size as usize);
    let read_all = loop {
        match stream.blocking_read(CHUNK) {
            Ok(chunk) if bytes.len() + chunk.len() <= size as usize => bytes.extend_from_slice(&chunk),
            Ok(_) => break false,
            Err(StreamError::Closed) => break bytes.len() as u64 == size,
            Err(_) => break false,
        }
    };
    drop(stream);
    if !read_all {
        logging::warn("stored NAR not the size expected", &[("url", key), ("bytes", &bytes.len().to_string())]);
        return body.abort();
    }
    if body.write_all(&bytes).is_err() {
        return body.abort();
    }
    if body.finish() {
        edge::keep_nar(key, &bytes);
    }
}

fn unavailable(key: &str, e: HostError, out: ResponseOutparam) {
    logging::warn("storage read failed", &[("url", key), ("error", &format!("{e:?}"))]);
    text(out, 503, "storage unavailable\n", false)
}
