//! Who may do what: reads need `--cache-get-token` (a write token is
//! accepted too), uploads `--cache-put-token`, deletes
//! `--cache-delete-token`. A read token never allows a write. Tokens come
//! as a bearer token or as the password of basic auth (what a netrc file
//! gives Nix), and are compared in constant time.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::bindings::ncps::edge::config::Settings;
use crate::host::http::Request;

/// The secret a request presents, if any.
pub fn presented(req: &Request) -> Option<String> {
    let auth = req.header("authorization")?;
    if let Some(bearer) = auth.strip_prefix("Bearer ") {
        return Some(bearer.trim().to_owned());
    }
    let raw = B64.decode(auth.strip_prefix("Basic ")?.trim()).ok()?;
    let pair = String::from_utf8(raw).ok()?;
    pair.split_once(':').map(|(_, password)| password.to_owned())
}

/// Compare secrets without an early exit on the first differing byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn matches(given: Option<&str>, token: Option<&str>) -> bool {
    match (given, token.filter(|t| !t.is_empty())) {
        (Some(g), Some(t)) => constant_time_eq(g.as_bytes(), t.as_bytes()),
        _ => false,
    }
}

/// Whether the request may read.
pub fn may_read(req: &Request, settings: &Settings) -> bool {
    let Some(token) = settings.get_token.as_deref().filter(|t| !t.is_empty()) else {
        return true;
    };
    let given = presented(req);
    [Some(token), settings.put_token.as_deref(), settings.delete_token.as_deref()]
        .into_iter()
        .any(|t| matches(given.as_deref(), t))
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
