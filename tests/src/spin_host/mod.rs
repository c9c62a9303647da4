//! A Spin-shaped host: the composed component (`handler.wasm` plugged with
//! the Spin adapter) run the way Spin 3.x's HTTP trigger runs it, one fresh
//! instance per request, with exactly the Spin host interfaces the adapter
//! imports (`fermyon:spin/{variables,redis,postgres,mysql}@2.0.0`,
//! `wasi:keyvalue/{store,batch}@0.2.0-draft2`, bindings generated from the
//! vendored Spin WIT) backed by real clients:
//! the machine's Redis, PostgreSQL and MariaDB, and `wasi:http` for S3 and
//! upstreams. It grants no key-value store, so the adapter's node-local
//! tier is off here: every lookup goes to the database.
//!
//! The same checks run against a real `spin up` in `tests/tests/spin.rs`
//! (see [`crate::spin_up`]); this host stays for what a real Spin cannot be
//! made to do on cue: kill an instance mid-download (its lease must expire),
//! and run many nodes in one process for the benchmarks.

mod key_value;
mod mysql;
mod postgres;
mod redis;
mod shared;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, Engine, Store};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::WasiHttpView as _;

pub use shared::Shared;
pub use state::SpinState;

/// The composed component, built from this build's handler and adapter.
pub fn composed_component() -> &'static [u8] {
    static COMPOSED: OnceLock<Vec<u8>> = OnceLock::new();
    COMPOSED.get_or_init(|| {
        let adapter = std::fs::read(ncps_edge::SPIN_ADAPTER_WASM_PATH).expect("the Spin adapter was built");
        ncps_edge_spin_compose::compose(ncps_edge::HANDLER_WASM, &adapter).expect("composition")
    })
}

/// The composed component compiled and linked once per process.
fn prepared() -> &'static ProxyPre<SpinState> {
    static PRE: OnceLock<ProxyPre<SpinState>> = OnceLock::new();
    PRE.get_or_init(|| {
        let engine = Engine::new(&Config::new()).expect("engine");
        let component = Component::new(&engine, composed_component()).expect("the composed component compiles");
        let mut linker = Linker::<SpinState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("wasi");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker).expect("wasi-http");
        state::add_spin_to_linker(&mut linker).expect("spin interfaces");
        ProxyPre::new(linker.instantiate_pre(&component).expect("every import is provided")).expect("proxy")
    })
}

/// A running Spin-shaped node.
pub struct SpinNode {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

/// Spin variables of a node in front of `upstream` (trusting `key`) on the
/// shared Redis, PostgreSQL database and bucket a native node would use
/// (`lock_prefix` as its `--cache-lock-redis-key-prefix`).
pub fn variables(
    upstream: &str,
    key: &str,
    database_url: &str,
    bucket: &ncps_edge_test_support::S3Bucket,
    lock_prefix: &str,
) -> HashMap<String, String> {
    [
        ("hostname", "test-cache".to_owned()),
        ("upstream_urls", upstream.to_owned()),
        ("upstream_public_keys", key.to_owned()),
        ("redis_address", format!("redis://{}", ncps_edge_test_support::redis_addr())),
        ("lock_key_prefix", lock_prefix.to_owned()),
        ("database_url", database_url.to_owned()),
        ("s3_endpoint", bucket.endpoint.clone()),
        ("s3_bucket", bucket.bucket.clone()),
        ("s3_access_key_id", bucket.access_key.clone()),
        ("s3_secret_access_key", bucket.secret_key.clone()),
        ("s3_force_path_style", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl SpinNode {
    /// Serve on a free port with these Spin variables.
    pub async fn start(variables: HashMap<String, String>) -> Self {
        Self::serve(variables, None).await
    }

    /// As [`SpinNode::start`], but an instance still running after
    /// `deadline` is killed: its store is dropped with no guest code run,
    /// as when an instance traps (leases it holds are not released).
    pub async fn start_killing_after(variables: HashMap<String, String>, deadline: std::time::Duration) -> Self {
        Self::serve(variables, Some(deadline)).await
    }

    async fn serve(variables: HashMap<String, String>, deadline: Option<std::time::Duration>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let variables = Arc::new(variables);
        let pre = tokio::task::spawn_blocking(|| prepared().clone()).await.expect("compile");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (pre, variables) = (pre.clone(), variables.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(pre.clone(), variables.clone(), deadline, req));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { addr, task }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SpinNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// One request, one fresh instance, as Spin's HTTP trigger does.
async fn handle(
    pre: ProxyPre<SpinState>,
    variables: Arc<HashMap<String, String>>,
    deadline: Option<std::time::Duration>,
    req: hyper::Request<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<Body>> {
    let mut store = Store::new(pre.engine(), SpinState::new(variables));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let req = store.data_mut().http().new_incoming_request(Scheme::Http, req)?;
    let out = store.data_mut().http().new_response_outparam(sender)?;
    let task = tokio::spawn(async move {
        let run = async {
            let proxy = pre.instantiate_async(&mut store).await?;
            proxy.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
        };
        match deadline {
            None => run.await,
            Some(deadline) => tokio::time::timeout(deadline, run)
                .await
                .unwrap_or_else(|_| Err(wasmtime::Error::msg("instance killed at its deadline"))),
        }
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(e)) => Err(anyhow::anyhow!("handler error: {e:?}")),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(anyhow::anyhow!("handler set no response")),
            // A trap is a 500, as Spin answers it.
            Ok(Err(e)) => Ok(trap_response(&format!("{e:#}"))),
            Err(e) => Err(anyhow::anyhow!("instance task failed: {e}")),
        },
    }
}

fn trap_response(why: &str) -> hyper::Response<Body> {
    use http_body_util::BodyExt as _;
    eprintln!("spin-shaped host: instance trapped: {why}");
    let body = http_body_util::Full::new(bytes::Bytes::from_static(b"trapped\n"))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
    resp
}
