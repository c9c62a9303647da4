//! The store data of one instance and the Spin interfaces' bindings.

use std::collections::HashMap;
use std::sync::Arc;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Host bindings of the Spin interfaces, from the vendored Spin WIT.
#[allow(missing_docs)]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: ["../wit", "../spin-adapter/wit"],
        world: "ncps:spin-adapter/spin-imports",
        imports: { default: async },
        with: {
            "fermyon:spin/redis.connection": super::super::redis::RedisConnection,
            "fermyon:spin/postgres.connection": super::super::postgres::PgConnection,
            "fermyon:spin/mysql.connection": super::super::mysql::MySqlConnection,
        },
        require_store_data_send: true,
    });
}

use bindings::fermyon::spin::{mysql, postgres, rdbms_types, redis, variables};
use bindings::wasi::keyvalue;

/// One instance's WASI, wasi-http, resources and Spin variables.
pub struct SpinState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    pub(super) table: ResourceTable,
    variables: Arc<HashMap<String, String>>,
}

impl SpinState {
    /// Fresh state with the application's `variables`.
    pub fn new(variables: Arc<HashMap<String, String>>) -> Self {
        Self {
            wasi: WasiCtx::builder().inherit_stderr().build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            variables,
        }
    }
}

impl WasiView for SpinState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for SpinState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: Default::default() }
    }
}

impl variables::Host for SpinState {
    async fn get(&mut self, name: String) -> Result<String, variables::Error> {
        // Spin's rule for names: lower-case letters, digits and `_`.
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(variables::Error::InvalidName(name));
        }
        self.variables.get(&name).cloned().ok_or(variables::Error::Undefined(name))
    }
}

impl rdbms_types::Host for SpinState {}

/// Add the Spin interfaces the adapter imports.
pub fn add_spin_to_linker(linker: &mut Linker<SpinState>) -> wasmtime::Result<()> {
    variables::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    redis::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    rdbms_types::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    postgres::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    mysql::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    keyvalue::store::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    keyvalue::batch::add_to_linker::<SpinState, HasSelf<SpinState>>(linker, |s| s)?;
    Ok(())
}
