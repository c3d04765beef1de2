//! Why a templated target cannot be used ([`DynamicError`]).

use tonic::Code;

use super::describe::DescribeError;
use super::template::TemplateError;

/// Why a templated target cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DynamicError {
    /// No descriptors, or no such method.
    #[error(transparent)]
    Describe(#[from] DescribeError),
    /// A template does not fit its message.
    #[error("{method} request template: {error}")]
    Template {
        /// The method.
        method: String,
        /// What does not fit.
        error: TemplateError,
    },
    /// The ids path does not fit the answer.
    #[error("{method}: {error}")]
    Ids {
        /// The method.
        method: String,
        /// What does not fit.
        error: super::ids::IdsPathError,
    },
    /// Something else in `[target]`.
    #[error("[target]: {0}")]
    Spec(String),
    /// A setup or teardown call failed.
    #[error("{phase} call {method}: {reason}")]
    Call {
        /// `setup` or `teardown`.
        phase: &'static str,
        /// The method.
        method: String,
        /// Its answer.
        reason: String,
    },
    /// The target refused the probe request.
    #[error(
        "the target refused a request rendered from the {method} template ({code:?}: {message}): fix the template (or --dimensions) before running load"
    )]
    Refused {
        /// The method.
        method: String,
        /// Its answer's code.
        code: Code,
        /// Its answer's message.
        message: String,
    },
}
