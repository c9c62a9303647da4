//! Upstream caches over `wasi:http/outgoing-handler`: ordering by health and
//! priority, parallel narinfo lookups, and NAR fetches.

use std::time::Duration;

use super::http::BodyReader;
use crate::bindings::ncps::edge::config::{self, Settings};
use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    ErrorCode, Fields, FutureIncomingResponse, IncomingResponse, Method, OutgoingRequest, RequestOptions, Scheme,
};
use crate::protocol::signature::PublicKey;

/// How an upstream's narinfos are checked.
pub enum Trust {
    /// A valid signature by one of these keys is required.
    Keys(Vec<PublicKey>),
    /// Accepted unverified (`--cache-upstream-allow-unsigned`, no keys).
    Unsigned,
    /// Refused: a configured key does not parse, or there are no keys and
    /// unsigned narinfos are not allowed. Never turns into "unverified".
    Refuse(String),
}

/// An upstream cache as the guest uses it.
pub struct Upstream {
    /// Base URL without trailing slash (and without credentials).
    pub url: String,
    /// How its narinfos are checked.
    pub trust: Trust,
    /// What to send it as `authorization`, if anything.
    pub authorization: Option<String>,
}

fn trust(keys: &[String], allow_unsigned: bool) -> Trust {
    let mut parsed = Vec::with_capacity(keys.len());
    for k in keys {
        match PublicKey::parse(k) {
            Some(key) => parsed.push(key),
            None => return Trust::Refuse(format!("trusted key {k:?} is not a valid ed25519 key")),
        }
    }
    match (parsed.is_empty(), allow_unsigned) {
        (false, _) => Trust::Keys(parsed),
        (true, true) => Trust::Unsigned,
        (true, false) => Trust::Refuse("no trusted keys, and unsigned narinfos are not allowed".into()),
    }
}

/// Healthy upstreams by priority (all of them when none is healthy: a
/// health check that is wrong must not take the cache down).
pub fn ordered() -> Vec<Upstream> {
    let mut all = config::get_upstreams();
    all.sort_by_key(|u| u.priority);
    let any_healthy = all.iter().any(|u| u.healthy);
    all.into_iter()
        .filter(|u| u.healthy || !any_healthy)
        .map(|u| Upstream {
            url: u.url.trim_end_matches('/').to_owned(),
            trust: trust(&u.public_keys, u.allow_unsigned),
            authorization: u.authorization,
        })
        .collect()
}

/// What to send as `authorization` with a request for `url`: the
/// credentials of the configured upstream it belongs to, if any.
pub fn authorization_for(url: &str) -> Option<String> {
    config::get_upstreams().into_iter().find(|u| same_origin(&u.url, url)).and_then(|u| u.authorization)
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URL could not be used.
    #[error("bad upstream URL {0}")]
    BadUrl(String),
    /// Transport failure or timeout.
    #[error("upstream request failed: {0}")]
    Transport(String),
    /// Redirected too often (or in a circle).
    #[error("more than {MAX_REDIRECTS} redirects")]
    Redirects,
}

/// Redirects followed, as curl (and so Nix) follows them.
pub const MAX_REDIRECTS: usize = 5;

/// An upstream response: status and body.
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// Content-Length, when sent.
    pub content_length: Option<u64>,
    /// The body (None for bodiless responses).
    pub body: Option<BodyReader>,
}

/// The deadlines of one kind of upstream request.
#[derive(Clone, Copy)]
struct Deadlines {
    connect_ms: u64,
    first_byte_ms: u64,
    between_bytes_ms: u64,
}

/// A request in flight: its method, URL, credentials and deadlines go
/// along, for the redirects it may meet.
pub struct Pending {
    response: FutureIncomingResponse,
    head: bool,
    url: String,
    authorization: Option<String>,
    deadlines: Deadlines,
}

/// Start a GET of `url` (sending `authorization`) with the node's timeouts
/// (the response-header timeout also bounds the wait between body bytes).
pub fn start_get(url: &str, authorization: Option<&str>, settings: &Settings) -> Result<Pending, FetchError> {
    start(false, url, authorization.map(str::to_owned), deadlines(settings, settings.upstream_timeout_ms))
}

fn deadlines(settings: &Settings, between_bytes_ms: u64) -> Deadlines {
    Deadlines {
        connect_ms: settings.upstream_connect_timeout_ms,
        first_byte_ms: settings.upstream_timeout_ms,
        between_bytes_ms,
    }
}

