//! Handler instances: a fresh store and instance per request, in a slot of
//! the pool, run in a task of its own so the instance can go on (a
//! download) after the response head went out; a body the instance hands
//! off is sent by the host. Background work runs in instances too.

use std::time::{Duration, Instant};

use ncps_edge_host_services::breaker::with_stall_budget;
use ncps_edge_host_services::storage::HandOff;
use ncps_edge_host_services::Services;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::WasiHttpView;

use super::bodies::{stream_body, text_response};
use super::Server;
use crate::bindings::{CacheNode, LruReport, ReconcileReport, UpstreamHealth};
use crate::engine::EPOCH_TICK;
use crate::state::RequestState;

/// Longest a request waits for a free handler instance.
const SLOT_PATIENCE: Duration = Duration::from_secs(30);

impl Server {
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

    pub(super) async fn run_request(
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
        let budget = self.options.stall_budget;
        let task = self.tasks.spawn(async move {
            let run = with_stall_budget(budget, async {
                let node = Self::instantiate(&pre, &mut store, &services).await?;
                node.wasi_http_incoming_handler().call_handle(&mut store, req, out).await
            });
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

    /// A fresh instance for background work, in a slot of the pool
    /// (waiting for one as long as it takes).
    async fn maintenance_instance(&self) -> anyhow::Result<Maintenance> {
        let slot = self.slot(Duration::MAX).await;
        let mut store = self.new_store(HandOff::default());
        let node = Self::instantiate(&self.handler.pre, &mut store, &self.services).await?;
        Ok(Maintenance { node, store, _slot: slot })
    }

    /// Run the guest's LRU pass in a fresh instance.
    pub async fn run_lru(&self) -> anyhow::Result<LruReport> {
        let mut m = self.maintenance_instance().await?;
        let report = m.node.ncps_edge_maintenance().call_run_lru(&mut m.store).await?;
        report.map_err(|e| anyhow::anyhow!("LRU pass failed: {e:?}"))
    }

    /// Run the guest's reconcile pass in a fresh instance.
    pub async fn reconcile(&self, dry_run: bool) -> anyhow::Result<ReconcileReport> {
        let mut m = self.maintenance_instance().await?;
        let report = m.node.ncps_edge_maintenance().call_reconcile(&mut m.store, dry_run).await?;
        report.map_err(|e| anyhow::anyhow!("reconcile pass failed: {e:?}"))
    }

    /// Run the guest's upstream health check in a fresh instance.
    pub async fn check_upstreams(&self) -> anyhow::Result<Vec<UpstreamHealth>> {
        let mut m = self.maintenance_instance().await?;
        Ok(m.node.ncps_edge_maintenance().call_check_upstreams(&mut m.store).await?)
    }
}

/// An instance for background work; its slot goes back after its store.
struct Maintenance {
    node: CacheNode,
    store: Store<RequestState>,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}
