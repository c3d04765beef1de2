//! What to run. A run is asked for a [`Plan`] (scenarios, seed, thresholds, shard) and told
//! how to reach the target ([`RunOptions`]); the CLI fills both from flags, tests build them.
//!
//! A plan names its scenarios as [`spec::ScenarioSpec`]s: the specification's five and a
//! custom staged load ([`suite`]), or [`noisy_neighbour`]; a scenario file ([`file`], one
//! `[[scenario]]` of it an [`entry`]) gives the same, with a `[target]` of its own. Each spec
//! is built, against the target's dimensions and a request generator ([`workload`]), into
//! a [`scenario::Scenario`]: phases, each with its load model, that the
//! [`scheduler`](crate::scheduler) runs.

pub mod dataset;
pub mod entry;
pub mod file;
pub mod noisy_neighbour;
pub mod scenario;
pub mod spec;
pub mod suite;
pub mod workload;

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use vecrig::client::ConnectOptions;
use vecrig::validation::threshold::Threshold;

use crate::plan::spec::ScenarioSpec;
use crate::plan::workload::WorkloadKind;
use crate::scheduler::retry::RetryPolicy;
use crate::wire::Transport;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenarios, in order.
    pub scenarios: Vec<ScenarioSpec>,
    /// Seed of the request generators.
    pub seed: u64,
    /// Neighbours per search.
    pub k: u32,
    /// Replaces every scenario's own workload when set.
    pub workload: Option<WorkloadKind>,
    /// Thresholds added to every scenario.
    pub thresholds: Vec<Threshold>,
    /// Whether the specification's criteria apply (on by default).
    pub default_thresholds: bool,
    /// `(index, count)`: send only this shard's part of the load (a distributed run).
    pub shard: Option<(u64, u64)>,
    /// A dataset's queries, points and truth, in place of the seeded ones (and of a scenario
    /// file's `[dataset]`).
    pub dataset: Option<dataset::Spec>,
}

impl Plan {
    /// A plan for `scenarios` with default seed, k and thresholds.
    pub fn new(scenarios: Vec<ScenarioSpec>) -> Self {
        Self {
            scenarios,
            seed: vecrig::synthetic::Synthetic::DEFAULT_SEED,
            k: 10,
            workload: None,
            thresholds: Vec::new(),
            default_thresholds: true,
            shard: None,
            dataset: None,
        }
    }
}

/// How to reach and talk to the target.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `http://host:port`.
    pub target: String,
    /// Connection pool settings.
    pub connect: ConnectOptions,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Metadata added to every request.
    pub headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// Draw the live progress line (on a terminal).
    pub live_progress: bool,
    /// How long pre-flight waits for the target to become SERVING.
    pub wait_healthy: Duration,
    /// Abort the run on the first failed threshold, judging upper bounds mid-phase after
    /// this grace (see [`crate::scheduler::Context::abort_on_fail`]).
    pub abort_on_fail: Option<Duration>,
    /// The server's Prometheus endpoint, scraped into each scenario's report when set.
    pub metrics_url: Option<String>,
    /// Threads that send the load (0: one per CPU); each owns its share of the users.
    pub threads: usize,
    /// Which client sends the load's requests.
    pub transport: Transport,
    /// Fraction of searches sampled and checked against the exact answer after each phase
    /// (recall@k in the report); 0: none. Off here, 0.01 from the command line: the check
    /// sends searches of its own (`exact = true`), which a caller comparing the server's
    /// counts with the load's must opt into.
    pub recall_sample: f64,
    /// Where the server this run started (`--spawn-server`) writes its log, named in the
    /// report; `None` when the target runs elsewhere.
    pub server_log: Option<PathBuf>,
}

impl RunOptions {
    /// Defaults for `target`.
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            connect: ConnectOptions::default(),
            timeout: Duration::from_secs(30),
            headers: Vec::new(),
            retry: RetryPolicy::default(),
            live_progress: false,
            wait_healthy: Duration::from_secs(60),
            abort_on_fail: None,
            metrics_url: None,
            threads: 0,
            transport: Transport::default(),
            recall_sample: 0.0,
            server_log: None,
        }
    }
}
