//! Thin helpers over `wasi:http`: the incoming request, responses, and
//! streaming bodies in both directions.

use crate::bindings::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::bindings::wasi::io::poll::poll;
use crate::bindings::wasi::io::streams::{InputStream, OutputStream, StreamError};
use crate::host::logging;
use crate::host::time::Instant;

/// Bytes read from a stream per call.
pub const CHUNK: u64 = 256 * 1024;

/// An incoming request with its head read.
pub struct Request {
    /// HTTP method.
    pub method: Method,
    /// Path and query.
    pub path: String,
    /// The authority the client asked for (`host:port`).
    pub authority: String,
    headers: Vec<(String, Vec<u8>)>,
    inner: IncomingRequest,
}

impl Request {
    /// Read the head of `inner`.
    pub fn new(inner: IncomingRequest) -> Self {
        Self {
            method: inner.method(),
            path: inner.path_with_query().unwrap_or_default(),
            authority: inner.authority().unwrap_or_default(),
            headers: inner.headers().entries(),
            inner,
        }
    }

    /// First value of header `name` (case-insensitive), when it is UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// The request body as a stream.
    pub fn body(&self) -> Option<BodyReader> {
        let body = self.inner.consume().ok()?;
        let stream = body.stream().ok()?;
        Some(BodyReader { stream, _body: body })
    }
}

/// Why a body could not be read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than allowed.
    #[error("body larger than {0} bytes")]
    TooLarge(u64),
    /// The stream failed.
    #[error("body stream failed: {0}")]
    Stream(String),
    /// It did not end by its deadline (a slow drip).
    #[error("body not complete within its deadline")]
    TooSlow,
}

/// An incoming body (request or upstream response). The stream is dropped
/// before the body, as `wasi:http` requires of a child resource.
pub struct BodyReader {
    stream: InputStream,
    _body: IncomingBody,
}

impl BodyReader {
    /// Wrap an upstream response body.
    pub fn from_incoming(body: IncomingBody) -> Option<Self> {
        let stream = body.stream().ok()?;
        Some(Self { stream, _body: body })
    }

