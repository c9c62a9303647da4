//! `/admin/…`: maintenance on demand, for deployments without the
//! runtime's schedulers (such as Spin).

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::wasi::http::types::{Method, ResponseOutparam};
use crate::host::http::{text, Request, Response};

/// `POST /admin/lru` with `Authorization: Bearer <--admin-token>`: run an
/// LRU pass now. Off (404) when no admin token is configured.
pub fn lru(req: &Request, settings: &Settings, out: ResponseOutparam) {
    let Some(token) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return text(out, 404, "not found\n", false);
    };
    let given = req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    if !given.is_some_and(|g| super::constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return text(out, 401, "unauthorized\n", false);
    }
    if !matches!(req.method, Method::Post) {
        return text(out, 405, "method not allowed\n", false);
    }
    match crate::maintenance::lru::run(settings) {
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
