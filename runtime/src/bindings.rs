//! Host bindings of the whole `cache-node` world, for calling the handler's
//! exports (`wasi:http/incoming-handler` and `ncps:edge/maintenance`). Every
//! import maps onto the existing host implementations.
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "ncps:edge/cache-node",
    imports: { default: async | trappable },
    exports: { default: async },
    with: {
        "wasi:io": wasmtime_wasi::p2::bindings::io,
        "wasi:clocks": wasmtime_wasi::p2::bindings::clocks,
        "wasi:http": wasmtime_wasi_http::p2::bindings::http,
        "ncps:edge/types": ncps_edge_host_services::bindings::types,
        "ncps:edge/locks": ncps_edge_host_services::bindings::locks,
        "ncps:edge/storage": ncps_edge_host_services::bindings::storage,
        "ncps:edge/metadata": ncps_edge_host_services::bindings::metadata,
        "ncps:edge/signer": ncps_edge_host_services::bindings::signer,
        "ncps:edge/config": ncps_edge_host_services::bindings::config,
        "ncps:edge/log": ncps_edge_host_services::bindings::log,
        "ncps:edge/metrics": ncps_edge_host_services::bindings::metrics,
        "ncps:edge/edge-cache": ncps_edge_host_services::bindings::edge_cache,
    },
    require_store_data_send: true,
});

pub use exports::ncps::edge::maintenance::{LruReport, ReconcileReport, UpstreamHealth};
