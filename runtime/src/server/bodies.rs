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

/// A range of a file as chunks, each read (with a positioned read) only
/// when the client has taken the one before: a client that stops reading
/// holds no buffer but the chunk it was being sent. A chunk in the page
/// cache is read at once; one that is not is read on the blocking pool.
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
            let chunk = match read_cached(&file, pos, want)? {
                Some(chunk) => chunk,
                None => tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt as _;
                    let mut buf = vec![0u8; want];
                    file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
                })
                .await
                .map_err(std::io::Error::other)??,
            };
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, next)))
        }
    })
}

/// Up to `want` bytes of `file` at `pos` that are in the page cache, read
/// without waiting for the disk (`preadv2` with `RWF_NOWAIT`); none when the
/// first of them is not there (or the kernel cannot tell).
fn read_cached(file: &std::fs::File, pos: u64, want: usize) -> std::io::Result<Option<Bytes>> {
    use std::os::fd::AsRawFd as _;
    let mut buf: Vec<u8> = Vec::with_capacity(want);
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: want };
    let offset = libc::off_t::try_from(pos).map_err(std::io::Error::other)?;
    // SAFETY: `iov` describes `want` bytes of `buf`'s allocation, which
    // outlives the call; the kernel writes at most that many bytes there.
    let read = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    match usize::try_from(read) {
        Ok(0) => Err(std::io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => {
            // SAFETY: the kernel initialised the first `n` bytes.
            unsafe { buf.set_len(n) };
            Ok(Some(Bytes::from(buf)))
        }
        Err(_) => {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
                _ => Err(e),
            }
        }
    }
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
