//! The adapter's errors, and their `ncps:edge/types.error` form.

use crate::bindings::exports::ncps::edge::types::Error as WitError;

/// Why a backend call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The backend cannot be reached.
    #[error("{0} unavailable: {1}")]
    Unavailable(&'static str, String),
    /// The backend did not answer in time.
    #[error("{0} timed out: {1}")]
    Timeout(&'static str, String),
    /// The thing exists already, or is held by somebody else.
    #[error("{0}")]
    Conflict(String),
    /// The input or the configuration was rejected.
    #[error("{0}")]
    Invalid(String),
    /// Anything else.
    #[error("{0}: {1}")]
    Internal(&'static str, String),
}

impl Error {
    /// `backend` cannot be reached: `message` cut to its first line (Spin's
    /// host errors carry their causes and a backtrace), with the fix for
    /// what a deployment gets wrong: an address missing from the
    /// component's `allowed_outbound_hosts`, a TLS certificate that does
    /// not verify, or a database that does not answer.
    pub fn unreachable(backend: &'static str, message: &str) -> Self {
        let first = message.lines().next().unwrap_or_default().trim();
        match fix_for(backend, message) {
            Some(fix) => Error::Unavailable(backend, format!("{first}; fix: {fix}")),
            None => Error::Unavailable(backend, first.to_owned()),
        }
    }
}

/// The fix for a backend error whose cause is the deployment's.
fn fix_for(backend: &str, message: &str) -> Option<&'static str> {
    let denied = ["not permitted", "not allowed", "HttpRequestDenied"].iter().any(|m| message.contains(m));
    let tls = ["certificate verify failed", "TLS handshake"].iter().any(|m| message.contains(m));
    Some(match (backend, denied, tls) {
        ("database", true, _) => "set the Spin variable `database_host` to the host:port of `database_url` (it makes allowed_outbound_hosts)",
        ("redis", true, _) => "set the Spin variable `redis_host` to the host:port of `redis_address` (it makes allowed_outbound_hosts)",
        ("s3", true, _) => "set the Spin variable `s3_origin` to the scheme://host:port of `s3_endpoint` (it makes allowed_outbound_hosts)",
        ("database", _, true) => "give the server a TLS certificate valid for the address in `database_url`, or add `?sslmode=disable` to it on a trusted network",
        (_, _, true) => "give the server a TLS certificate valid for the address it is reached by",
        ("database", false, false) if message.contains("timed out") => "check that the host of `database_url` is reachable from this node (a request waits `backend_timeout_ms` for a connection, or the `connect_timeout` that `database_url` names)",
        _ => return None,
    })
}

/// Result of a backend call.
pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        let text = e.to_string();
        match e {
            Error::Unavailable(..) => WitError::Unavailable(text),
            Error::Timeout(..) => WitError::Timeout(text),
            Error::Conflict(_) => WitError::Conflict(text),
            Error::Invalid(_) => WitError::Invalid(text),
            Error::Internal(..) => WitError::Internal(text),
        }
    }
}
