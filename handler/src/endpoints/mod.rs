//! Request dispatch and access control; one module per kind of route.

mod admin;
mod info;
mod nar;
mod narinfo;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::bindings::ncps::edge::config::{self, Settings};
use crate::bindings::wasi::http::types::{Method, ResponseOutparam};
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::route::{self, Route, RouteError};

/// Handle one request.
pub fn handle(req: Request, out: ResponseOutparam) {
    let settings = config::get_settings();
    let route = match route::parse(&req.path) {
        Ok(r) => r,
        Err(RouteError::BadRequest) => {
            logging::debug("rejected malformed path", &[("url", &req.path)]);
            return text(out, 400, "malformed path\n", false);
        }
        Err(RouteError::NotFound) => return text(out, 404, "not found\n", false),
    };
    if matches!(route, Route::AdminLru | Route::AdminFsck) {
        return admin::handle(&req, &route, &settings, out);
    }
    if route != Route::Healthz && !authorized(&req, &settings) {
        return Response::new(401).header("www-authenticate", "Basic realm=\"ncps-edge\"").send(
            out,
            b"unauthorized\n",
            false,
        );
    }
    let head = matches!(req.method, Method::Head);
    match (&req.method, route) {
        (Method::Get | Method::Head, Route::Root) => info::root(&settings, out, head),
        (Method::Get | Method::Head, Route::CacheInfo) => info::cache_info(&settings, out, head),
        (Method::Get | Method::Head, Route::PubKey) => info::pubkey(out, head),
        (Method::Get | Method::Head, Route::Healthz) => text(out, 200, "OK\n", head),
        (Method::Get | Method::Head, Route::Narinfo(hash)) => narinfo::get(&settings, &hash, out, head),
        (Method::Put, Route::Narinfo(hash)) if settings.allow_put => narinfo::put(&settings, &req, &hash, out),
        (Method::Delete, Route::Narinfo(hash)) if settings.allow_delete => narinfo::delete(&hash, out),
        (Method::Get | Method::Head, Route::Nar(path)) => nar::get(&settings, &req, &path, out, head),
        (Method::Put, Route::Nar(path)) if settings.allow_put => nar::upload::put(&req, &path, out),
        (Method::Delete, Route::Nar(path)) if settings.allow_delete => nar::delete(&path, out),
        _ => text(out, 405, "method not allowed\n", false),
    }
}

/// Whether the request carries the `--cache-get-token` (as a bearer token,
/// or as the password of basic auth, which is what a netrc file gives Nix).
fn authorized(req: &Request, settings: &Settings) -> bool {
    let Some(token) = settings.get_token.as_deref().filter(|t| !t.is_empty()) else {
        return true;
    };
    let Some(auth) = req.header("authorization") else {
        return false;
    };
    if let Some(bearer) = auth.strip_prefix("Bearer ") {
        return constant_time_eq(bearer.trim().as_bytes(), token.as_bytes());
    }
    auth.strip_prefix("Basic ")
        .and_then(|b| B64.decode(b.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, p)| p.to_owned()))
        .is_some_and(|password| constant_time_eq(password.as_bytes(), token.as_bytes()))
}

/// Compare secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
