//! Prometheus metrics of a node. Every family with a known label set is
//! created at start, so its counters read 0 before the first event.

pub mod wit;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Lock type (key without its hash: `download:nar`, `download:narinfo`,
/// `publish:nar`, `lru`), result, mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockLabels {
    /// Lock type.
    pub r#type: String,
    /// `success` or `failure`.
    pub result: String,
    /// `exclusive` or `shared`.
    pub mode: String,
}

/// Lock type and mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockModeLabels {
    /// Lock type.
    pub r#type: String,
    /// `exclusive` or `shared`.
    pub mode: String,
}

/// Lock type, failure reason and mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockFailureLabels {
    /// Lock type.
    pub r#type: String,
    /// `timeout`, `contended`, `backend`, or `lost` (a held lease expired or
    /// its session died before it was released).
    pub reason: String,
    /// `exclusive` or `shared`.
    pub mode: String,
}

/// Lock type only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LockTypeLabels {
    /// Lock type.
    pub r#type: String,
}

/// `hit` or `miss`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `hit` or `miss`.
    pub result: String,
}

/// How a narinfo or NAR was served.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServedLabels {
    /// `hit` or `miss`.
    pub result: String,
    /// Who answered: `memory` (the edge tier, no instance) or `handler`.
    pub tier: String,
}

/// One kind of upstream request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    /// `narinfo` or `nar`.
    pub kind: String,
    /// Upstream base URL.
    pub upstream: String,
    /// `ok`, `not-found`, `rejected` or `error`.
    pub outcome: String,
}

/// A write request and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    /// `PUT` or `DELETE`.
    pub method: String,
    /// `accepted`, `unauthorized`, `forbidden`, `rejected` or `failed`.
    pub outcome: String,
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    /// `ncps_lock_acquisitions_total{type,result,mode}`.
    pub lock_acquisitions: Family<LockLabels, Counter>,
    /// `ncps_lock_hold_duration_seconds{type,mode}`.
    pub lock_hold: Family<LockModeLabels, Histogram>,
    /// `ncps_lock_failures_total{type,reason,mode}`.
    pub lock_failures: Family<LockFailureLabels, Counter>,
    /// `ncps_lock_retry_attempts_total{type}`.
    pub lock_retries: Family<LockTypeLabels, Counter>,
    /// `ncps_narinfo_served_total{result,tier}`.
    pub narinfo_served: Family<ServedLabels, Counter>,
    /// `ncps_nar_served_total{result,tier}`.
    pub nar_served: Family<ServedLabels, Counter>,
    /// `ncps_upstream_fetch_duration_seconds{kind,upstream,outcome}`.
    pub upstream_fetch: Family<UpstreamLabels, Histogram>,
    /// `ncps_store_size_bytes`.
    pub store_size: Gauge,
    /// `ncps_store_max_size_bytes` (0 when unlimited).
    pub max_size: Gauge,
    /// `ncps_lru_runs_total{result}` (`ran`, `skipped`, `error`).
    pub lru_runs: Family<ResultLabels, Counter>,
    /// `ncps_lru_bytes_freed_total`.
    pub lru_bytes_freed: Counter,
    /// `ncps_lru_evicted_total`.
    pub lru_evicted: Counter,
    /// `ncps_component_instantiation_seconds`.
    pub instantiation: Histogram,
    /// `ncps_guest_traps_total`.
    pub guest_traps: Counter,
    /// `ncps_writes_total{method,outcome}`.
    pub writes: Family<WriteLabels, Counter>,
}

fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// How a write can end, for zero-valued series at start.
pub const WRITE_OUTCOMES: &[&str] = &["accepted", "unauthorized", "forbidden", "rejected", "failed"];

