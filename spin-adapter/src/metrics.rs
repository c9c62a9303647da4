//! `ncps:edge/metrics`: not collected under Spin. An instance lives for one
//! request and Spin serves no `/metrics` of ours; watch Spin's own request
//! logs and the native nodes' `/metrics` instead.

use crate::bindings::exports::ncps::edge::metrics::{
    CacheResult, FetchOutcome, Guest, LruOutcome, ObjectKind, WriteMethod, WriteOutcome,
};

impl Guest for crate::Adapter {
    fn upstream_fetch(_kind: ObjectKind, _upstream: String, _seconds: f64, _outcome: FetchOutcome) {}
    fn served(_kind: ObjectKind, _cache: CacheResult) {}
    fn write(_method: WriteMethod, _outcome: WriteOutcome) {}
    fn lru_pass(_outcome: LruOutcome, _evicted: u32, _bytes_freed: u64) {}
}
