//! The ncps-edge request handler.
//!
//! A `wasm32-wasip2` component: one fresh instance per HTTP request. It holds
//! no state; it reaches storage, metadata, locks and the signing key only
//! through the `ncps:edge` WIT imports, and upstream caches through
//! `wasi:http/outgoing-handler`. All cache policy lives here.
//!
//! The Nix protocol modules ([`hash`], [`narinfo`], [`signature`], [`route`])
//! are plain Rust and are unit-tested natively.

pub mod hash;
pub mod narinfo;
pub mod route;
pub mod signature;

mod app;
mod health;
mod http;
mod logging;
mod lru;
mod nar;
mod narinfos;
mod records;
mod time;
mod upstream;

wit_bindgen::generate!({
    path: "../wit",
    world: "ncps:edge/cache-node",
    generate_all,
});

struct Handler;

impl exports::wasi::http::incoming_handler::Guest for Handler {
    fn handle(request: wasi::http::types::IncomingRequest, out: wasi::http::types::ResponseOutparam) {
        app::handle(http::Request::new(request), out);
    }
}

// The export only exists in the component; a native build (unit tests)
// has no component export names to give the linker.
#[cfg(target_arch = "wasm32")]
export!(Handler);

impl exports::ncps::edge::maintenance::Guest for Handler {
    fn run_lru() -> Result<exports::ncps::edge::maintenance::LruReport, ncps::edge::types::Error> {
        lru::run(&ncps::edge::config::get_settings())
    }

    fn check_upstreams() -> Vec<exports::ncps::edge::maintenance::UpstreamHealth> {
        health::check()
    }
}
