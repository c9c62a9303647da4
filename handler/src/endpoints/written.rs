//! How a write (PUT or DELETE) ended: what the write endpoints return and
//! [`super::writes`] turns into the answer, the audit line and the metric.

use crate::bindings::ncps::edge::metrics::WriteOutcome;

/// How a write ended: its status, a message for the client, and what it was for.
pub struct Written {
    /// HTTP status.
    pub status: u16,
    /// Body for the client (empty for 204).
    pub message: String,
    /// For the metric.
    pub outcome: WriteOutcome,
    /// What was written: the store path of a narinfo, the key of a NAR.
    pub target: String,
}

impl Written {
    /// A write that was done.
    pub fn accepted(target: impl Into<String>) -> Self {
        Self { status: 204, message: String::new(), outcome: WriteOutcome::Accepted, target: target.into() }
    }

    /// A write refused for its content (4xx).
    pub fn rejected(status: u16, message: impl Into<String>, target: impl Into<String>) -> Self {
        Self { status, message: message.into(), outcome: WriteOutcome::Rejected, target: target.into() }
    }

    /// A write a backend failure stopped (5xx).
    pub fn failed(message: impl Into<String>, target: impl Into<String>) -> Self {
        Self { status: 503, message: message.into(), outcome: WriteOutcome::Failed, target: target.into() }
    }
}
