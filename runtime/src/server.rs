//! The HTTP server: what the edge tier keeps is answered from memory (see
//! [`crate::tier`]); every other request gets a fresh handler instance in
//! its own store; a trap before the response head becomes a 500, and the
//! server keeps serving. The host itself answers only `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
// hyper-util's adapter, not wasmtime-wasi-http's: it says the socket takes
// vectored writes, so hyper queues body chunks instead of copying them into
// a per-connection buffer that keeps the capacity of the largest body it
// ever sent (8 MiB per keep-alive connection after one large NAR hit).
use hyper_util::rt::{TokioIo, TokioTimer};
use ncps_edge_host_services::edge::channel::Channel;
use ncps_edge_host_services::storage::follow::{Followed, FOLLOW_ROUTE};
use ncps_edge_host_services::storage::{FileRange, HandOff, HandedOff, StorageKey};
use ncps_edge_host_services::Services;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::bindings::{CacheNode, LruReport, ReconcileReport, UpstreamHealth};
use crate::engine::{Handler, EPOCH_TICK};
use crate::state::RequestState;
use crate::tier::{Flight, Front};

/// Limits of the HTTP front door.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Deadline of one request's instance.
    pub request_timeout: Duration,
    /// Serve `/metrics`.
    pub prometheus: bool,
    /// A request head must arrive within this; an idle keep-alive
    /// connection is closed after it too.
    pub read_header_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Largest request head, bytes.
    pub max_header_size: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(3600),
            prometheus: false,
            read_header_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_header_size: 64 << 10,
        }
    }
}

/// A node's request handling: the handler and the services it may use.
pub struct Server {
    handler: Handler,
    services: Arc<Services>,
    options: ServerOptions,
    /// Every connection and every instance task, to wait for at shutdown.
    tasks: TaskTracker,
    /// Cancelled when the shutdown deadline passes: instances still running
    /// are dropped (their leases released, their writes discarded).
    cut: CancellationToken,
    /// Tells open connections to finish their current request and close.
    draining: CancellationToken,
    /// The edge tier's front (none with `--edge-cache-memory 0`).
    front: Option<Arc<Front>>,
    /// The channel of edge-tier purges between nodes, to listen on.
    edge_channel: Option<Arc<dyn Channel>>,
    /// Downloads in progress on this node, for peers that follow them.
    downloads: Arc<Followed>,
}

impl Server {
    /// A server running `handler` against `services` within `options`;
    /// edge-tier purges travel over `edge_channel`.
    pub fn new(
        handler: Handler,
        services: Arc<Services>,
        options: ServerOptions,
        edge_channel: Option<Arc<dyn Channel>>,
        downloads: Arc<Followed>,
    ) -> Self {
        Self {
            handler,
            front: Front::new(&services),
            services,
            options,
            tasks: TaskTracker::new(),
            cut: CancellationToken::new(),
            draining: CancellationToken::new(),
            edge_channel,
            downloads,
        }
    }

    /// The channel of edge-tier purges, when the node has one.
    pub fn edge_channel(&self) -> Option<&Arc<dyn Channel>> {
        self.edge_channel.as_ref()
    }

    /// The node's services.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The wasmtime engine (for its epoch ticker).
    pub fn engine(&self) -> &wasmtime::Engine {
        self.handler.pre.engine()
    }

