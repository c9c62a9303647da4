//! The HTTP server: accepting and draining connections, and each
//! request's way: what the edge tier keeps is answered from memory (see
//! [`crate::tier`]); every other request gets a fresh handler instance
//! ([`instances`]); a trap before the response head becomes a 500, and the
//! server keeps serving. The host itself answers only `/metrics` and its
//! peers' follow route ([`host_routes`]).

mod bodies;
mod host_routes;
mod instances;
mod requests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
// hyper-util's adapter, not wasmtime-wasi-http's: it says the socket takes
// vectored writes, so hyper queues body chunks instead of copying them into
// a per-connection buffer that keeps the capacity of the largest body it
// ever sent (8 MiB per keep-alive connection after one large NAR hit).
use hyper_util::rt::{TokioIo, TokioTimer};
use ncps_edge_host_services::cluster::channel::Channel;
use ncps_edge_host_services::storage::follow::{Followed, FOLLOW_ROUTE};
use ncps_edge_host_services::Services;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

pub use bodies::text_response;
pub use requests::PEER_HEADER;
use requests::{head_size, with_host, with_peer};

use crate::engine::Handler;
use crate::tier::{Flight, Front};

/// Limits of the HTTP front door.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Deadline of one request's instance.
    pub request_timeout: Duration,
    /// What one request may lose to stalled backends in all (twice
    /// `--cache-backend-timeout`): deadlines do not stack.
    pub stall_budget: Duration,
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
            stall_budget: Duration::from_secs(6),
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
}