/// `(scheme, authority, path)` of an http(s) URL.
fn split_url(url: &str) -> Option<(Scheme, &str, &str)> {
    let (scheme, rest) = match url.split_once("://")? {
        ("http", rest) => (Scheme::Http, rest),
        ("https", rest) => (Scheme::Https, rest),
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then_some((scheme, authority, path))
}

/// Whether `a` and `b` have the same scheme and authority.
fn same_origin(a: &str, b: &str) -> bool {
    let origin = |u| split_url(u).map(|(scheme, authority, _)| (matches!(scheme, Scheme::Https), authority));
    origin(a).is_some() && origin(a) == origin(b)
}

fn start(head: bool, url: &str, authorization: Option<String>, deadlines: Deadlines) -> Result<Pending, FetchError> {
    let (scheme, authority, path) = split_url(url).ok_or_else(|| FetchError::BadUrl(url.to_owned()))?;
    let headers = Fields::new();
    let _ = headers.append("user-agent", b"ncps-edge");
    if let Some(auth) = &authorization {
        let _ = headers.append("authorization", auth.as_bytes());
    }
    let req = OutgoingRequest::new(headers);
    let bad = |_| FetchError::BadUrl(url.to_owned());
    req.set_method(if head { &Method::Head } else { &Method::Get }).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let opts = RequestOptions::new();
    let nanos = |ms: u64| Duration::from_millis(ms).as_nanos() as u64;
    let _ = opts.set_connect_timeout(Some(nanos(deadlines.connect_ms)));
    let _ = opts.set_first_byte_timeout(Some(nanos(deadlines.first_byte_ms)));
    let _ = opts.set_between_bytes_timeout(Some(nanos(deadlines.between_bytes_ms)));
    let response = outgoing_handler::handle(req, Some(opts)).map_err(|e| FetchError::Transport(format!("{e:?}")))?;
    Ok(Pending { response, head, url: url.to_owned(), authorization, deadlines })
}

/// Where a redirect from `from` to `location` goes (absolute, or relative
/// to `from`).
fn resolve(from: &str, location: &str) -> Option<String> {
    if split_url(location).is_some() {
        return Some(location.to_owned());
    }
    let (scheme, authority, path) = split_url(from)?;
    let scheme = if matches!(scheme, Scheme::Https) { "https" } else { "http" };
    if location.starts_with("//") {
        return Some(format!("{scheme}:{location}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let dir = path.split(['?', '#']).next().unwrap_or("/").rsplit_once('/').map_or("", |(d, _)| d);
    Some(format!("{scheme}://{authority}{dir}/{location}"))
}

fn first_header(resp: &IncomingResponse, name: &str) -> Option<String> {
    resp.headers().get(name).first().and_then(|v| std::str::from_utf8(v).ok()).map(|v| v.trim().to_owned())
}

impl Pending {
    /// Wait for the response head, following redirects (up to
    /// [`MAX_REDIRECTS`]; credentials go along to the same origin only).
    pub fn wait(mut self) -> Result<UpstreamResponse, FetchError> {
        for _ in 0..=MAX_REDIRECTS {
            self.response.subscribe().block();
            let resp: Result<IncomingResponse, ErrorCode> = match self.response.get() {
                Some(Ok(r)) => r,
                _ => return Err(FetchError::Transport("response already taken".into())),
            };
            let resp = resp.map_err(|e| FetchError::Transport(format!("{e:?}")))?;
            let status = resp.status();
            let location = matches!(status, 301 | 302 | 303 | 307 | 308)
                .then(|| first_header(&resp, "location"))
                .flatten()
                .and_then(|l| resolve(&self.url, &l));
            if let Some(next) = location {
                let authorization = self.authorization.take().filter(|_| same_origin(&self.url, &next));
                self = start(self.head, &next, authorization, self.deadlines)?;
                continue;
            }
            let content_length = first_header(&resp, "content-length").and_then(|v| v.parse().ok());
            let body = resp.consume().ok().and_then(BodyReader::from_incoming);
            return Ok(UpstreamResponse { status, content_length, body });
        }
        Err(FetchError::Redirects)
    }
}

/// GET (or, with `head`, HEAD) the NAR at `url` and wait for the head. The
/// body may stall for the stall timeout (a NAR transfer is long; a short
/// hiccup must not cut it).
pub fn get_nar(
    head: bool,
    url: &str,
    authorization: Option<&str>,
    settings: &Settings,
) -> Result<UpstreamResponse, FetchError> {
    let deadlines = deadlines(settings, settings.upstream_stall_timeout_ms);
    start(head, url, authorization.map(str::to_owned), deadlines)?.wait()
}

/// The upstream cache a NAR URL belongs to (its URL up to `/nar/`), for
/// logs and metric labels.
pub fn base_of(nar_url: &str) -> &str {
    nar_url.rsplit_once("/nar/").map_or(nar_url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::{resolve, same_origin, trust, Trust};

    const GOOD: &str = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    /// A one-character typo of `GOOD` that is base64 of 32 bytes but no
    /// ed25519 point.
    fn typo() -> String {
        (GOOD.find(':').unwrap() + 1..GOOD.len() - 1)
            .flat_map(|i| ["A", "B", "C", "D"].map(move |c| format!("{}{c}{}", &GOOD[..i], &GOOD[i + 1..])))
            .find(|k| k != GOOD && super::PublicKey::parse(k).is_none() && k.len() == GOOD.len())
            .expect("an invalid typo")
    }

    #[test]
    fn a_key_that_does_not_parse_refuses_instead_of_failing_open() {
        assert!(matches!(trust(&[GOOD.into()], false), Trust::Keys(k) if k.len() == 1));
        assert!(matches!(trust(&[GOOD.into(), typo()], false), Trust::Refuse(_)));
        assert!(matches!(trust(&[typo()], true), Trust::Refuse(_)), "allow-unsigned never covers a broken key");
        assert!(matches!(trust(&[], false), Trust::Refuse(_)));
        assert!(matches!(trust(&[], true), Trust::Unsigned));
    }

    #[test]
    fn redirects_resolve_against_the_url_they_came_from() {
        let from = "http://up.example:8080/cache/nar/abc.nar.xz";
        assert_eq!(resolve(from, "https://cdn.example/x").as_deref(), Some("https://cdn.example/x"));
        assert_eq!(resolve(from, "/other/x").as_deref(), Some("http://up.example:8080/other/x"));
        assert_eq!(resolve(from, "x.nar").as_deref(), Some("http://up.example:8080/cache/nar/x.nar"));
        assert_eq!(resolve(from, "//cdn.example/y").as_deref(), Some("http://cdn.example/y"));
        assert!(same_origin(from, "http://up.example:8080/z"));
        assert!(!same_origin(from, "https://up.example:8080/z"));
        assert!(!same_origin(from, "http://up.example/z"));
    }
}
