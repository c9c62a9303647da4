//! The HTTP server: every request gets a fresh handler instance in its own
//! store; a trap before the response head becomes a 500, and the server
//! keeps serving.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use ncps_edge_host_services::Services;
use tokio::net::TcpListener;
use wasmtime::Store;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use crate::engine::{Handler, EPOCH_TICK};
use crate::state::RequestState;

/// A node's request handling: the handler and the services it may use.
pub struct Server {
    handler: Handler,
    services: Arc<Services>,
    request_timeout: Duration,
}

impl Server {
    /// A server running `handler` against `services`; a request's instance is
    /// interrupted after `request_timeout`.
    pub fn new(handler: Handler, services: Arc<Services>, request_timeout: Duration) -> Self {
        Self {
            handler,
            services,
            request_timeout,
        }
    }

    /// Accept connections on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
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
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req, peer).await) }
                });
                if let Err(e) = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(conn), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }

    async fn handle(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
        peer: SocketAddr,
    ) -> hyper::Response<HyperOutgoingBody> {
        let started = Instant::now();
        let (method, path) = (req.method().clone(), req.uri().path().to_owned());
        let response = match self.run_instance(req).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::error!(%method, path, error = format!("{e:#}"), "handler instance failed");
                error_response(500, "internal error\n")
            }
        };
        tracing::info!(
            %method,
            path,
            %peer,
            status = response.status().as_u16(),
            content_length = response.headers().get("content-length").and_then(|v| v.to_str().ok()),
            x_cache = response.headers().get("x-cache").and_then(|v| v.to_str().ok()),
            duration_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        response
    }

    async fn run_instance(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> anyhow::Result<hyper::Response<HyperOutgoingBody>> {
        let pre = self.handler.pre.clone();
        let mut store = Store::new(
            pre.engine(),
            RequestState::new(self.services.clone(), self.handler.memory_limit),
        );
        store.limiter(|s| &mut s.limits);
        let ticks = (self.request_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(sender)?;
        // The instance runs in its own task so it can keep streaming the body
        // after the head is sent; its store (and every lease, writer and
        // stream it holds) is dropped when the task ends.
        let task = tokio::spawn(async move {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        });
        match receiver.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(anyhow::anyhow!("handler returned an error: {e:?}")),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(anyhow::anyhow!("handler never set a response")),
                Ok(Err(e)) => Err(anyhow::Error::from(e).context("guest trapped")),
                Err(e) => Err(anyhow::anyhow!("handler task failed: {e}")),
            },
        }
    }
}

/// A plain-text response produced by the host itself.
pub fn error_response(status: u16, body: &'static str) -> hyper::Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from_static(body.as_bytes()))
        .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
