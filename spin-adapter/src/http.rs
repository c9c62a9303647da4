//! Outgoing `wasi:http` requests with whole bodies (S3 calls).

use std::cell::RefCell;
use std::time::Duration;

use crate::bindings::wasi::http::outgoing_handler;
use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions, Scheme,
};
use crate::bindings::wasi::io::streams::{InputStream, StreamError};

/// A request to send.
pub struct Request<'a> {
    /// HTTP method.
    pub method: Method,
    /// `http` or `https`.
    pub https: bool,
    /// `host[:port]`.
    pub authority: &'a str,
    /// Path and query, already encoded.
    pub path_and_query: &'a str,
    /// Header names and values.
    pub headers: &'a [(String, String)],
    /// The whole body.
    pub body: &'a [u8],
    /// Deadline of the connection, the head and each gap between body bytes.
    pub timeout: Duration,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request was refused before it was sent.
    #[error("bad request: {0}")]
    Bad(String),
    /// No answer within the deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The connection failed.
    #[error("transport: {0}")]
    Transport(String),
}

/// A response head with its body still to read.
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, Vec<u8>)>,
    body: Option<IncomingBody>,
    response: IncomingResponse,
}

thread_local! {
    /// Bodies whose stream was handed to the handler. A stream is a child
    /// of its body (and the body of its response): they must outlive it,
    /// so they live as long as the instance.
    static KEPT: RefCell<Vec<(IncomingBody, IncomingResponse)>> = const { RefCell::new(Vec::new()) };
}

impl Response {
    /// First value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Read the whole body, at most `limit` bytes.
    pub fn bytes(mut self, limit: usize) -> Result<Vec<u8>, HttpError> {
        let Some(body) = self.body.take() else { return Ok(Vec::new()) };
        let stream = body.stream().map_err(|_| HttpError::Transport("body taken".into()))?;
        let mut out = Vec::new();
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => return Err(HttpError::Transport(e.to_debug_string())),
            }
            if out.len() > limit {
                return Err(HttpError::Transport(format!("response body larger than {limit} bytes")));
            }
        }
        Ok(out)
    }

    /// The body as a stream that outlives this call (for `storage.read`).
    pub fn into_stream(mut self) -> Result<InputStream, HttpError> {
        let body = self.body.take().ok_or_else(|| HttpError::Transport("no body".into()))?;
        let stream = body.stream().map_err(|_| HttpError::Transport("body taken".into()))?;
        KEPT.with(|kept| kept.borrow_mut().push((body, self.response)));
        Ok(stream)
    }
}

/// Send `req` and wait for the response head.
pub fn send(req: &Request<'_>) -> Result<Response, HttpError> {
    let mut fields: Vec<(String, Vec<u8>)> =
        req.headers.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    if !matches!(req.method, Method::Get | Method::Head) {
        // S3 wants a length on every body, an empty one too (else the body
        // goes chunked).
        fields.push(("content-length".into(), req.body.len().to_string().into_bytes()));
    }
    let headers = Fields::from_list(&fields).map_err(|e| HttpError::Bad(format!("{e:?}")))?;
    let outgoing = OutgoingRequest::new(headers);
    let bad = |_| HttpError::Bad(format!("{}{}", req.authority, req.path_and_query));
    outgoing.set_method(&req.method).map_err(bad)?;
    outgoing.set_scheme(Some(if req.https { &Scheme::Https } else { &Scheme::Http })).map_err(bad)?;
    outgoing.set_authority(Some(req.authority)).map_err(bad)?;
    outgoing.set_path_with_query(Some(req.path_and_query)).map_err(bad)?;
    let body = outgoing.body().map_err(|_| HttpError::Bad("request body taken".into()))?;
    let opts = RequestOptions::new();
    let nanos = req.timeout.as_nanos() as u64;
    // The answer comes after the whole body is sent: a second more per MiB.
    let sending = Duration::from_secs(req.body.len().div_ceil(1 << 20) as u64);
    let _ = opts.set_connect_timeout(Some(nanos));
    let _ = opts.set_first_byte_timeout(Some((req.timeout + sending).as_nanos() as u64));
    let _ = opts.set_between_bytes_timeout(Some(nanos));
    // Sent first: the host reads the body while it is written.
    let pending = outgoing_handler::handle(outgoing, Some(opts)).map_err(|e| classify(format!("{e:?}")))?;
    // A server that answers early (an error) closes the body: its answer
    // says more than the broken write.
    let written = write_body(body, req.body);
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(r))) => r,
        Some(Ok(Err(e))) => {
            let why = match written {
                Err(w) => format!("{e:?} ({w})"),
                Ok(()) => format!("{e:?}"),
            };
            return Err(classify(why));
        }
        _ => return Err(HttpError::Transport("response already taken".into())),
    };
    // A failed write with an answer: the answer decides. Every body sent
    // here is signed with its SHA-256, which S3 checks, so a 2xx means all
    // of it arrived (a flush after the last byte can find the body taken).
    let _ = written;
    let headers = response.headers().entries();
    Ok(Response { status: response.status(), headers, body: response.consume().ok(), response })
}

fn write_body(body: OutgoingBody, mut data: &[u8]) -> Result<(), HttpError> {
    let failed = |e: StreamError| HttpError::Transport(format!("writing the request body: {e:?}"));
    {
        let stream = body.write().map_err(|_| HttpError::Bad("request body stream taken".into()))?;
        while !data.is_empty() {
            let permitted = stream.check_write().map_err(failed)?;
            if permitted == 0 {
                stream.subscribe().block();
                continue;
            }
            let n = (permitted as usize).min(data.len());
            stream.write(&data[..n]).map_err(failed)?;
            data = &data[n..];
        }
        stream.blocking_flush().map_err(failed)?;
    }
    OutgoingBody::finish(body, None).map_err(|e| HttpError::Transport(format!("{e:?}")))
}

fn classify(text: String) -> HttpError {
    if text.contains("Timeout") {
        HttpError::Timeout(text)
    } else {
        HttpError::Transport(text)
    }
}
