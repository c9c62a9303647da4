//! `ncps:edge/metrics`: the guest's measurements into the node's registry.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{Metrics, ResultLabels, UpstreamLabels, WriteLabels};
use crate::bindings::metrics::{self, CacheResult, FetchOutcome, LruOutcome, ObjectKind, WriteMethod, WriteOutcome};
use crate::NcpsEdgeView;

struct MetricsView<'a>(&'a Arc<Metrics>);

struct HasMetrics;

impl HasData for HasMetrics {
    type Data<'a> = MetricsView<'a>;
}

fn kind(k: ObjectKind) -> &'static str {
    match k {
        ObjectKind::Narinfo => "narinfo",
        ObjectKind::Nar => "nar",
    }
}

fn outcome(o: FetchOutcome) -> &'static str {
    match o {
        FetchOutcome::Ok => "ok",
        FetchOutcome::NotFound => "not-found",
        FetchOutcome::Rejected => "rejected",
        FetchOutcome::Error => "error",
    }
}

impl metrics::Host for MetricsView<'_> {
    async fn upstream_fetch(
        &mut self,
        k: ObjectKind,
        upstream: String,
        seconds: f64,
        o: FetchOutcome,
    ) -> wasmtime::Result<()> {
        let labels = UpstreamLabels { kind: kind(k).into(), upstream, outcome: outcome(o).into() };
        self.0.upstream_fetch.get_or_create(&labels).observe(seconds);
        Ok(())
    }

    async fn served(&mut self, k: ObjectKind, result: CacheResult) -> wasmtime::Result<()> {
        self.0.served(k == ObjectKind::Narinfo, result == CacheResult::Hit);
        Ok(())
    }

    async fn write(&mut self, method: WriteMethod, o: WriteOutcome) -> wasmtime::Result<()> {
        let method = match method {
            WriteMethod::Put => "PUT",
            WriteMethod::Delete => "DELETE",
        };
        let outcome = match o {
            WriteOutcome::Accepted => "accepted",
            WriteOutcome::Unauthorized => "unauthorized",
            WriteOutcome::Forbidden => "forbidden",
            WriteOutcome::Rejected => "rejected",
            WriteOutcome::Failed => "failed",
        };
        self.0.writes.get_or_create(&WriteLabels { method: method.into(), outcome: outcome.into() }).inc();
        Ok(())
    }

    async fn lru_pass(&mut self, o: LruOutcome, evicted: u32, bytes_freed: u64) -> wasmtime::Result<()> {
        let result = match o {
            LruOutcome::Ran => "ran",
            LruOutcome::Skipped => "skipped",
            LruOutcome::Error => "error",
        };
        self.0.lru_runs.get_or_create(&ResultLabels { result: result.into() }).inc();
        self.0.lru_evicted.inc_by(u64::from(evicted));
        self.0.lru_bytes_freed.inc_by(bytes_freed);
        Ok(())
    }
}

pub(crate) fn add_to_linker<T: NcpsEdgeView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    metrics::add_to_linker::<T, HasMetrics>(linker, |t| MetricsView(&t.ncps_edge().services.metrics))
}
