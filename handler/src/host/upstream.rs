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
    /// Base URL without trailing slash.
    pub url: String,
    /// How its narinfos are checked.
    pub trust: Trust,
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
        })
        .collect()
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
}

/// An upstream response: status and body.
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// Content-Length, when sent.
    pub content_length: Option<u64>,
    /// The body (None for bodiless responses).
    pub body: Option<BodyReader>,
}

/// A request in flight.
pub struct Pending(FutureIncomingResponse);

/// Start a GET of `url` with the node's timeouts (the response-header
/// timeout also bounds the wait between body bytes).
pub fn start_get(url: &str, settings: &Settings) -> Result<Pending, FetchError> {
    start_get_within(url, settings, settings.upstream_timeout_ms)
}

/// Start a GET of a NAR: the body may stall for the stall timeout (a NAR
/// transfer is long; a short hiccup must not cut it).
pub fn start_nar_get(url: &str, settings: &Settings) -> Result<Pending, FetchError> {
    start_get_within(url, settings, settings.upstream_stall_timeout_ms)
}

fn start_get_within(url: &str, settings: &Settings, between_bytes_ms: u64) -> Result<Pending, FetchError> {
    let (scheme, rest) = match url.split_once("://") {
        Some(("http", rest)) => (Scheme::Http, rest),
        Some(("https", rest)) => (Scheme::Https, rest),
        _ => return Err(FetchError::BadUrl(url.to_owned())),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let headers = Fields::new();
    let _ = headers.append("user-agent", b"ncps-edge");
    let req = OutgoingRequest::new(headers);
    let bad = |_| FetchError::BadUrl(url.to_owned());
    req.set_method(&Method::Get).map_err(bad)?;
    req.set_scheme(Some(&scheme)).map_err(bad)?;
    req.set_authority(Some(authority)).map_err(bad)?;
    req.set_path_with_query(Some(path)).map_err(bad)?;
    let opts = RequestOptions::new();
    let timeout = Duration::from_millis(settings.upstream_timeout_ms);
    let connect = Duration::from_millis(settings.upstream_connect_timeout_ms);
    let _ = opts.set_connect_timeout(Some(connect.as_nanos() as u64));
    let _ = opts.set_first_byte_timeout(Some(timeout.as_nanos() as u64));
    let _ = opts.set_between_bytes_timeout(Some(Duration::from_millis(between_bytes_ms).as_nanos() as u64));
    outgoing_handler::handle(req, Some(opts)).map(Pending).map_err(|e| FetchError::Transport(format!("{e:?}")))
}

impl Pending {
    /// Wait for the response head.
    pub fn wait(self) -> Result<UpstreamResponse, FetchError> {
        self.0.subscribe().block();
        let resp: Result<IncomingResponse, ErrorCode> = match self.0.get() {
            Some(Ok(r)) => r,
            _ => return Err(FetchError::Transport("response already taken".into())),
        };
        let resp = resp.map_err(|e| FetchError::Transport(format!("{e:?}")))?;
        let status = resp.status();
        let content_length = resp
            .headers()
            .get("content-length")
            .first()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp.consume().ok().and_then(BodyReader::from_incoming);
        Ok(UpstreamResponse { status, content_length, body })
    }
}

/// GET the NAR at `url` and wait for the head.
pub fn get_nar(url: &str, settings: &Settings) -> Result<UpstreamResponse, FetchError> {
    start_nar_get(url, settings)?.wait()
}

/// The upstream cache a NAR URL belongs to (its URL up to `/nar/`), for
/// logs and metric labels.
pub fn base_of(nar_url: &str) -> &str {
    nar_url.rsplit_once("/nar/").map_or(nar_url, |(base, _)| base)
}

#[cfg(test)]
mod tests {
    use super::{trust, Trust};

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
}
