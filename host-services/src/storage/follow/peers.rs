//! Following across nodes: a node with an address for its peers
//! (`--cache-node-url`) announces each download on the cluster's channel;
//! a waiting node follows it over the downloading node's internal route
//! ([`FOLLOW_ROUTE`]), for the cache's nodes only ([`Peers::token`]).

use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::Cluster;
use crate::storage::{Body, StorageKey};

/// The internal route on which a node serves its downloads in progress to
/// its peers: `<FOLLOW_ROUTE><storage key>`.
pub const FOLLOW_ROUTE: &str = "/_ncps-edge/follow/";

/// How a node reaches its peers' downloads and lets them reach its own.
pub struct Peers {
    /// The cluster, where downloads are announced.
    pub cluster: Arc<Cluster>,
    /// This node's address for its peers (`http://host:port`).
    pub url: String,
    /// What a peer presents on [`FOLLOW_ROUTE`] (the same on every node of a cache).
    pub token: String,
    /// Deadline of connecting to a peer and of its answer's head.
    pub timeout: std::time::Duration,
}

impl Peers {
    /// The token of a cache whose signing key is `secret_key`: nodes that
    /// sign alike follow each other.
    pub fn token_for(secret_key: &str) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("ncps-edge follow\n{secret_key}"));
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is what peers present.
    pub fn is_peer(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq as _;
        bool::from(self.token.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Follow `key` at the peer at `url`.
    pub(super) async fn follow(&self, url: &str, key: &StorageKey) -> Option<Body> {
        use futures_util::TryStreamExt as _;
        use http_body_util::BodyExt as _;
        let uri: hyper::Uri = format!("{url}{FOLLOW_ROUTE}{}", key.as_str()).parse().ok()?;
        let req = hyper::Request::get(uri)
            .header(hyper::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(http_body_util::Empty::<Bytes>::new())
            .ok()?;
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
        let resp = match tokio::time::timeout(self.timeout, client.request(req)).await {
            Ok(Ok(resp)) if resp.status() == hyper::StatusCode::OK => resp,
            Ok(Ok(resp)) => {
                tracing::debug!(key = key.as_str(), peer = url, status = %resp.status(), "peer has no download to follow");
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!(key = key.as_str(), peer = url, error = %e, "cannot follow a peer's download");
                return None;
            }
            Err(_) => {
                tracing::warn!(key = key.as_str(), peer = url, "peer did not answer in time");
                return None;
            }
        };
        let stream = resp.into_body().into_data_stream().map_err(std::io::Error::other);
        tracing::info!(key = key.as_str(), peer = url, "following a peer's download");
        Some(Box::pin(tokio_util::io::StreamReader::new(stream)))
    }
}