    /// The next chunk; `Ok(None)` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, BodyError> {
        self.next_chunk_by(None)
    }

    /// The next chunk, waiting at most until `deadline`; `Ok(None)` at the end.
    pub fn next_chunk_by(&mut self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>, BodyError> {
        loop {
            match self.stream.read(CHUNK) {
                Ok(bytes) if !bytes.is_empty() => return Ok(Some(bytes)),
                Ok(_) => {}
                Err(StreamError::Closed) => return Ok(None),
                Err(StreamError::LastOperationFailed(e)) => return Err(BodyError::Stream(e.to_debug_string())),
            }
            let ready = self.stream.subscribe();
            match deadline {
                None => ready.block(),
                Some(deadline) => {
                    if !poll(&[&ready, &deadline.timer()]).contains(&0) {
                        return Err(BodyError::TooSlow);
                    }
                }
            }
        }
    }

    /// Read everything, refusing more than `limit` bytes.
    pub fn read_to_end(self, limit: u64) -> Result<Vec<u8>, BodyError> {
        self.read_to_end_by(limit, None)
    }

    /// Read everything by `deadline`, refusing more than `limit` bytes.
    pub fn read_to_end_by(mut self, limit: u64, deadline: Option<Instant>) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk_by(deadline)? {
            if (out.len() + chunk.len()) as u64 > limit {
                return Err(BodyError::TooLarge(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

/// A response head under construction.
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

impl Response {
    /// A response with `status`.
    pub fn new(status: u16) -> Self {
        Self { status, headers: Vec::new() }
    }

    /// Add a header.
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Add a header when there is a value.
    pub fn header_if(self, name: &str, value: Option<impl AsRef<[u8]>>) -> Self {
        match value {
            Some(v) => self.header(name, v),
            None => self,
        }
    }

    /// The head as the host takes it.
    fn outgoing(&self) -> OutgoingResponse {
        let fields = Fields::from_list(&self.headers).unwrap_or_else(|_| Fields::new());
        let resp = OutgoingResponse::new(fields);
        let _ = resp.set_status_code(self.status);
        resp
    }

    /// Send the head and return the body writer (none for HEAD requests,
    /// which get the head only).
    pub fn start(self, out: ResponseOutparam, head_only: bool) -> Option<BodyWriter> {
        let resp = self.outgoing();
        if head_only {
            ResponseOutparam::set(out, Ok(resp));
            return None;
        }
        let body = resp.body().ok();
        ResponseOutparam::set(out, Ok(resp));
        let body = body?;
        let stream = body.write().ok()?;
        Some(BodyWriter { stream, body })
    }

    /// Send the whole response with `body` (its length as Content-Length).
    pub fn send(self, out: ResponseOutparam, body: &[u8], head_only: bool) {
        self.header("content-length", body.len().to_string()).send_body(out, body, head_only);
    }

    /// Send the whole response with `body`, its Content-Length already
    /// given. What the body stream takes at once is written, and a body it
    /// takes whole is finished, before the head is handed over: the host
    /// then has the whole response and sends it in one write. (Head first,
    /// then the body, and the body waits behind Nagle's algorithm for the
    /// client's delayed ACK of the head: 40 ms per small answer.) A body
    /// that cannot be written whole is abandoned: a broken transfer.
    pub fn send_body(self, out: ResponseOutparam, body: &[u8], head_only: bool) {
        if head_only {
            self.start(out, true);
            return;
        }
        let head = self.outgoing();
        let Some((outgoing, stream)) = head.body().ok().and_then(|b| b.write().ok().map(|s| (b, s))) else {
            return ResponseOutparam::set(out, Ok(head));
        };
        let mut w = BodyWriter { stream, body: outgoing };
        let taken = w.write_now(body);
        if taken == body.len() {
            let finished = w.finish();
            ResponseOutparam::set(out, Ok(head));
            if !finished {
                logging::debug("a response body could not be finished", &[]);
            }
            return;
        }
        ResponseOutparam::set(out, Ok(head));
        match w.write_all(&body[taken..]) {
            Ok(()) => _ = w.finish(),
            Err(_) => w.abort(),
        }
    }
}

/// Send a short plain-text response.
pub fn text(out: ResponseOutparam, status: u16, body: &str, head_only: bool) {
    Response::new(status).header("content-type", "text/plain; charset=utf-8").send(out, body.as_bytes(), head_only);
}

/// An outgoing response body.
pub struct BodyWriter {
    stream: OutputStream,
    body: OutgoingBody,
}

impl BodyWriter {
    /// Write what the stream takes of `data` without waiting; returns how
    /// much it took.
    fn write_now(&mut self, data: &[u8]) -> usize {
        let permitted = self.stream.check_write().map_or(0, |p| p as usize);
        let n = permitted.min(data.len());
        match n > 0 && self.stream.write(&data[..n]).is_ok() {
            true => n,
            false => 0,
        }
    }

    /// Write all of `data`, waiting for the client as needed.
    pub fn write_all(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        while !data.is_empty() {
            let permitted = self.stream.check_write()?;
            if permitted == 0 {
                self.stream.subscribe().block();
                continue;
            }
            let n = (permitted as usize).min(data.len());
            self.stream.write(&data[..n])?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Copy `input` to the client inside the host (the bytes never enter
    /// this instance); returns the bytes copied.
    pub fn splice_all(&mut self, input: &InputStream) -> Result<u64, StreamError> {
        let mut total = 0;
        loop {
            match self.stream.blocking_splice(input, 4 * CHUNK) {
                Ok(n) => total += n,
                Err(StreamError::Closed) => return Ok(total),
                Err(e) => return Err(e),
            }
        }
    }

    /// Complete the body. A body shorter than its Content-Length fails here,
    /// and the client sees a broken transfer.
    pub fn finish(self) -> bool {
        let Self { stream, body } = self;
        let flushed = stream.blocking_flush().is_ok();
        drop(stream);
        OutgoingBody::finish(body, None).is_ok() && flushed
    }

    /// Abandon the body: the client sees a broken transfer, never a
    /// complete-looking one.
    pub fn abort(self) {
        let Self { stream, body } = self;
        drop(stream);
        drop(body);
    }
}
