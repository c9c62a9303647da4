//! The informational endpoints: `/`, `/nix-cache-info`, `/pubkey`.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::signer;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::host::edge::hit_control;
use crate::host::http::{text, Response};
use crate::protocol::narinfo::STORE_DIR;

/// The answer when the host cannot load our key (it logged why): retry.
fn no_key(out: ResponseOutparam, head: bool) {
    text(out, 503, "signing key unavailable\n", head)
}

/// `GET /`: the cache's hostname and public key as JSON.
pub fn root(settings: &Settings, out: ResponseOutparam, head: bool) {
    let Ok(key) = signer::public_key() else { return no_key(out, head) };
    let body = serde_json::json!({ "hostname": settings.hostname, "publicKey": key });
    Response::new(200)
        .header("content-type", "application/json")
        .header_if("cache-control", hit_control(settings))
        .send(out, body.to_string().as_bytes(), head)
}

/// `GET /nix-cache-info`.
pub fn cache_info(settings: &Settings, out: ResponseOutparam, head: bool) {
    let body = format!("StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {}\n", settings.priority);
    Response::new(200)
        .header("content-type", "text/x-nix-cache-info")
        .header_if("cache-control", hit_control(settings))
        .send(out, body.as_bytes(), head)
}

/// `GET /pubkey`: the public key in Nix's `trusted-public-keys` format.
pub fn pubkey(settings: &Settings, out: ResponseOutparam, head: bool) {
    let Ok(key) = signer::public_key() else { return no_key(out, head) };
    Response::new(200)
        .header("content-type", "text/plain; charset=utf-8")
        .header_if("cache-control", hit_control(settings))
        .send(out, format!("{key}\n").as_bytes(), head)
}
