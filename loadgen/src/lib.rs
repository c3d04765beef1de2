//! `vecrig-loadgen`: runs stress scenarios against a vecrig server over the network and
//! judges the result.
//!
//! A run goes: [`target::preflight`] (is the target there, healthy, and a vecrig server?) ->
//! [`scenario`] (what load: the specification's five scenarios) -> [`engine`] (how it is
//! scheduled and sent: load models, sending threads, deadlines, retries under a budget) ->
//! [`wire`] (the request path's own HTTP/2 client, one per sending thread) ->
//! [`stats`] (HdrHistograms and counts by gRPC code, per phase) -> a
//! [`vecrig::validation::report::Report`], judged by thresholds and printed by [`report`].
//! [`cli`] turns flags into a [`Plan`]; tests build a [`Plan`] directly. [`file`] reads
//! scenario files ([`entry`]: one scenario of one).
//!
//! The target is a vecrig server, or any gRPC vector service described by a scenario file's
//! `[target]` ([`dynamic`]: descriptors by reflection or from `.proto` files, requests from
//! templates, ground truth of the loadgen's own for recall).
//!
//! [`fault`] runs a paced load while a fault is injected from outside and judges what the
//! clients saw ([`acks`]: acknowledged writes, read back after); [`distributed`] finds a
//! replica's shard index among its peers (`docker compose up --scale loadgen=N`).
//! [`compare`] judges a run against stored baselines: a regression gate for CI.

pub mod acks;
pub mod cli;
pub mod compare;
pub mod distributed;
pub mod dynamic;
pub mod engine;
pub mod entry;
pub mod fault;
pub mod file;
pub mod html;
pub mod merge;
pub mod monitor;
pub mod neighbours;
mod plan;
pub mod process;
pub mod progress;
pub mod recall;
pub mod report;
pub mod retry;
pub mod runner;
pub mod scenario;
pub mod scrape;
mod spec;
pub mod stats;
pub mod target;
pub mod wire;
pub mod workload;

pub use plan::{Plan, RunOptions};
pub use runner::{check_file, run, run_file, run_with};
pub use spec::ScenarioSpec;
