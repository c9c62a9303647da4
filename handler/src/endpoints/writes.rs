//! PUT and DELETE: who may write, the write itself, and one audit line and
//! one `ncps_writes_total` count for every write, accepted or refused.

use crate::bindings::ncps::edge::config::Settings;
use crate::bindings::ncps::edge::metrics::{self, WriteMethod, WriteOutcome};
use crate::bindings::wasi::http::types::{Method, ResponseOutparam};
use crate::host::edge;
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::route::Route;

use super::auth::{self, Denied};
use super::written::Written;

/// Header the host sets to the client's address (any such header a client
/// sends is replaced).
pub const PEER_HEADER: &str = "ncps-edge-peer";

fn outcome_name(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Accepted => "accepted",
        WriteOutcome::Unauthorized => "unauthorized",
        WriteOutcome::Forbidden => "forbidden",
        WriteOutcome::Rejected => "rejected",
        WriteOutcome::Failed => "failed",
    }
}

/// Handle a PUT or DELETE of `route`.
pub fn handle(req: &Request, route: Route, settings: &Settings, out: ResponseOutparam) {
    let put = matches!(req.method, Method::Put);
    let method = if put { WriteMethod::Put } else { WriteMethod::Delete };
    let target = match &route {
        Route::Narinfo(hash) => hash.clone(),
        Route::Nar(path) => path.key(),
        _ => String::new(),
    };
    // What an accepted write changes, for the edge tier of every node.
    let changed = match &route {
        Route::Narinfo(hash) => Some(edge::narinfo_path(hash)),
        Route::Nar(path) => Some(edge::object_path(&path.key())),
        _ => None,
    };
    let enabled = if put { settings.allow_put } else { settings.allow_delete };
    let writable = matches!(route, Route::Narinfo(_) | Route::Nar(_));
    let (written, credential) = if !enabled || !writable {
        let w =
            Written { status: 405, message: "method not allowed\n".into(), outcome: WriteOutcome::Forbidden, target };
        (w, "none")
    } else {
        match auth::may_write(req, settings, put) {
            Err(Denied::Unauthorized) => {
                let w = Written {
                    status: 401,
                    message: "unauthorized\n".into(),
                    outcome: WriteOutcome::Unauthorized,
                    target,
                };
                (w, "none")
            }
            Err(Denied::Forbidden) => {
                let w = Written {
                    status: 403,
                    message: "this credential may not write\n".into(),
                    outcome: WriteOutcome::Forbidden,
                    target,
                };
                (w, "read-only")
            }
            Ok(credential) => {
                let w = match (put, route) {
                    (true, Route::Narinfo(hash)) => super::narinfo::put(settings, req, &hash),
                    (false, Route::Narinfo(hash)) => super::narinfo::delete(&hash),
                    (true, Route::Nar(path)) => super::nar::upload::put(settings, req, &path),
                    (_, Route::Nar(path)) => super::nar::delete(&path),
                    _ => Written::rejected(405, "method not allowed\n", target),
                };
                (w, credential)
            }
        }
    };
    if let (WriteOutcome::Accepted, Some(path)) = (written.outcome, changed) {
        edge::purge(&[path]);
    }
    metrics::write(method, written.outcome);
    let status = written.status.to_string();
    logging::info(
        "write",
        &[
            ("method", if put { "PUT" } else { "DELETE" }),
            ("path", &req.path),
            ("object", &written.target),
            ("credential", credential),
            ("peer", req.header(PEER_HEADER).unwrap_or("unknown")),
            ("host", &req.authority),
            ("outcome", outcome_name(written.outcome)),
            ("status", &status),
        ],
    );
    match written.status {
        204 => Response::new(204).send(out, b"", false),
        401 => Response::new(401).header("www-authenticate", "Basic realm=\"ncps-edge\"").send(
            out,
            written.message.as_bytes(),
            false,
        ),
        status => text(out, status, &written.message, false),
    }
}
