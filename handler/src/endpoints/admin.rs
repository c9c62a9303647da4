//! `/admin/…`: maintenance on demand, for deployments without the
//! runtime's schedulers (such as Spin). `POST` with
//! `Authorization: Bearer <--admin-token>`; off (404) without a token.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::wasi::http::types::{Method, ResponseOutparam};
use crate::host::http::{text, Request, Response};
use crate::protocol::route::Route;

/// `POST /admin/lru` (an LRU pass) or `POST /admin/fsck[?dry-run=1]` (a
/// reconcile pass); the report as JSON.
pub fn handle(req: &Request, route: &Route, settings: &Settings, out: ResponseOutparam) {
    let Some(token) = settings.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        return text(out, 404, "not found\n", false);
    };
    let given = req.header("authorization").and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
    if !given.is_some_and(|g| crate::protocol::auth::constant_time_eq(g.as_bytes(), token.as_bytes())) {
        return text(out, 401, "unauthorized\n", false);
    }
    if !matches!(req.method, Method::Post) {
        return text(out, 405, "method not allowed\n", false);
    }
    let report = match route {
        Route::AdminFsck => {
            let dry_run = req.path.split_once('?').is_some_and(|(_, q)| q.split('&').any(|p| p == "dry-run=1"));
            crate::maintenance::reconcile::run(settings, dry_run).map(|r| {
                serde_json::json!({
                    "ran": r.ran, "objects": r.objects, "records": r.records, "orphans": r.orphans,
                    "adopted": r.adopted, "phantoms": r.phantoms, "incomplete": r.incomplete,
                    "busy": r.busy, "dryRun": dry_run,
                })
            })
        }
        _ => crate::maintenance::lru::run(settings).map(|r| {
            serde_json::json!({
                "ran": r.ran, "totalBefore": r.total_before, "totalAfter": r.total_after,
                "evicted": r.evicted, "bytesFreed": r.bytes_freed,
            })
        }),
    };
    match report {
        Ok(body) => {
            Response::new(200).header("content-type", "application/json").send(out, body.to_string().as_bytes(), false)
        }
        Err(e) => text(out, 503, &format!("maintenance pass failed: {e:?}\n"), false),
    }
}
