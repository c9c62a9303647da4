//! Who may do what: reads need `--cache-get-token` (a write token is
//! accepted too), uploads `--cache-put-token`, deletes
//! `--cache-delete-token`. A read token never allows a write. Tokens come
//! as a bearer token or as the password of basic auth (what a netrc file
//! gives Nix), and are compared in constant time.

use crate::bindings::ncps::edge::config::Settings;
use crate::host::http::Request;
use crate::protocol::auth::{matches, presented as presented_in};

/// The secret a request presents, if any.
fn presented(req: &Request) -> Option<String> {
    presented_in(req.header("authorization"))
}

/// Whether the request may read.
pub fn may_read(req: &Request, settings: &Settings) -> bool {
    crate::protocol::auth::may_read(
        req.header("authorization"),
        settings.get_token.as_deref(),
        [settings.put_token.as_deref(), settings.delete_token.as_deref()],
    )
}

/// A write the request may not make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No credential, or one this cache does not know (401).
    Unauthorized,
    /// A valid credential that does not allow this write (403).
    Forbidden,
}

/// Which credential allows this write (`put` says upload, else delete):
/// the name of the credential for the audit log, never the secret.
pub fn may_write(req: &Request, settings: &Settings, put: bool) -> Result<&'static str, Denied> {
    let (token, name) = if put { (&settings.put_token, "put-token") } else { (&settings.delete_token, "delete-token") };
    let Some(token) = token.as_deref().filter(|t| !t.is_empty()) else {
        // No write credential: the node was started with anonymous writes.
        return Ok("anonymous");
    };
    let given = presented(req);
    if matches(given.as_deref(), Some(token)) {
        return Ok(name);
    }
    let known = [settings.get_token.as_deref(), settings.put_token.as_deref(), settings.delete_token.as_deref()]
        .into_iter()
        .any(|t| matches(given.as_deref(), t));
    Err(if known { Denied::Forbidden } else { Denied::Unauthorized })
}
