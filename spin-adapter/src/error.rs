//! The adapter's errors, and their `ncps:edge/types.error` form.

use crate::bindings::exports::ncps::edge::types::Error as WitError;

/// Why a backend call failed.
#[derive(Debug, thiserror::Error)]
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
