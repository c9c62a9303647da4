//! Request dispatch and access control; one module per kind of route.

mod admin;
mod auth;
mod info;
mod nar;
mod narinfo;
mod writes;
mod written;

use crate::bindings::ncps::edge::config;
use crate::bindings::wasi::http::types::{Method, ResponseOutparam};
use crate::host::edge;
use crate::host::http::{text, Request, Response};
use crate::host::logging;
use crate::protocol::route::{self, Route, RouteError};

/// Handle one request. A path that names nothing is answered before the
/// settings are read (under Spin, that read is two calls to the node's
/// store), so junk traffic costs a node little; a narinfo or NAR read
/// says what it will look up first, so a host that reads its tier from a
/// store reads both in one call.
pub fn handle(req: Request, out: ResponseOutparam) {
    let route = match route::parse(&req.path) {
        Ok(r) => r,
        Err(RouteError::BadRequest) => {
            logging::debug("rejected malformed path", &[("url", &req.path)]);
            return text(out, 400, "malformed path\n", false);
        }
        Err(RouteError::NotFound) => return text(out, 404, "not found\n", false),
    };
    if matches!(req.method, Method::Get | Method::Head) {
        match &route {
            Route::Narinfo(hash) => edge::will_read(&edge::narinfo_path(hash)),
            Route::Nar(path) => edge::will_read(&edge::object_path(&path.key())),
            _ => {}
        }
    }
    let settings = config::get_settings();
    if matches!(route, Route::AdminLru | Route::AdminFsck) {
        return admin::handle(&req, &route, &settings, out);
    }
    if matches!(req.method, Method::Put | Method::Delete) {
        return writes::handle(&req, route, &settings, out);
    }
    if route != Route::Healthz && !auth::may_read(&req, &settings) {
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
        (Method::Get | Method::Head, Route::PubKey) => info::pubkey(&settings, out, head),
        (Method::Get | Method::Head, Route::Healthz) => text(out, 200, "OK\n", head),
        (Method::Get | Method::Head, Route::Narinfo(hash)) => narinfo::get(&settings, &hash, out, head),
        (Method::Get | Method::Head, Route::Nar(path)) => nar::get(&settings, &req, &path, out, head),
        _ => text(out, 405, "method not allowed\n", false),
    }
}