    /// Accept connections on `listener` until `shutdown` resolves; then stop
    /// accepting (see [`Server::drain`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let slots = Arc::new(tokio::sync::Semaphore::new(self.options.max_connections));
        loop {
            let slot = tokio::select! {
                _ = &mut shutdown => return,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            let (conn, peer) = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = conn.set_nodelay(true);
            let server = self.clone();
            self.tasks.spawn(async move {
                let _slot = slot;
                let draining = server.draining.clone();
                let service = {
                    let server = server.clone();
                    service_fn(move |req| {
                        let server = server.clone();
                        async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
                    })
                };
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .keep_alive(true)
                    .header_read_timeout(server.options.read_header_timeout)
                    .max_buf_size(server.options.max_header_size)
                    .serve_connection(TokioIo::new(conn), service);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = draining.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    /// After [`Server::serve`] stopped accepting: let open connections finish
    /// their requests (keep-alive connections close after their current one)
    /// for up to `deadline`, then cut the instances still running. A download
    /// cut this way publishes nothing and its lock is released at once.
    pub async fn drain(&self, deadline: Duration) {
        self.draining.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait()).await.is_err() {
            tracing::warn!(open = self.tasks.len(), "shutdown deadline passed; cutting requests still running");
            self.cut.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), self.tasks.wait()).await;
        }
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let started = Instant::now();
        // The request line is kept only when it is logged.
        let logged = tracing::enabled!(tracing::Level::INFO).then(|| (req.method().clone(), req.uri().clone()));
        let response = if head_size(&req) > self.options.max_header_size {
            text_response(431, "request head too large\n")
        } else if self.options.prometheus && req.uri().path() == "/metrics" {
            self.metrics_response().await
        } else if let Some(key) = req.uri().path().strip_prefix(FOLLOW_ROUTE) {
            self.follow_response(key, &req)
        } else {
            self.answer(req, peer).await
        };
        let Some((method, uri)) = logged else { return response };
        let path = uri.path();
        let status = response.status().as_u16();
        let x_cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok());
        tracing::info!(
            %method,
            path,
            %peer,
            status,
            bytes = response.headers().get("content-length").and_then(|v| v.to_str().ok()),
            x_cache,
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    /// The edge tier's answer, else the guest's (kept by the tier when the
    /// guest allows it).
    async fn answer(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let asked = self.front.as_ref().and_then(|front| Some((front, front.asked(&req)?)));
        let mut lead = None;
        if let Some((front, asked)) = &asked {
            if let Some(resp) = front.answer(asked, &req) {
                return resp;
            }
            match front.flight(asked) {
                Some(Flight::Follow(ahead)) => {
                    front.follow(ahead).await;
                    if let Some(resp) = front.answer(asked, &req) {
                        return resp;
                    }
                }
                Some(Flight::Lead(l)) => lead = Some(l),
                None => {}
            }
        }
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let req = with_host(with_peer(req, peer), &self.services.config.settings().hostname);
        let resp = match self.run_request(req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!(%method, path, error = format!("{e:#}"), "handler instance failed");
                text_response(500, "internal error\n")
            }
        };
        match asked {
            Some((front, asked)) => front.keep(asked, resp, lead),
            None => resp,
        }
    }

    /// A download in progress here, for a peer that waits for it.
    fn follow_response<B>(&self, key: &str, req: &hyper::Request<B>) -> hyper::Response<HyperOutgoingBody> {
        let token = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if !token.and_then(|t| t.strip_prefix("Bearer ")).is_some_and(|t| self.downloads.is_peer(t)) {
            return text_response(403, "forbidden\n");
        }
        let body = StorageKey::parse(key).ok().and_then(|key| self.downloads.follow_here(&key));
        match body {
            Some(body) => {
                let mut resp = hyper::Response::new(stream_body(HandedOff::Stream(body)));
                resp.headers_mut()
                    .insert("content-type", hyper::header::HeaderValue::from_static("application/x-nix-nar"));
                resp
            }
            None => text_response(404, "no such download here\n"),
        }
    }

    async fn metrics_response(&self) -> hyper::Response<HyperOutgoingBody> {
        let m = &self.services.metrics;
        match self.services.metadata.store().total_size().await {
            Ok(size) => {
                m.store_size.set(size as i64);
            }
            Err(e) => tracing::warn!(error = %e, "store size unavailable for /metrics"),
        }
        m.max_size.set(self.services.config.settings().max_size.unwrap_or(0) as i64);
        let mut resp = text_response(200, "");
        *resp.body_mut() = full_body(Bytes::from(m.encode()));
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        resp
    }

    /// A fresh store with this node's limits and deadline; a body its
    /// instance hands off goes to `hand_off`.
    fn new_store(&self, hand_off: HandOff) -> Store<RequestState> {
        let state = RequestState::new(self.services.clone(), self.handler.memory_limit, hand_off);
        let mut store = Store::new(self.handler.pre.engine(), state);
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline((self.options.request_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64);
        store
    }

    async fn instantiate(
        pre: &crate::bindings::CacheNodePre<RequestState>,
        store: &mut Store<RequestState>,
        services: &Services,
    ) -> wasmtime::Result<CacheNode> {
        let started = Instant::now();
        let instance = pre.instantiate_async(store).await;
        services.metrics.instantiation.observe(started.elapsed().as_secs_f64());
        instance
    }

    /// A free instance slot, waiting at most `patience` for one.
    async fn slot(&self, patience: Duration) -> Option<tokio::sync::OwnedSemaphorePermit> {
        tokio::time::timeout(patience, self.handler.slots.clone().acquire_owned()).await.ok()?.ok()
    }

    async fn run_request(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        // Every instance busy: wait for one, then ask the client to retry.
        let Some(slot) = self.slot(SLOT_PATIENCE).await else {
            tracing::warn!("every handler instance is busy");
            return Ok(text_response(503, "busy, retry\n"));
        };
        let hand_off = HandOff::default();
        let mut store = self.new_store(hand_off.clone());
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        let (pre, services) = (self.handler.pre.clone(), self.services.clone());
        // The instance runs in its own task so it can keep streaming the body
        // after the head is sent; its store (and every lease, writer and
        // stream it holds) is dropped when the task ends.
        let cut = self.cut.clone();
        let task = self.tasks.spawn(async move {
            let run = async {
                let node = Self::instantiate(&pre, &mut store, &services).await?;
                node.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            };
            let result = tokio::select! {
                r = run => r,
                _ = cut.cancelled() => Err(wasmtime::Error::msg("cut by the shutdown deadline")),
            };
            // The instance goes back to the pool before its slot does.
            drop(store);
            drop(slot);
            match &result {
                Err(_) if cut.is_cancelled() => tracing::warn!("request cut by the shutdown deadline"),
                Err(e) => {
                    services.metrics.guest_traps.inc();
                    tracing::error!(error = format!("{e:#}"), "handler instance trapped");
                }
                Ok(()) => {}
            }
            result
        });
        match receiver.await {
            Ok(Ok(resp)) => Ok(match hand_off.lock().unwrap_or_else(|p| p.into_inner()).take() {
                // The instance sent the head; the host sends the object.
                Some(body) => resp.map(|_| stream_body(body)),
                None => resp,
            }),
            Ok(Err(e)) => Err(anyhow::anyhow!("handler returned an error: {e:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("handler never set a response")),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("guest trapped")),
                Err(e) => Err(anyhow::anyhow!("handler task failed: {e}")),
            },
        }
    }

    /// Run the guest's LRU pass in a fresh instance.
    pub async fn run_lru(&self) -> anyhow::Result<LruReport> {
        let _slot = self.slot(Duration::MAX).await;
        let mut store = self.new_store(HandOff::default());
        let node = Self::instantiate(&self.handler.pre, &mut store, &self.services).await?;
        let report = node.ncps_edge_maintenance().call_run_lru(&mut store).await?;
        report.map_err(|e| anyhow::anyhow!("LRU pass failed: {e:?}"))
    }

    /// Run the guest's reconcile pass in a fresh instance.
    pub async fn reconcile(&self, dry_run: bool) -> anyhow::Result<ReconcileReport> {
        let _slot = self.slot(Duration::MAX).await;
        let mut store = self.new_store(HandOff::default());
        let node = Self::instantiate(&self.handler.pre, &mut store, &self.services).await?;
        let report = node.ncps_edge_maintenance().call_reconcile(&mut store, dry_run).await?;
        report.map_err(|e| anyhow::anyhow!("reconcile pass failed: {e:?}"))
    }

    /// Run the guest's upstream health check in a fresh instance.
    pub async fn check_upstreams(&self) -> anyhow::Result<Vec<UpstreamHealth>> {
        let _slot = self.slot(Duration::MAX).await;
        let mut store = self.new_store(HandOff::default());
        let node = Self::instantiate(&self.handler.pre, &mut store, &self.services).await?;
        Ok(node.ncps_edge_maintenance().call_check_upstreams(&mut store).await?)
    }
}

/// Header that tells the handler the client's address (see the handler's
/// write audit); whatever a client sent under that name is replaced.
pub const PEER_HEADER: &str = "ncps-edge-peer";

fn with_peer(
    mut req: hyper::Request<hyper::body::Incoming>,
    peer: SocketAddr,
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
fn with_host<B>(mut req: hyper::Request<B>, hostname: &str) -> hyper::Request<B> {
    let readable = req.headers().get(hyper::header::HOST).is_some_and(|h| h.to_str().is_ok_and(|h| !h.is_empty()));
    if req.uri().authority().is_none() && !readable {
        if let Ok(v) = hyper::header::HeaderValue::from_str(hostname) {
            req.headers_mut().insert(hyper::header::HOST, v);
        }
    }
    req
}

/// The size of a request's head as it came: request line and header lines.
fn head_size<B>(req: &hyper::Request<B>) -> usize {
    let line = req.method().as_str().len() + req.uri().to_string().len() + "  HTTP/1.1\r\n".len();
    line + req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + ": \r\n".len()).sum::<usize>()
}

/// Longest a request waits for a free handler instance.
const SLOT_PATIENCE: Duration = Duration::from_secs(30);

/// Bytes read from a handed-off object per frame. A client that stops
/// reading holds about two of them (the frame hyper could not send, the
/// reader's buffer), so this bounds a stalled connection's memory; reads
/// from the page cache are fast at this size too.
const HAND_OFF_CHUNK: usize = 64 << 10;

/// A handed-off object as a response body, read a chunk at a time as the
/// client takes them.
fn stream_body(body: HandedOff) -> HyperOutgoingBody {
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

/// A range of a file as chunks, each read (with a positioned read, on the
/// blocking pool) only when the client has taken the one before: a client
/// that stops reading holds no buffer but the chunk it was being sent.
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
            let chunk = tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt as _;
                let mut buf = vec![0u8; want];
                file.read_exact_at(&mut buf, pos).map(|()| Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            Ok(Some((chunk, pos + want as u64)))
        }
    })
}

fn full_body(bytes: Bytes) -> HyperOutgoingBody {
    Full::new(bytes).map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} }).boxed_unsync()
}

/// A plain-text response produced by the host itself.
pub fn text_response(status: u16, body: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let mut resp = hyper::Response::new(full_body(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}
