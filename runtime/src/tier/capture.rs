//! Keeping an answer: the guest's response body passes on to the client
//! while a copy is collected, and the copy is kept only when the body ended
//! cleanly with all its bytes. Copies are bounded: one per path at a time,
//! at most a quarter of the tier's bytes at once.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
#[cfg(test)]
use hyper::header::HeaderValue;
use hyper::header::CONTENT_LENGTH;
use hyper::Response;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// Answers being copied into the tier: one copy per path at a time, and at
/// most a quarter of the tier's bytes at once, so many clients downloading
/// the same (or many) NARs do not each hold a copy in memory.
pub struct Copying {
    paths: Mutex<std::collections::HashSet<String>>,
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Copying {
    /// Room for copies of at most `limit` bytes at once.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { paths: Mutex::default(), bytes: Default::default(), limit })
    }

    /// Room for a copy of `length` bytes of `path`, if there is some.
    pub fn reserve(self: &Arc<Self>, path: &str, length: usize) -> Option<Reservation> {
        use std::sync::atomic::Ordering;
        let mut paths = self.paths.lock().unwrap_or_else(|p| p.into_inner());
        if paths.contains(path) || self.bytes.load(Ordering::Acquire) + length > self.limit {
            return None;
        }
        paths.insert(path.to_owned());
        self.bytes.fetch_add(length, Ordering::AcqRel);
        Some(Reservation { copying: self.clone(), path: path.to_owned(), length })
    }
}

/// A copy's room, given back when the copy ends (kept or not).
pub struct Reservation {
    copying: Arc<Copying>,
    path: String,
    length: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.copying.paths.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.path);
        self.copying.bytes.fetch_sub(self.length, std::sync::atomic::Ordering::AcqRel);
    }
}

/// `max-age` of a response's `cache-control` (none with `no-store`).
pub fn max_age<B>(resp: &Response<B>) -> Option<Duration> {
    let value = resp.headers().get(hyper::header::CACHE_CONTROL)?.to_str().ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache") {
            return None;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            age = seconds.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    age
}

/// `content-length` of a response, when it has one.
pub fn content_length<B>(resp: &Response<B>) -> Option<usize> {
    resp.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The `URL:` of a narinfo body.
pub fn narinfo_url(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|l| l.strip_prefix("URL: ")).map(|u| u.trim().to_owned())
}

/// What receives a whole copy.
pub type Done = Box<dyn FnOnce(Bytes) + Send>;

/// A body passed on to the client while a copy is collected; the copy is
/// handed to `done` only when the body ended cleanly with `length` bytes.
pub struct Capture {
    inner: HyperOutgoingBody,
    buf: BytesMut,
    length: usize,
    done: Option<Done>,
    _reservation: Reservation,
}

impl Capture {
    /// Pass `inner` on while collecting a copy of its `length` bytes, in
    /// `reservation`'s room; `done` gets the copy.
    pub fn new(inner: HyperOutgoingBody, length: usize, reservation: Reservation, done: Done) -> Self {
        Self { inner, buf: BytesMut::with_capacity(length), length, done: Some(done), _reservation: reservation }
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(std::mem::take(&mut self.buf).freeze());
        }
    }
}

impl Body for Capture {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if self.buf.len() + data.len() > self.length {
                        self.done = None;
                    } else if self.done.is_some() {
                        self.buf.extend_from_slice(data);
                    }
                }
                // The client has the whole body once `length` bytes went out
                // (hyper may not ask for the end after them).
                if self.buf.len() == self.length {
                    self.finish();
                }
            }
            Poll::Ready(None) if self.buf.len() == self.length => self.finish(),
            Poll::Ready(_) => self.done = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_one_per_path_and_bounded_in_bytes() {
        let copying = Arc::new(Copying { paths: Mutex::default(), bytes: Default::default(), limit: 100 });
        let a = copying.reserve("/nar/a", 60).expect("room for a");
        assert!(copying.reserve("/nar/a", 10).is_none(), "a second copy of the same path");
        assert!(copying.reserve("/nar/b", 50).is_none(), "past the limit");
        let b = copying.reserve("/nar/b", 40).expect("room for b");
        drop(a);
        assert!(copying.reserve("/nar/a", 60).is_some(), "room given back");
        drop(b);
        assert_eq!(copying.bytes.load(std::sync::atomic::Ordering::Acquire), 0);
    }

    #[test]
    fn max_age_is_read_from_cache_control() {
        let with = |v: &str| {
            let mut r = Response::new(());
            r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            max_age(&r)
        };
        assert_eq!(with("public, max-age=60"), Some(Duration::from_secs(60)));
        assert_eq!(with("private, max-age=5"), Some(Duration::from_secs(5)));
        assert_eq!(with("no-store, max-age=5"), None);
        assert_eq!(with("public"), None);
        assert_eq!(max_age(&Response::new(())), None);
    }
}
