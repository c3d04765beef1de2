//! The server's domain errors. `service.rs` maps each to exactly one gRPC status code.

use crate::index::IndexError;

/// Everything that can go wrong while serving one request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: `field` names the offending field, `reason` the broken limit.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The request field, as named in the proto (`points[3].vector`).
        field: String,
        /// What is wrong with it, including the limit.
        reason: String,
    },
    /// A point that was asked for by id does not exist.
    #[error("point {id} not found")]
    NotFound {
        /// The missing id.
        id: u64,
    },
    /// The server cannot take this request now (starting, draining, storage unavailable).
    #[error("{0}")]
    Unavailable(String),
    /// The index failed internally; a bug, never the client's fault.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A worker task died (panicked or was cancelled); a bug.
    #[error("worker task failed: {0}")]
    Worker(String),
}

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
