//! Request dispatch, access control and the small informational endpoints.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::http::{text, Request, Response};
use crate::ncps::edge::config::{self, Settings};
use crate::ncps::edge::signer;
use crate::route::{self, Route, RouteError};
use crate::wasi::http::types::{Method, ResponseOutparam};
use crate::{logging, nar, narinfos};

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
    if route == Route::AdminLru {
        return admin_lru(&req, &settings, out);
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
        (Method::Get | Method::Head, Route::Root) => {
            let body = serde_json::json!({ "hostname": settings.hostname, "publicKey": signer::public_key() });
            Response::new(200).header("content-type", "application/json").send(out, body.to_string().as_bytes(), head)
        }
        (Method::Get | Method::Head, Route::CacheInfo) => {
            let body =
                format!("StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n", crate::narinfo::STORE_DIR, settings.priority);
            Response::new(200).header("content-type", "text/x-nix-cache-info").send(out, body.as_bytes(), head)
        }
        (Method::Get | Method::Head, Route::PubKey) => text(out, 200, &format!("{}\n", signer::public_key()), head),
        (Method::Get | Method::Head, Route::Healthz) => text(out, 200, "OK\n", head),
        (Method::Get | Method::Head, Route::Narinfo(hash)) => narinfos::get(&settings, &hash, out, head),
        (Method::Put, Route::Narinfo(hash)) if settings.allow_put => narinfos::put(&settings, &req, &hash, out),
        (Method::Delete, Route::Narinfo(hash)) if settings.allow_delete => narinfos::delete(&hash, out),
        (Method::Get | Method::Head, Route::Nar(path)) => nar::get(&settings, &req, &path, out, head),
        (Method::Put, Route::Nar(path)) if settings.allow_put => nar::put(&req, &path, out),
        (Method::Delete, Route::Nar(path)) if settings.allow_delete => nar::delete(&path, out),
        _ => text(out, 405, "method not allowed\n", false),
    }
}

/// `POST /admin/lru` with `Authorization: Bearer <--admin-token>`: run an LRU
/// pass now (for deployments without the runtime's scheduler). Off (404)
/// when no admin token is configured.
fn admin_lru(req: &Request, settings: &Settings, out: ResponseOutparam) {
    let Some(token) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return text(out, 404, "not found\n", false);
    };
    let given = req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return text(out, 401, "unauthorized\n", false);
    }
    if !matches!(req.method, Method::Post) {
        return text(out, 405, "method not allowed\n", false);
    }
    match crate::lru::run(settings) {
        Ok(r) => {
            let body = serde_json::json!({
                "ran": r.ran, "totalBefore": r.total_before, "totalAfter": r.total_after,
                "evicted": r.evicted, "bytesFreed": r.bytes_freed,
            });
            Response::new(200).header("content-type", "application/json").send(out, body.to_string().as_bytes(), false)
        }
        Err(e) => text(out, 503, &format!("LRU pass failed: {e:?}\n"), false),
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
