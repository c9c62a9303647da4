//! The informational endpoints: `/`, `/nix-cache-info`, `/pubkey`.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::signer;
use crate::bindings::wasi::http::types::ResponseOutparam;
use crate::host::http::{text, Response};
use crate::protocol::narinfo::STORE_DIR;

/// `GET /`: the cache's hostname and public key as JSON.
pub fn root(settings: &Settings, out: ResponseOutparam, head: bool) {
    let body = serde_json::json!({ "hostname": settings.hostname, "publicKey": signer::public_key() });
    Response::new(200).header("content-type", "application/json").send(out, body.to_string().as_bytes(), head)
}

/// `GET /nix-cache-info`.
pub fn cache_info(settings: &Settings, out: ResponseOutparam, head: bool) {
    let body = format!("StoreDir: {STORE_DIR}\nWantMassQuery: 1\nPriority: {}\n", settings.priority);
    Response::new(200).header("content-type", "text/x-nix-cache-info").send(out, body.as_bytes(), head)
}

/// `GET /pubkey`: the public key in Nix's `trusted-public-keys` format.
pub fn pubkey(out: ResponseOutparam, head: bool) {
    text(out, 200, &format!("{}\n", signer::public_key()), head)
}
