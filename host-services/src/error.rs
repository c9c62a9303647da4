//! Errors of the host services.
//!
//! Every backend returns [`Error`]: its kind says what the failure means
//! (an outage worth a retry, a conflict, bad input, …) and it keeps the
//! client's own error as its source. At the WIT boundary a host function
//! returns [`HostError`]: either such a service error, which the guest
//! receives as the `ncps:edge/types.error` variant, or a trap (a bug on
//! either side, such as a stale resource handle), which ends the instance.

use wasmtime::component::ResourceTableError;

use crate::bindings::types::Error as WitError;

/// The underlying cause of an [`Error`].
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A failure of a host service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot be reached right now: worth a retry.
    #[error("backend unavailable: {0}")]
    Unavailable(#[source] Cause),
    /// The operation did not finish within its deadline: worth a retry.
    #[error("timed out: {0}")]
    Timeout(#[source] Cause),
    /// Somebody else holds or already created the thing.
    #[error("conflict: {0}")]
    Conflict(#[source] Cause),
    /// The input was rejected.
    #[error("invalid input: {0}")]
    Invalid(#[source] Cause),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(#[source] Cause),
}

/// A client error with the name of the backend it came from.
#[derive(Debug, thiserror::Error)]
#[error("{backend}: {source}")]
pub struct BackendError {
    /// `redis`, `postgres`, `mysql`, `sqlite`, `s3`, `disk`, …
    pub backend: &'static str,
    /// The client's error.
    #[source]
    pub source: Cause,
}

fn backend(backend: &'static str, source: impl Into<Cause>) -> Cause {
    Box::new(BackendError { backend, source: source.into() })
}

impl Error {
    /// `backend` cannot be reached: `source` says why.
    pub fn unavailable(backend_name: &'static str, source: impl Into<Cause>) -> Self {
        Error::Unavailable(backend(backend_name, source))
    }
    /// A call to `backend` ran out of time.
    pub fn timeout(backend_name: &'static str, source: impl Into<Cause>) -> Self {
        Error::Timeout(backend(backend_name, source))
    }
    /// `backend` failed in a way a retry will not mend.
    pub fn internal(backend_name: &'static str, source: impl Into<Cause>) -> Self {
        Error::Internal(backend(backend_name, source))
    }
    /// Somebody else holds or created the thing.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict(message.into().into())
    }
    /// The caller's input was rejected.
    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into().into())
    }
    /// Whether a retry may succeed (the backend is down or slow).
    pub fn is_outage(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }
}

/// Result of a host service call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What a WIT host function fails with: a service error the guest handles,
/// or a trap that ends the instance.
#[derive(Debug)]
pub enum HostError {
    /// A service failed; the guest receives it as the WIT `error` variant.
    Service(Error),
    /// A bug (stale handle, broken invariant): the instance traps.
    Trap(wasmtime::Error),
}

/// Result of a WIT host function.
pub type HostResult<T> = std::result::Result<T, HostError>;

impl From<Error> for HostError {
    fn from(e: Error) -> Self {
        HostError::Service(e)
    }
}

impl From<ResourceTableError> for HostError {
    fn from(e: ResourceTableError) -> Self {
        HostError::Trap(e.into())
    }
}

impl HostError {
    /// The WIT error for the guest, or the trap.
    pub fn into_wit(self) -> wasmtime::Result<WitError> {
        match self {
            HostError::Service(e) => Ok(e.into()),
            HostError::Trap(t) => Err(t),
        }
    }
}

impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => WitError::Unavailable(m.to_string()),
            Error::Timeout(m) => WitError::Timeout(m.to_string()),
            Error::Conflict(m) => WitError::Conflict(m.to_string()),
            Error::Invalid(m) => WitError::Invalid(m.to_string()),
            Error::Internal(m) => WitError::Internal(m.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::TimedOut => Error::timeout("disk", e),
            _ => Error::unavailable("disk", e),
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::{CannotOpen, DatabaseBusy, DatabaseLocked, DiskFull, SystemIoFailure};
        match &e {
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, DatabaseBusy | DatabaseLocked) => {
                Error::timeout("sqlite", e)
            }
            rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, CannotOpen | DiskFull | SystemIoFailure) => {
                Error::unavailable("sqlite", e)
            }
            _ => Error::internal("sqlite", e),
        }
    }
}

/// Implement `ncps:edge/types` (the conversion of [`HostError`]) for a
/// capability's WIT view: every interface whose functions return the WIT
/// `error` needs it.
macro_rules! wit_errors {
    ($view:ty) => {
        impl $crate::bindings::types::Host for $view {
            fn convert_error(&mut self, err: $crate::HostError) -> wasmtime::Result<$crate::bindings::types::Error> {
                err.into_wit()
            }
        }
    };
}
pub(crate) use wit_errors;
