//! The layers every VectorIndex call passes through before admission, outermost first:
//! [`metrics`] (counts every call, refused ones too), [`auth`] (the bearer token) and
//! [`memory`] (refuses work near the memory limit). Each is a tower `Layer` whose service
//! is named `XxxService`; `lib.rs` stacks them.

pub mod auth;
pub mod memory;
pub mod metrics;
