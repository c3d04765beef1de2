//! The subcommands: which scenario to run (or which reports to merge or compare), with the
//! flags of each, and the parsers of their own argument types.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::plan::scenario::{Stage, parse_stages};
use crate::plan::suite::{LoadModel, Scale};

/// Scenarios. Flags left out keep the specification's values (or the profile's).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Many concurrent users, each sending a few queries [1000 x 10].
    ExtremeConcurrency {
        /// Concurrent users.
        #[arg(long, env = "VECRIG_USERS")]
        users: Option<u64>,
        /// Queries per user.
        #[arg(long, env = "VECRIG_QUERIES_PER_USER")]
        queries_per_user: Option<u64>,
        /// Pause after each answer.
        #[arg(long, env = "VECRIG_THINK", value_parser = humantime::parse_duration)]
        think: Option<Duration>,
    },
    /// Tasks sending ~150 KB queries; judged on the server's memory [50 tasks, 30s].
    MemoryPressure {
        /// Concurrent tasks.
        #[arg(long, env = "VECRIG_TASKS")]
        tasks: Option<u64>,
        /// How long.
        #[arg(long, env = "VECRIG_DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Approximate size of each query, bytes.
        #[arg(long, env = "VECRIG_QUERY_BYTES")]
        query_bytes: Option<usize>,
    },
    /// A steady rate, on schedule, for a long time [10 workers, 100 QPS, 5m].
    Sustained {
        /// Concurrent workers.
        #[arg(long, env = "VECRIG_WORKERS")]
        workers: Option<u64>,
        /// Total queries per second.
        #[arg(long, env = "VECRIG_RATE")]
        rate: Option<f64>,
        /// How long.
        #[arg(long, env = "VECRIG_DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// How often to print a monitor line.
        #[arg(long, env = "VECRIG_MONITOR_EVERY", value_parser = humantime::parse_duration)]
        monitor_every: Option<Duration>,
    },
    /// Far more concurrent requests than the server can take at once [2000, 30s deadline].
    ResourceExhaustion {
        /// Concurrent one-shot requests.
        #[arg(long, env = "VECRIG_REQUESTS")]
        requests: Option<u64>,
        /// Each request's deadline.
        #[arg(long, env = "VECRIG_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
        request_timeout: Option<Duration>,
    },
    /// Workers stepped up and down [10:30s,500:1m,1000:30s,100:30s,10:30s].
    Scale {
        /// Steps as WORKERS:DURATION,...
        #[arg(long, env = "VECRIG_PHASES", value_parser = parse_scale_phases)]
        phases: Option<ScalePhases>,
        /// Pause after each answer.
        #[arg(long, env = "VECRIG_PAUSE", value_parser = humantime::parse_duration)]
        pause: Option<Duration>,
    },
    /// A flood and a polite client side by side, each a client of its own to the server,
    /// each reported apart (phases `flood` and `polite`) [200 users vs 20/s, 30s].
    NoisyNeighbour {
        /// The flood's users (closed, no think time).
        #[arg(long, env = "VECRIG_FLOOD_USERS")]
        flood_users: Option<u64>,
        /// The polite client's requests per second, on schedule.
        #[arg(long, env = "VECRIG_POLITE_RATE")]
        polite_rate: Option<f64>,
        /// How long both run.
        #[arg(long, env = "VECRIG_DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// The flood's source address (e.g. 127.0.0.1); default: the system's.
        #[arg(long, env = "VECRIG_FLOOD_BIND")]
        flood_bind: Option<std::net::IpAddr>,
        /// The polite client's source address (e.g. 127.0.0.2 against a loopback target).
        #[arg(long, env = "VECRIG_POLITE_BIND")]
        polite_bind: Option<std::net::IpAddr>,
        /// The flood's bearer token (a tenant of its own), instead of the run's.
        #[arg(long, env = "VECRIG_FLOOD_TOKEN", hide_env_values = true)]
        flood_token: Option<String>,
        /// The polite client's bearer token, instead of the run's.
        #[arg(long, env = "VECRIG_POLITE_TOKEN", hide_env_values = true)]
        polite_token: Option<String>,
    },
    /// All five, in order.
    Suite,
    /// Run the scenarios of a TOML scenario file (built-ins with overrides, custom staged loads,
    /// each with its own workload, thresholds and tags).
    Run {
        /// The scenario file.
        file: PathBuf,
        /// A templated target's `.proto` files, instead of the file's `[target] protos` or
        /// the target's server reflection (repeat for several).
        #[arg(long = "proto", env = "VECRIG_PROTO", value_delimiter = ',')]
        protos: Vec<PathBuf>,
        /// Import paths for `--proto` (repeat for several).
        #[arg(long = "proto-path", env = "VECRIG_PROTO_PATH", value_delimiter = ',')]
        proto_path: Vec<PathBuf>,
        /// Check the file (scenarios, descriptors, templates, answer checks, setup calls)
        /// and exit: no load is sent (reflection is asked for descriptors where the file
        /// names no files).
        #[arg(long, env = "VECRIG_CHECK")]
        check: bool,
    },
    /// Combine the JSON reports of the shards of a distributed run (histograms merged, not
    /// percentiles averaged) and judge the thresholds on the result.
    Merge {
        /// The shards' reports.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
    },
    /// Compare runs: BASE.json [BASE2.json ...] NEW.json (the last is the new run), or
    /// BASE.json ... --new NEW.json --new NEW2.json (several runs under test, pooled). Exit 0
    /// no regression, 99 a change worse beyond its tolerance and the noise, 1 incomparable
    /// reports. --out writes the comparison as JSON, --html as a page. See docs/compare.md.
    Compare {
        /// The baselines' reports, then the new run's (unless --new names the new runs).
        #[arg(required = true, num_args = 1..)]
        reports: Vec<PathBuf>,
        /// A run of the build under test (repeatable: several are pooled, as baselines are);
        /// all the reports before are then baselines.
        #[arg(long = "new", env = "VECRIG_COMPARE_NEW", value_delimiter = ',')]
        new: Vec<PathBuf>,
        /// How much worse a metric may get, e.g. 'p99+10%', 'recall-0.01',
        /// 'error_rate+0.5pp@search' (repeatable; defaults in docs/compare.md).
        #[arg(long = "tolerance", env = "VECRIG_TOLERANCE", value_delimiter = ',')]
        tolerances: Vec<crate::compare::Tolerance>,
    },
    /// A paced load of searches and stamped writes while a fault is injected from outside
    /// (restart: the server killed and started again; partition: the network cut and
    /// restored; memory: the server pushed to its memory limit by this load; none: a control).
    /// Every acknowledged write is read back after; the verdict (outage, recovery, restarts,
    /// writes lost) is in the report. See docker/fault.sh.
    Fault {
        /// The fault expected: restart, partition, memory or none.
        #[arg(long, env = "VECRIG_FAULT", value_parser = parse_fault_kind)]
        kind: vecrig::validation::fault::FaultKind,
        /// How long the load runs [60s].
        #[arg(long, env = "VECRIG_DURATION", value_parser = humantime::parse_duration)]
        duration: Option<Duration>,
        /// Requests per second in total [200; memory 50].
        #[arg(long, env = "VECRIG_RATE")]
        rate: Option<f64>,
        /// Paced workers [20; memory 10].
        #[arg(long, env = "VECRIG_WORKERS")]
        workers: Option<u64>,
        /// Share of upserts [0.2; memory 0.5].
        #[arg(long, env = "VECRIG_WRITE_FRACTION")]
        write_fraction: Option<f64>,
        /// Points per upsert [16; memory 64].
        #[arg(long, env = "VECRIG_BATCH")]
        batch: Option<usize>,
        /// Extra payload bytes per point [0; memory 8192].
        #[arg(long, env = "VECRIG_PAD_BYTES")]
        pad_bytes: Option<usize>,
        /// Each request's deadline [2s; memory 10s].
        #[arg(long, env = "VECRIG_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
        request_timeout: Option<Duration>,
        /// HTTP/2 keepalive: how soon a vanished peer is noticed [2s].
        #[arg(long, env = "VECRIG_KEEPALIVE", value_parser = humantime::parse_duration)]
        keepalive: Option<Duration>,
        /// Throughput must be back within this long after the outage [10s].
        #[arg(long, env = "VECRIG_RECOVER_WITHIN", value_parser = humantime::parse_duration)]
        recover_within: Option<Duration>,
        /// ... to this fraction of the throughput before it [0.8].
        #[arg(long, env = "VECRIG_RECOVERED_FRACTION")]
        recovered_fraction: Option<f64>,
        /// Longest outage that passes [2m].
        #[arg(long, env = "VECRIG_MAX_OUTAGE", value_parser = humantime::parse_duration)]
        max_outage: Option<Duration>,
    },
    /// A custom load in stages, closed (users) or open (arrival rate), as k6's ramping executors.
    Load {
        /// closed: users wait for their answers; open: arrivals on schedule whatever the answers.
        #[arg(long, env = "VECRIG_MODEL", value_enum, default_value = "open")]
        model: LoadModel,
        /// Stages as DURATION:TARGET,... (requests/s for open, users for closed), e.g.
        /// 30s:100,1m:1000,30s:0.
        #[arg(long, env = "VECRIG_STAGES", value_parser = parse_stages_arg, default_value = "30s:100")]
        stages: StagesArg,
        /// Rate or users at the start [default: the first stage's target, a constant stage].
        #[arg(long, env = "VECRIG_START")]
        start: Option<f64>,
        /// Open model: requests outstanding at once; arrivals beyond are dropped and counted.
        #[arg(long, env = "VECRIG_MAX_IN_FLIGHT", default_value_t = 1000)]
        max_in_flight: u64,
        /// Closed model: pause after each answer.
        #[arg(long, env = "VECRIG_THINK", default_value = "0s", value_parser = humantime::parse_duration)]
        think: Duration,
    },
}

fn parse_fault_kind(text: &str) -> Result<vecrig::validation::fault::FaultKind, String> {
    text.parse()
}

/// Stages of a custom load.
#[derive(Debug, Clone, PartialEq)]
pub struct StagesArg(pub Vec<Stage>);

fn parse_stages_arg(text: &str) -> Result<StagesArg, String> {
    parse_stages(text).map(StagesArg)
}

/// Steps of the scale scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePhases(pub Vec<(u64, Duration)>);

fn parse_scale_phases(text: &str) -> Result<ScalePhases, String> {
    Scale::parse_phases(text).map(ScalePhases)
}
