//! The error type every backend returns; it maps one to one onto the WIT
//! `error` variant so the guest can decide what each failure means for HTTP.

use crate::bindings::types::Error as WitError;

/// A failure of a host service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The backend cannot be reached right now.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// The operation did not finish within its deadline.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Somebody else holds or already created the thing.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input was rejected.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// Anything else.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result of a host service call.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        match e {
            Error::Unavailable(m) => WitError::Unavailable(m),
            Error::Timeout(m) => WitError::Timeout(m),
            Error::Conflict(m) => WitError::Conflict(m),
            Error::Invalid(m) => WitError::Invalid(m),
            Error::Internal(m) => WitError::Internal(m),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Unavailable(e.to_string())
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
            {
                Error::Timeout(e.to_string())
            }
            rusqlite::Error::SqliteFailure(f, _)
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::CannotOpen
                        | rusqlite::ErrorCode::DiskFull
                        | rusqlite::ErrorCode::SystemIoFailure
                ) =>
            {
                Error::Unavailable(e.to_string())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}
