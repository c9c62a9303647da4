//! The front of the edge tier: answers from memory what the guest allowed
//! to be kept, before any instance exists, exactly as the guest would
//! (status, headers, `HEAD`, `Range`, the read token), and keeps what the
//! guest allows from its responses. A request for a narinfo the tier does
//! not have waits for one already on its way through the guest instead of
//! asking it again (one upstream request per absent narinfo, not one per
//! client).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};
use ncps_edge_host_services::edge::memory::{Kept, Kind};
use ncps_edge_host_services::edge::EdgeCache;
use ncps_edge_host_services::Services;
use ncps_edge_protocol::auth::may_read;
use ncps_edge_protocol::range::{self, Range};
use ncps_edge_protocol::timing::narinfo_patience;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// What a request asks of the tier, noted before the guest gets it.
pub struct Asked {
    /// The tier's key: the path without query and `/upload` prefix.
    key: String,
    kind: Kind,
    /// A GET without `Range`, whose answer may be kept.
    keepable: bool,
    /// The tier's generation when the request came (see [`Kept`]).
    generation: u64,
}

/// The tier's key and kind of a request path, when the tier deals with it.
fn key_of(path_and_query: &str) -> Option<(&str, Kind)> {
    let path = path_and_query.split(['?', '#']).next().unwrap_or_default();
    let path = path.strip_prefix("/upload").filter(|p| p.starts_with('/')).unwrap_or(path);
    let kind = if path.starts_with("/nar/") {
        Kind::Nar
    } else if path.ends_with(".narinfo") && !path[1..].contains('/') {
        Kind::Narinfo
    } else if matches!(path, "/" | "/nix-cache-info" | "/pubkey") {
        Kind::Info
    } else {
        return None;
    };
    Some((path, kind))
}

/// A request that waits for the same answer on its way through the guest.
pub enum Flight {
    /// Nobody is asking: this request leads (and others wait for it).
    Lead(Lead),
    /// Another request leads: wait for it to end.
    Follow(watch::Receiver<()>),
}

/// Held by the request that leads a flight; others wake when it drops.
pub struct Lead {
    key: String,
    front: Arc<Front>,
    _done: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        self.front.inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.key);
    }
}

/// The edge tier's front of a node.
pub struct Front {
    edge: Arc<EdgeCache>,
    services: Arc<Services>,
    narinfo_hits: Counter,
    nar_hits: Counter,
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// Longest a request waits for one ahead of it.
    patience: Duration,
    /// Answers being copied into the tier right now.
    copying: Arc<Copying>,
}

