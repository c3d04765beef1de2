//! `vecrig-loadgen`: runs stress scenarios against a vecrig server over the network and
//! judges the result.
//!
//! A run goes through these rooms, in order ([`runner`] takes it from start to end):
//! 1. [`plan`]: what to run. A [`Plan`] of [`ScenarioSpec`]s (the specification's five
//!    scenarios, a custom staged load, the noisy neighbour, or a scenario file's entries),
//!    each built into a [`plan::scenario::Scenario`] of phases and load models.
//! 2. [`target`]: is the target there, healthy, and a vecrig server ([`target::preflight`])?
//! 3. [`scheduler`]: how it is scheduled and sent: load models, sending threads, deadlines,
//!    retries under a budget.
//! 4. [`wire`]: the request path's own HTTP/2 client, one per sending thread.
//! 5. [`measure`]: what is measured: HdrHistograms and counts by gRPC code per phase, recall,
//!    acknowledged writes, the server's own figures, the loadgen's own cost.
//! 6. [`report`]: what it meant: a [`vecrig::validation::report::Report`], judged by
//!    thresholds, printed as text or HTML, merged across shards.
//!
//! [`cli`] turns flags into a [`Plan`] and [`RunOptions`]; tests build them directly.
//!
//! The target is a vecrig server, or any gRPC vector service described by a scenario file's
//! `[target]` ([`dynamic`]: descriptors by reflection or from `.proto` files, requests from
//! templates, ground truth of the loadgen's own for recall).
//!
//! Two other ways to run: [`fault`] runs a paced load while a fault is injected from outside
//! and judges what the clients saw (acknowledged writes read back after); [`distributed`]
//! finds a replica's shard index among its peers (`docker compose up --scale loadgen=N`).
//! [`compare`] judges a run against stored baselines: a regression gate for CI.

pub mod cli;
pub mod compare;
pub mod distributed;
pub mod dynamic;
pub mod fault;
pub mod measure;
pub mod plan;
pub mod report;
pub mod runner;
pub mod scheduler;
pub mod target;
pub mod wire;

pub use plan::spec::ScenarioSpec;
pub use plan::{Plan, RunOptions};
pub use runner::{check_file, run, run_file, run_with};
