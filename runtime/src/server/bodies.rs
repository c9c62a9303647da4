//! Response bodies the host sends: handed-off objects (a stream, or a
//! file range read a chunk at a time as the client takes it) and short
//! answers of its own.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ncps_edge_host_services::storage::{FileRange, HandedOff};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Bytes read from a handed-off object per frame. A client that stops
/// reading holds about two of them (the frame hyper could not send, the
/// reader's buffer), so this bounds a stalled connection's memory; reads
/// from the page cache are fast at this size too.
const HAND_OFF_CHUNK: usize = 64 << 10;

/// A handed-off object as a response body, read a chunk at a time as the
/// client takes them.
pub(super) fn stream_body(body: HandedOff) -> HyperOutgoingBody {
    use futures_util::TryStreamExt as _;
    let failed =
        |e: std::io::Error| wasmtime_wasi_http::Error::InternalError(Some(format!("reading a stored object: {e}")));
    match body {
        HandedOff::Stream(body) => {
            let frames = tokio_util::io::ReaderStream::with_capacity(body, HAND_OFF_CHUNK)
                .map_ok(hyper::body::Frame::data)
                .map_err(failed);
            http_body_util::StreamBody::new(frames).boxed_unsync()
        }
        HandedOff::File(range) => {
            http_body_util::StreamBody::new(file_chunks(range).map_ok(hyper::body::Frame::data).map_err(failed))
                .boxed_unsync()
        }
    }
}

/// A range of a file as chunks, each read (with a positioned read, on the
/// blocking pool) only when the client has taken the one before: a client
/// that stops reading holds no buffer but the chunk it was being sent.
fn file_chunks(range: FileRange) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    let file = Arc::new(range.file);
    let end = range.offset + range.len;
    futures_util::stream::try_unfold(range.offset, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(HAND_OFF_CHUNK as u64) as usize;
            let chunk = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt as _;
                let mut buf = vec![0u8; want];
                file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((chunk, pos + want as u64)))
        }
    })
}

pub(super) fn full_body(bytes: Bytes) -> HyperOutgoingBody {
    Full::new(bytes).map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }).boxed_unsync()
}

/// A plain-text response produced by the host itself.
pub fn text_response(status: u16, body: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(full_body(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
