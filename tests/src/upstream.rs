//! A fake upstream cache: serves a folder made by `nix copy`, counts requests
//! per path, and can corrupt NARs, slow them down or fail.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Switches of the fake upstream.
#[derive(Default)]
pub struct Faults {
    /// Flip one byte in every NAR body.
    pub corrupt_nars: AtomicBool,
    /// Answer everything with 500.
    pub fail: AtomicBool,
    /// Pause between 64 KiB chunks of NAR bodies, milliseconds.
    pub nar_chunk_delay_ms: AtomicU64,
    /// Serve this as `/nix-cache-info` instead of the folder's file.
    pub cache_info: Mutex<Option<String>>,
    /// Answer 401 to requests without exactly this `authorization`.
    pub require_authorization: Mutex<Option<String>>,
    /// Answer NAR requests with this status (0: serve them).
    pub nar_status: std::sync::atomic::AtomicU16,
    /// Answer narinfo requests 404, as an upstream without them.
    pub narinfos_gone: AtomicBool,
    /// Redirect NAR requests to this base URL (same path), with a 302.
    pub redirect_nars_to: Mutex<Option<String>>,
    /// Send narinfo bodies 10 bytes per second.
    pub drip_narinfos: AtomicBool,
}

struct State {
    root: PathBuf,
    /// GETs per path.
    hits: Mutex<HashMap<String, usize>>,
    /// HEADs per path.
    heads: Mutex<HashMap<String, usize>>,
    times: Mutex<HashMap<String, Vec<std::time::Instant>>>,
    faults: Faults,
}

/// A running fake upstream.
pub struct FakeUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, bytes: Vec<u8>) -> hyper::Response<Body> {
    let mut r = hyper::Response::new(Full::new(Bytes::from(bytes)).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

impl FakeUpstream {
    /// Serve `root` on a free loopback port.
    pub async fn start(root: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            root,
            hits: Mutex::default(),
            heads: Mutex::default(),
            times: Mutex::default(),
            faults: Faults::default(),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(serve(&s, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(conn), svc).await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fault switches.
    pub fn faults(&self) -> &Faults {
        &self.state.faults
    }

    /// GET requests seen for `path` (e.g. `/nar/….nar.zst`).
    pub fn hits(&self, path: &str) -> usize {
        self.state.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// HEAD requests seen for `path`.
    pub fn heads(&self, path: &str) -> usize {
        self.state.heads.lock().unwrap().get(path).copied().unwrap_or(0)
    }

    /// When each request for `path` came.
    pub fn hit_times(&self, path: &str) -> Vec<std::time::Instant> {
        self.state.times.lock().unwrap().get(path).cloned().unwrap_or_default()
    }

    /// Requests seen for paths starting with `prefix`.
    pub fn hits_with_prefix(&self, prefix: &str) -> usize {
        self.state.hits.lock().unwrap().iter().filter(|(p, _)| p.starts_with(prefix)).map(|(_, n)| n).sum()
    }
}

async fn serve(s: &State, req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_owned();
    let counts = if req.method() == hyper::Method::HEAD { &s.heads } else { &s.hits };
    *counts.lock().unwrap().entry(path.clone()).or_default() += 1;
    s.times.lock().unwrap().entry(path.clone()).or_default().push(std::time::Instant::now());
    if s.faults.fail.load(Ordering::SeqCst) {
        return full(500, b"upstream broken".to_vec());
    }
    if let Some(want) = s.faults.require_authorization.lock().unwrap().clone() {
        if req.headers().get("authorization").is_none_or(|v| v.as_bytes() != want.as_bytes()) {
            return full(401, b"unauthorized".to_vec());
        }
    }
    if path.ends_with(".narinfo") && s.faults.narinfos_gone.load(Ordering::SeqCst) {
        return full(404, b"not here".to_vec());
    }
    if path.starts_with("/nar/") {
        let status = s.faults.nar_status.load(Ordering::SeqCst);
        if status != 0 {
            return full(status, b"not now".to_vec());
        }
        if let Some(base) = s.faults.redirect_nars_to.lock().unwrap().clone() {
            let mut r = full(302, Vec::new());
            r.headers_mut().insert("location", format!("{base}{path}").parse().unwrap());
            return r;
        }
    }
    if path == "/nix-cache-info" {
        if let Some(info) = s.faults.cache_info.lock().unwrap().clone() {
            return full(200, info.into_bytes());
        }
    }
    if path.contains("..") {
        return full(400, Vec::new());
    }
    let Ok(mut bytes) = tokio::fs::read(s.root.join(path.trim_start_matches('/'))).await else {
        return full(404, b"not found".to_vec());
    };
    if path.ends_with(".narinfo") && s.faults.drip_narinfos.load(Ordering::SeqCst) {
        return drip(bytes);
    }
    if !path.starts_with("/nar/") {
        return full(200, bytes);
    }
    if s.faults.corrupt_nars.load(Ordering::SeqCst) && !bytes.is_empty() {
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
    }
    let delay = Duration::from_millis(s.faults.nar_chunk_delay_ms.load(Ordering::SeqCst));
    let len = bytes.len();
    let chunks: Vec<Bytes> = Bytes::from(bytes).chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let body = StreamBody::new(stream::unfold(chunks.into_iter(), move |mut it| async move {
        let chunk = it.next()?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Some((Ok::<_, Infallible>(Frame::data(chunk)), it))
    }));
    let mut r = hyper::Response::new(body.boxed());
    r.headers_mut().insert("content-length", len.into());
    r
}

/// `bytes` sent 10 bytes a second.
fn drip(bytes: Vec<u8>) -> hyper::Response<Body> {
    let len = bytes.len();
    let chunks: Vec<Bytes> = Bytes::from(bytes).chunks(10).map(Bytes::copy_from_slice).collect();
    let body = StreamBody::new(stream::unfold(chunks.into_iter(), |mut it| async move {
        let chunk = it.next()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Some((Ok::<_, Infallible>(Frame::data(chunk)), it))
    }));
    let mut r = hyper::Response::new(body.boxed());
    r.headers_mut().insert("content-length", len.into());
    r
}

/// An upstream that accepts connections and never answers; its URL. It
/// lives as long as the returned task.
pub async fn hanging_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    (url, task)
}
