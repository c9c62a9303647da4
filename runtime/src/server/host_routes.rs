//! What the host answers itself: `/metrics`, and the internal route on
//! which peers follow this node's downloads.

use bytes::Bytes;
use ncps_edge_host_services::storage::{HandedOff, StorageKey};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use super::bodies::{full_body, stream_body, text_response};
use super::Server;

impl Server {
    /// A download in progress here, for a peer that waits for it.
    pub(super) fn follow_response<B>(&self, key: &str, req: &hyper::Request<B>) -> hyper::Response<HyperOutgoingBody> {
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

    pub(super) async fn metrics_response(&self) -> hyper::Response<HyperOutgoingBody> {
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
}
