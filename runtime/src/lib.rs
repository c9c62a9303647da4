//! The ncps-edge runtime: CLI and configuration, the wasmtime engine that
//! runs one fresh handler instance per request, and the HTTP server.
#![deny(missing_docs)]

pub mod backends;
pub mod bindings;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod import;
pub mod logs;
pub mod node;
pub mod schedulers;
pub mod server;
pub mod state;
pub mod tier;

/// The handler component, built by `build.rs`.
pub const HANDLER_WASM: &[u8] = include_bytes!(env!("NCPS_EDGE_HANDLER_WASM"));

/// Where the build left the Spin adapter component (built with the
/// handler; see `spin-adapter/`), for the Spin tests and tooling.
pub const SPIN_ADAPTER_WASM_PATH: &str = env!("NCPS_EDGE_SPIN_ADAPTER_WASM");

/// `ncps-edge --version`: the crate version and the handler's content hash.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (handler sha256:", env!("NCPS_EDGE_HANDLER_SHA256"), ")");