/// The lock types this node uses, for zero-valued series at start.
pub const LOCK_TYPES: &[&str] = &["download:nar", "download:narinfo", "publish:nar", "lru"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered and known series at 0.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            lock_acquisitions: Family::default(),
            lock_hold: Family::new_with_constructor(seconds_histogram),
            lock_failures: Family::default(),
            lock_retries: Family::default(),
            narinfo_served: Family::default(),
            nar_served: Family::default(),
            upstream_fetch: Family::new_with_constructor(seconds_histogram),
            store_size: Gauge::default(),
            max_size: Gauge::default(),
            lru_runs: Family::default(),
            lru_bytes_freed: Counter::default(),
            lru_evicted: Counter::default(),
            instantiation: seconds_histogram(),
            guest_traps: Counter::default(),
            writes: Family::default(),
            registry: Registry::default(),
        };
        registry.register("ncps_lock_acquisitions", "Lock acquisitions", m.lock_acquisitions.clone());
        registry.register("ncps_lock_hold_duration_seconds", "How long locks were held", m.lock_hold.clone());
        registry.register("ncps_lock_failures", "Lock acquisitions that failed", m.lock_failures.clone());
        registry.register("ncps_lock_retry_attempts", "Lock acquisition retries", m.lock_retries.clone());
        registry.register("ncps_narinfo_served", "Narinfos served", m.narinfo_served.clone());
        registry.register("ncps_nar_served", "NARs served", m.nar_served.clone());
        registry.register("ncps_upstream_fetch_duration_seconds", "Upstream requests", m.upstream_fetch.clone());
        registry.register("ncps_store_size_bytes", "Bytes of NARs in storage", m.store_size.clone());
        registry.register("ncps_store_max_size_bytes", "--cache-max-size (0: unlimited)", m.max_size.clone());
        registry.register("ncps_lru_runs", "LRU passes", m.lru_runs.clone());
        registry.register("ncps_lru_bytes_freed", "Bytes freed by LRU passes", m.lru_bytes_freed.clone());
        registry.register("ncps_lru_evicted", "NARs evicted by LRU passes", m.lru_evicted.clone());
        registry.register(
            "ncps_component_instantiation_seconds",
            "Handler instantiation time",
            m.instantiation.clone(),
        );
        registry.register("ncps_guest_traps", "Handler instances that trapped", m.guest_traps.clone());
        registry.register("ncps_writes", "PUT and DELETE requests by outcome", m.writes.clone());
        for method in ["PUT", "DELETE"] {
            for outcome in WRITE_OUTCOMES {
                let _ = m.writes.get_or_create(&WriteLabels { method: method.into(), outcome: (*outcome).into() });
            }
        }
        for t in LOCK_TYPES {
            for mode in ["exclusive", "shared"] {
                for result in ["success", "failure"] {
                    let _ = m.lock_acquisitions.get_or_create(&LockLabels {
                        r#type: t.to_string(),
                        result: result.into(),
                        mode: mode.into(),
                    });
                }
                for reason in ["timeout", "contended", "backend", "lost"] {
                    let _ = m.lock_failures.get_or_create(&LockFailureLabels {
                        r#type: t.to_string(),
                        reason: reason.into(),
                        mode: mode.into(),
                    });
                }
            }
            let _ = m.lock_retries.get_or_create(&LockTypeLabels { r#type: t.to_string() });
        }
        for (result, tier) in [("hit", "handler"), ("miss", "handler"), ("hit", "memory")] {
            let labels = ServedLabels { result: result.into(), tier: tier.into() };
            let _ = m.narinfo_served.get_or_create(&labels);
            let _ = m.nar_served.get_or_create(&labels);
        }
        for result in ["ran", "skipped", "error"] {
            let _ = m.lru_runs.get_or_create(&ResultLabels { result: result.into() });
        }
        Metrics { registry, ..m }
    }

    /// The metrics in the OpenMetrics text format Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Count a narinfo or NAR served by the handler.
    pub fn served(&self, narinfo: bool, hit: bool) {
        let family = if narinfo { &self.narinfo_served } else { &self.nar_served };
        let labels = ServedLabels { result: if hit { "hit" } else { "miss" }.into(), tier: "handler".into() };
        family.get_or_create(&labels).inc();
    }

    /// The counter of narinfo (or NAR) hits answered by the edge tier's
    /// memory, to count without a label lookup per request.
    pub fn memory_hits(&self, narinfo: bool) -> Counter {
        self.tier_hits(narinfo, "memory")
    }

    /// The counter of narinfo (or NAR) hits the edge tier answered stale,
    /// while the node could not hear the region (`tier="stale"`).
    pub fn stale_hits(&self, narinfo: bool) -> Counter {
        self.tier_hits(narinfo, "stale")
    }

    fn tier_hits(&self, narinfo: bool, tier: &str) -> Counter {
        let family = if narinfo { &self.narinfo_served } else { &self.nar_served };
        family.get_or_create(&ServedLabels { result: "hit".into(), tier: tier.into() }).clone()
    }
}

/// The lock type of a key: the key without a trailing hash segment.
pub fn lock_type(key: &str) -> &str {
    match key.rsplit_once(':') {
        Some((t, tail)) if tail.len() >= 32 => t,
        _ => key,
    }
}
