//! What the server changes in a request before an instance sees it, and
//! what it checks of it first.

/// Header that tells the handler the client's address (see the handler's
/// write audit); whatever a client sent under that name is replaced.
pub const PEER_HEADER: &str = "ncps-edge-peer";

pub(super) fn with_peer(
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: std::net::SocketAddr,
) -> hyper::Request<hyper::body::Incoming> {
    let headers = req.headers_mut();
    headers.remove(PEER_HEADER);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&peer.to_string()) {
        headers.insert(PEER_HEADER, v);
    }
    req
}

/// `req` with a usable `Host`: a request that names none (an HTTP/1.0
/// health check) or an unreadable one is answered as if it had asked for
/// the cache's own `hostname`.
pub(super) fn with_host<B>(mut req: hyper::Request<B>, hostname: &str) -> hyper::Request<B> {
    let readable = req.headers().get(hyper::header::HOST).is_some_and(|h| h.to_str().is_ok_and(|h| !h.is_empty()));
    if req.uri().authority().is_none() && !readable {
        if let Ok(v) = hyper::header::HeaderValue::from_str(hostname) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    req
}

/// The size of a request's head as it came: request line and header lines.
pub(super) fn head_size<B>(req: &hyper::Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + "  HTTP/1.1\r\n".len();
    line + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len()).sum::<usize>()
}