/// Answers being copied into the tier: one copy per path at a time, and at
/// most a quarter of the tier's bytes at once, so many clients downloading
/// the same (or many) NARs do not each hold a copy in memory.
struct Copying {
    paths: Mutex<std::collections::HashSet<String>>,
    bytes: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Copying {
    /// Room for a copy of `length` bytes of `path`, if there is some.
    fn reserve(self: &Arc<Self>, path: &str, length: usize) -> Option<Reservation> {
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
struct Reservation {
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

impl Front {
    /// The front of `services`' tier, when it has a memory tier.
    pub fn new(services: &Arc<Services>) -> Option<Arc<Self>> {
        let memory = services.edge.memory()?;
        let settings = services.config.settings();
        Some(Arc::new(Self {
            edge: services.edge.clone(),
            services: services.clone(),
            narinfo_hits: services.metrics.memory_hits(true),
            nar_hits: services.metrics.memory_hits(false),
            inflight: Mutex::new(HashMap::new()),
            patience: narinfo_patience(
                Duration::from_millis(settings.upstream_connect_timeout_ms),
                Duration::from_millis(settings.upstream_timeout_ms),
            ) + Duration::from_secs(1),
            copying: Arc::new(Copying {
                paths: Mutex::default(),
                bytes: Default::default(),
                limit: memory.max_entry().saturating_mul(4),
            }),
        }))
    }

    /// What `req` asks of the tier, when it deals with it.
    pub fn asked<B>(&self, req: &Request<B>) -> Option<Asked> {
        let get = req.method() == Method::GET;
        if !get && req.method() != Method::HEAD {
            return None;
        }
        let (key, kind) = key_of(req.uri().path_and_query().map_or("/", |p| p.as_str()))?;
        Some(Asked {
            key: key.to_owned(),
            kind,
            keepable: get && !req.headers().contains_key(hyper::header::RANGE),
            generation: self.edge.memory().map_or(0, |m| m.generation()),
        })
    }

    fn may_read<B>(&self, req: &Request<B>) -> bool {
        let settings = self.services.config.settings();
        let authorization = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        may_read(
            authorization,
            settings.get_token.as_deref(),
            [settings.put_token.as_deref(), settings.delete_token.as_deref()],
        )
    }

    /// The kept answer to `req`, as the guest would give it; `None` when
    /// nothing is kept (or the request must see the guest: it lacks the
    /// read token, and the guest answers that).
    pub fn answer<B>(&self, asked: &Asked, req: &Request<B>) -> Option<Response<HyperOutgoingBody>> {
        let kept = self.edge.serving()?.get(&asked.key)?;
        if !self.may_read(req) {
            return None;
        }
        let head = req.method() == Method::HEAD;
        let size = kept.body.len() as u64;
        let mut part = None;
        if (kept.kind, kept.status) == (Kind::Nar, 200) {
            let header = req.headers().get(hyper::header::RANGE).and_then(|v| v.to_str().ok());
            match range::parse(header, size) {
                Range::Whole => {}
                Range::Part { first, last } => part = Some((first, last)),
                Range::Unsatisfiable => {
                    self.record_access(&kept);
                    return Some(unsatisfiable(size));
                }
            }
        }
        let (status, body) = match part {
            Some((first, last)) => (206, kept.body.slice(first as usize..=last as usize)),
            None => (kept.status, kept.body.clone()),
        };
        let length = body.len() as u64;
        let mut resp = Response::new(full(if head { Bytes::new() } else { body }));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        *resp.headers_mut() = kept.headers.clone();
        if let Some((first, last)) = part {
            resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
                resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
            }
        }
        self.record_access(&kept);
        match (kept.kind, status) {
            (Kind::Narinfo, 200) => self.narinfo_hits.inc(),
            (Kind::Nar, 200 | 206) => self.nar_hits.inc(),
            _ => 0,
        };
        Some(resp)
    }

    /// A hit records its NAR's access for the LRU, as the guest does.
    fn record_access(&self, kept: &Kept) {
        if let Some(key) = &kept.access_key {
            if kept.status == 200 {
                self.services.metadata.record_access(key);
            }
        }
    }

    /// Join the flight of `asked` (narinfos and cache info only; a GET).
    pub fn flight(self: &Arc<Self>, asked: &Asked) -> Option<Flight> {
        if !asked.keepable || asked.kind == Kind::Nar {
            return None;
        }
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = inflight.get(&asked.key) {
            return Some(Flight::Follow(rx.clone()));
        }
        let (tx, rx) = watch::channel(());
        inflight.insert(asked.key.clone(), rx);
        Some(Flight::Lead(Lead { key: asked.key.clone(), front: self.clone(), _done: tx }))
    }

    /// Wait for the request ahead (at most the front's patience).
    pub async fn follow(&self, mut rx: watch::Receiver<()>) {
        let _ = tokio::time::timeout(self.patience, rx.changed()).await;
    }

    /// `resp`, the guest's answer to `asked`, kept on its way to the client
    /// when the guest allows it; `lead` ends when it is kept (or not).
    pub fn keep(
        &self,
        asked: Asked,
        resp: Response<HyperOutgoingBody>,
        lead: Option<Lead>,
    ) -> Response<HyperOutgoingBody> {
        let Some(memory) = self.edge.memory() else { return resp };
        let status = resp.status().as_u16();
        let kept_status = status == 200 || (status == 404 && asked.kind == Kind::Narinfo);
        let (Some(max_age), Some(length)) = (max_age(&resp), content_length(&resp)) else { return resp };
        if !asked.keepable || !kept_status || max_age.is_zero() || length > memory.max_entry() {
            return resp;
        }
        let Some(reservation) = self.copying.reserve(&asked.key, length) else { return resp };
        let (parts, body) = resp.into_parts();
        let mut headers = parts.headers.clone();
        if headers.contains_key("x-cache") {
            headers.insert("x-cache", HeaderValue::from_static("HIT"));
        }
        let capture = Capture {
            inner: body,
            buf: BytesMut::with_capacity(length),
            length,
            _reservation: reservation,
            done: Some(Box::new({
                let edge = self.edge.clone();
                move |body: Bytes| {
                    let access_key = match (asked.kind, status) {
                        (Kind::Nar, _) => Some(asked.key[1..].to_owned()),
                        (Kind::Narinfo, 200) => narinfo_url(&body),
                        _ => None,
                    };
                    let kept =
                        Kept { status, headers, body, expires: Instant::now() + max_age, kind: asked.kind, access_key };
                    if let Some(memory) = edge.memory() {
                        memory.insert(asked.key, kept, asked.generation);
                    }
                    drop(lead);
                }
            })),
        };
        Response::from_parts(parts, capture.boxed_unsync())
    }
}

fn full(bytes: Bytes) -> HyperOutgoingBody {
    Full::new(bytes)
        .map_err(|never: std::convert::Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync()
}

/// The guest's 416 for an object of `size` bytes.
fn unsatisfiable(size: u64) -> Response<HyperOutgoingBody> {
    let mut resp = Response::new(full(Bytes::new()));
    *resp.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
    }
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(0u64));
    resp
}

/// `max-age` of a response's `cache-control` (none with `no-store`).
fn max_age<B>(resp: &Response<B>) -> Option<Duration> {
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

fn content_length<B>(resp: &Response<B>) -> Option<usize> {
    resp.headers().get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The `URL:` of a narinfo body.
fn narinfo_url(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.lines().find_map(|l| l.strip_prefix("URL: ")).map(|u| u.trim().to_owned())
}

type Done = Box<dyn FnOnce(Bytes) + Send>;

/// A body passed on to the client while a copy is collected; the copy is
/// handed to `done` only when the body ended cleanly with `length` bytes.
struct Capture {
    inner: HyperOutgoingBody,
    buf: BytesMut,
    length: usize,
    done: Option<Done>,
    _reservation: Reservation,
}

impl Capture {
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
    fn keys_are_the_paths_the_guest_routes() {
        assert_eq!(key_of("/nix-cache-info"), Some(("/nix-cache-info", Kind::Info)));
        let narinfo = "/0123456789abcdfghijklmnpqrsvwxyz.narinfo";
        assert_eq!(key_of(&format!("{narinfo}?x=1")), Some((narinfo, Kind::Narinfo)));
        assert_eq!(key_of(&format!("/upload{narinfo}")), Some((narinfo, Kind::Narinfo)));
        assert_eq!(key_of("/nar/abc.nar.xz").map(|k| k.1), Some(Kind::Nar));
        assert_eq!(key_of("/healthz"), None);
        assert_eq!(key_of("/metrics"), None);
        assert_eq!(key_of("/a/b.narinfo"), None);
    }

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
