//! Any gRPC vector service as a target: its descriptors from reflection or `.proto` files
//! ([`describe`]), its requests from templates ([`template`]), the neighbours' ids read from its
//! answers ([`ids`]), and ground truth of our own for recall ([`truth`]).
//!
//! A templated target is described by the `[target]` table of a scenario file ([`TargetSpec`],
//! in [`target_spec`]), checked as a whole into [`Templates`] ([`templates`]; what fails, a
//! [`DynamicError`]) before any load: a missing method, a template field
//! the message does not have or a value of the wrong type is an error naming it. Then one
//! search is sent as a probe ([`probe`]): a target that refuses the template's request
//! (INVALID_ARGUMENT for a vector of the wrong width, say) stops the run there, instead of
//! failing every request of it.
//!
//! Every request the loadgen sends is rendered from a template set: vecrig's own
//! ([`VECRIG_V1`], [`Templates::vecrig_v1`]) unless a `[target]` names another. On the hot path
//! a request is encoded by its template straight into its gRPC frame ([`Template::frame`]),
//! once for all its attempts; only sampled searches have their answers decoded, through the
//! set's ids path.

pub mod builtin;
pub mod check;
pub mod codec;
pub mod describe;
pub mod error;
pub mod ids;
pub mod target_spec;
pub mod template;
pub mod templates;
pub mod truth;

pub use check::{AnswerCheck, CheckSpec};
pub use describe::{DescribeError, Source};
pub use error::DynamicError;
pub use ids::IdsPath;
pub use target_spec::{CallSpec, MethodSpec, TargetSpec, VECRIG_V1};
pub use template::{FieldGenerator, Fill, Point, Template, TemplateError};
pub use templates::{CheckedCall, TemplatedMethod, Templates, probe};
pub use truth::{Metric, Truth};
