//! The data of one request's store: WASI, wasi-http, the resource table and
//! the node's services.

use std::sync::Arc;

use ncps_edge_host_services::storage::HandOff;
use ncps_edge_host_services::{HostView, NcpsEdgeView, Services};
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Store data of one handler instance.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    services: Arc<Services>,
    hand_off: HandOff,
    /// Memory cap of the instance.
    pub limits: StoreLimits,
}

impl RequestState {
    /// Fresh state for one request; the instance may use `memory_limit`
    /// bytes; a body it hands off goes to `hand_off`.
    pub fn new(services: Arc<Services>, memory_limit: usize, hand_off: HandOff) -> Self {
        Self {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            services,
            hand_off,
            limits: StoreLimitsBuilder::new().memory_size(memory_limit).instances(4).build(),
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

impl NcpsEdgeView for RequestState {
    fn ncps_edge(&mut self) -> HostView<'_> {
        HostView { table: &mut self.table, services: &self.services, hand_off: &self.hand_off }
    }
}
