//! The front of the edge tier: answers from memory what the guest allowed
//! to be kept, before any instance exists, exactly as the guest would
//! (status, headers, `HEAD`, `Range`, the read token), and keeps what the
//! guest allows from its responses ([`capture`]). A request for a narinfo
//! the tier does not have waits for one already on its way through the
//! guest ([`flight`]).

pub mod capture;
pub mod flight;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::header::{HeaderValue, CONTENT_LENGTH};
use hyper::{Method, Request, Response, StatusCode};
use ncps_edge_host_services::edge::memory::{Kept, Kind};
use ncps_edge_host_services::edge::EdgeCache;
use ncps_edge_host_services::Services;
use ncps_edge_protocol::auth::may_read;
use ncps_edge_protocol::range::{self, Range};
use ncps_edge_protocol::route::{self as routes, Route};
use ncps_edge_protocol::timing::narinfo_patience;
use prometheus_client::metrics::counter::Counter;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use capture::{content_length, max_age, narinfo_url, Capture, Copying};
use flight::Flights;
pub use flight::{Flight, Lead};

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

/// The tier's key and kind of a request path, when the tier deals with
/// it: the guest's own routes (what it refuses, the tier leaves to it).
fn key_of(path_and_query: &str) -> Option<(String, Kind)> {
    Some(match routes::parse(path_and_query).ok()? {
        Route::Root => ("/".to_owned(), Kind::Info),
        Route::CacheInfo => ("/nix-cache-info".to_owned(), Kind::Info),
        Route::PubKey => ("/pubkey".to_owned(), Kind::Info),
        Route::Narinfo(hash) => (format!("/{hash}.narinfo"), Kind::Narinfo),
        Route::Nar(path) => (format!("/{}", path.key()), Kind::Nar),
        Route::Healthz | Route::AdminLru | Route::AdminFsck => return None,
    })
}

/// The edge tier's front of a node.
pub struct Front {
    edge: Arc<EdgeCache>,
    services: Arc<Services>,
    narinfo_hits: Counter,
    nar_hits: Counter,
    stale_narinfo_hits: Counter,
    stale_nar_hits: Counter,
    flights: Arc<Flights>,
    /// Answers being copied into the tier right now.
    copying: Arc<Copying>,
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
            stale_narinfo_hits: services.metrics.stale_hits(true),
            stale_nar_hits: services.metrics.stale_hits(false),
            flights: Flights::new(
                narinfo_patience(
                    Duration::from_millis(settings.upstream_connect_timeout_ms),
                    Duration::from_millis(settings.upstream_timeout_ms),
                ) + Duration::from_secs(1),
            ),
            copying: Copying::new(memory.max_entry().saturating_mul(4)),
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
            key,
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
        let (kept, stale) = match self.edge.serving() {
            Some(memory) => (memory.get(&asked.key)?, false),
            // The region cannot be reached: what the tier holds, marked stale.
            None => (self.edge.stale()?.get_stale(&asked.key)?, true),
        };
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
        if stale {
            resp.headers_mut().insert("x-cache", HeaderValue::from_static("STALE"));
        }
        if let Some((first, last)) = part {
            resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(length));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")) {
                resp.headers_mut().insert(hyper::header::CONTENT_RANGE, v);
            }
        }
        self.record_access(&kept);
        let hits = match (kept.kind, status) {
            (Kind::Narinfo, 200) => Some(if stale { &self.stale_narinfo_hits } else { &self.narinfo_hits }),
            (Kind::Nar, 200 | 206) => Some(if stale { &self.stale_nar_hits } else { &self.nar_hits }),
            _ => None,
        };
        hits.map(Counter::inc);
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
    pub fn flight(&self, asked: &Asked) -> Option<Flight> {
        (asked.keepable && asked.kind != Kind::Nar).then(|| self.flights.join(&asked.key))
    }

    /// Wait for the request ahead (at most the patience).
    pub async fn follow(&self, rx: tokio::sync::watch::Receiver<()>) {
        self.flights.follow(rx).await
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
        let capture = Capture::new(
            body,
            length,
            reservation,
            Box::new({
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
            }),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_the_paths_the_guest_routes() {
        assert_eq!(key_of("/nix-cache-info"), Some(("/nix-cache-info".to_owned(), Kind::Info)));
        let narinfo = "/0123456789abcdfghijklmnpqrsvwxyz.narinfo";
        assert_eq!(key_of(&format!("{narinfo}?x=1")), Some((narinfo.to_owned(), Kind::Narinfo)));
        assert_eq!(key_of(&format!("/upload{narinfo}")), Some((narinfo.to_owned(), Kind::Narinfo)));
        let nar = "/nar/0c5gsym8rwxz5ynj76j0gh1q9h9wv5pxfwy8k89plkrx0f8n3sah.nar.xz";
        assert_eq!(key_of(nar), Some((nar.to_owned(), Kind::Nar)));
        // What the guest refuses, the tier leaves to it.
        assert_eq!(key_of("/nar/abc.nar.xz"), None);
        assert_eq!(key_of("/healthz"), None);
        assert_eq!(key_of("/metrics"), None);
        assert_eq!(key_of("/a/b.narinfo"), None);
    }
}
