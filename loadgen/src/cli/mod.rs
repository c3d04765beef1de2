//! Command-line flags (each also a `VECRIG_*` environment variable) and what they become: a
//! [`RunOptions`] (how to reach the target) and a [`Plan`] (what to run).

mod command;

pub use command::{Command, ScalePhases, StagesArg};

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use vecrig::client::ConnectOptions;
use vecrig::validation::threshold::Threshold;

use crate::plan::noisy_neighbour::NoisyNeighbour;
use crate::plan::scenario::Identity;
use crate::plan::spec::ScenarioSpec;
use crate::plan::suite::{
    ExtremeConcurrency, Load, MemoryPressure, Profile, ResourceExhaustion, Scale, Sustained,
};
use crate::plan::workload::WorkloadKind;
use crate::plan::{Plan, RunOptions};
use crate::scheduler::retry::RetryPolicy;

/// Exit code: every threshold held.
pub const EXIT_PASSED: i32 = 0;
/// Exit code: the run could not start (bad flags are clap's 2).
pub const EXIT_ERROR: i32 = 1;
/// Exit code: the target is unreachable, unhealthy or not a vecrig server.
pub const EXIT_TARGET: i32 = 3;
/// Exit code: a threshold failed (as k6).
pub const EXIT_THRESHOLDS: i32 = 99;
/// Exit code: interrupted (Ctrl-C) before the plan finished.
pub const EXIT_INTERRUPTED: i32 = 130;

/// `vecrig-loadgen`: stress scenarios against a vecrig server, over the network.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
pub struct Cli {
    /// The server: http://HOST:PORT.
    #[arg(
        long,
        env = "VECRIG_TARGET",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    #[arg(help_heading = "Target and connection")]
    pub target: String,
    /// HTTP/2 connections to open (one connection caps concurrency at the server's stream limit).
    #[arg(long, env = "VECRIG_CONNECTIONS", default_value_t = 4, global = true)]
    #[arg(help_heading = "Target and connection")]
    pub connections: usize,
    /// Per-request deadline, sent as grpc-timeout.
    #[arg(long, env = "VECRIG_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration, global = true)]
    #[arg(help_heading = "Target and connection")]
    pub timeout: Duration,
    /// For https targets: trust this PEM CA certificate instead of the system's roots.
    #[arg(long, env = "VECRIG_CA_CERT", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub ca_cert: Option<PathBuf>,
    /// For https targets: verify the server's certificate for this name instead of the host's.
    #[arg(long, env = "VECRIG_TLS_DOMAIN", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub tls_domain: Option<String>,
    /// Metadata sent with every request, as 'name: value' (repeatable).
    #[arg(long = "header", env = "VECRIG_HEADER", value_parser = parse_header, global = true)]
    #[arg(help_heading = "Target and connection")]
    pub headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    /// Seed of the request generators; match the server's --preload-seed for vector queries.
    #[arg(long, env = "VECRIG_SEED", default_value_t = vecrig::synthetic::Synthetic::DEFAULT_SEED, global = true)]
    #[arg(help_heading = "Load")]
    pub seed: u64,
    /// Neighbours per search.
    #[arg(long, env = "VECRIG_K", default_value_t = 10, global = true)]
    #[arg(help_heading = "Load")]
    pub k: u32,
    /// A dataset file as the source of the run's queries, points and ground truth.
    #[command(flatten)]
    pub dataset: crate::plan::dataset::Args,
    /// Replace the scenarios' own requests: spec, text, vector, fixed (one vector search, the
    /// same every time, as h2load sends), exact or mixed.
    #[arg(long, env = "VECRIG_WORKLOAD", global = true)]
    #[arg(help_heading = "Load")]
    pub workload: Option<WorkloadKind>,
    /// Fraction of upserts in the mixed workload.
    #[arg(
        long,
        env = "VECRIG_UPSERT_FRACTION",
        default_value_t = 0.1,
        global = true
    )]
    #[arg(help_heading = "Load")]
    pub upsert_fraction: f64,
    /// Sizes and durations: full (the specification's) or quick (scaled down in time).
    #[arg(
        long,
        value_enum,
        env = "VECRIG_PROFILE",
        default_value = "full",
        global = true
    )]
    #[arg(help_heading = "Load")]
    pub profile: Profile,
    /// Extra pass/fail threshold, e.g. 'p99<50ms' or 'error_rate<=0.01@*' (repeatable).
    #[arg(long = "threshold", env = "VECRIG_THRESHOLD", global = true)]
    #[arg(help_heading = "Thresholds")]
    pub thresholds: Vec<Threshold>,
    /// Drop the specification's default thresholds (keep only --threshold ones).
    #[arg(long, env = "VECRIG_NO_DEFAULT_THRESHOLDS", global = true)]
    #[arg(help_heading = "Thresholds")]
    pub no_default_thresholds: bool,
    /// Compare the run with this stored report (repeatable; exit 99 on a regression beyond
    /// VECRIG_TOLERANCE's tolerances, see `compare`).
    #[arg(long, env = "VECRIG_BASELINE", value_delimiter = ',', global = true)]
    #[arg(help_heading = "Thresholds")]
    pub baseline: Vec<PathBuf>,
    /// Attempts per request, first one included (1 disables retries).
    #[arg(long, env = "VECRIG_MAX_ATTEMPTS", default_value_t = 3, global = true)]
    #[arg(help_heading = "Load")]
    pub max_attempts: u32,
    /// Retries allowed per request on average (0.1 = 10%).
    #[arg(
        long,
        env = "VECRIG_RETRY_BUDGET",
        default_value_t = 0.1,
        global = true
    )]
    #[arg(help_heading = "Load")]
    pub retry_budget: f64,
    /// Write the JSON report here.
    #[arg(long, env = "VECRIG_OUT", global = true)]
    #[arg(help_heading = "Measurement and reports")]
    pub out: Option<PathBuf>,
    /// Also write the report as one HTML page with charts.
    #[arg(long, env = "VECRIG_HTML", global = true)]
    #[arg(help_heading = "Measurement and reports")]
    pub html: Option<PathBuf>,
    /// Also write every phase's histograms as an HdrHistogram interval log (.hlog), readable by
    /// HdrHistogram's own tools (HistogramLogProcessor, HdrHistogramVisualizer, ...).
    #[arg(long, env = "VECRIG_HDR_LOG", global = true)]
    #[arg(help_heading = "Measurement and reports")]
    pub hdr_log: Option<PathBuf>,
    /// No live progress line.
    #[arg(long, env = "VECRIG_NO_PROGRESS", global = true)]
    #[arg(help_heading = "Measurement and reports")]
    pub no_progress: bool,
    /// Threads sending the load, each with its share of the users and arrivals [default 0:
    /// one per CPU]. Fewer cost less CPU per request but cap the rate one loadgen can send.
    #[arg(long, env = "VECRIG_THREADS", default_value_t = 0, global = true)]
    #[arg(help_heading = "Load")]
    pub threads: usize,
    /// Which client sends the load: h2 (our own, one per sending thread) or tonic (the
    /// channel pool, for comparison).
    #[arg(
        long,
        value_enum,
        env = "VECRIG_TRANSPORT",
        default_value = "h2",
        global = true
    )]
    #[arg(help_heading = "Target and connection", hide = true)]
    pub transport: crate::wire::Transport,
    /// Fraction of searches whose answers are checked against the target's exact answer
    /// after each phase (recall@k in the report; threshold `recall>=0.95`); 0: off.
    #[arg(
        long,
        env = "VECRIG_RECALL_SAMPLE",
        default_value_t = 0.01,
        global = true
    )]
    #[arg(help_heading = "Measurement and reports")]
    pub recall_sample: f64,
    /// Stop the whole run at the first failed threshold (exit 99), instead of running every
    /// scenario to the end: upper bounds (`p99<50ms`, `error_rate<0.01`) are judged every
    /// second on the phase so far, everything else when its phase or scenario ends.
    #[arg(long, env = "VECRIG_ABORT_ON_FAIL", global = true)]
    #[arg(help_heading = "Thresholds")]
    pub abort_on_fail: bool,
    /// With --abort-on-fail: how long a phase runs before its figures are judged mid-run, so a
    /// cold start does not abort it.
    #[arg(long, env = "VECRIG_ABORT_GRACE", default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    #[arg(help_heading = "Thresholds")]
    pub abort_grace: Duration,
    /// The server's Prometheus endpoint (vecrig-server --metrics-listen), e.g.
    /// http://host:9090/metrics: scraped into each scenario's report.
    #[arg(long, env = "VECRIG_METRICS_URL", global = true)]
    #[arg(help_heading = "Measurement and reports")]
    pub metrics_url: Option<String>,
    /// How long to wait for the target to become SERVING.
    #[arg(long, env = "VECRIG_WAIT_HEALTHY", default_value = "120s", value_parser = humantime::parse_duration, global = true)]
    #[arg(help_heading = "Target and connection")]
    pub wait_healthy: Duration,
    /// Which shard of a distributed run this loadgen sends (`--shard`, `--shard-peers`).
    #[command(flatten, next_help_heading = "Distributed runs")]
    pub sharding: crate::distributed::Args,
    /// Start a local vecrig-server (preloaded, on a free port) for this run and target it.
    #[arg(long, env = "VECRIG_SPAWN_SERVER", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub spawn_server: bool,
    /// The vecrig-server binary that --spawn-server starts [default: the one next to this one].
    #[arg(long, env = "VECRIG_SERVER_BINARY", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub server_binary: Option<PathBuf>,
    /// Synthetic points the spawned server preloads.
    #[arg(
        long,
        env = "VECRIG_SPAWN_PRELOAD",
        default_value_t = 10_000,
        global = true
    )]
    #[arg(help_heading = "Target and connection")]
    pub spawn_preload: u64,
    /// Data directory of the spawned server (default: a temporary one).
    #[arg(long, env = "VECRIG_SPAWN_DATA_DIR", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub spawn_data_dir: Option<PathBuf>,
    /// Where the spawned server writes its log [default: beside --out, as NAME.server.log;
    /// without --out, vecrig-server.log].
    #[arg(long, env = "VECRIG_SPAWN_LOG", global = true)]
    #[arg(help_heading = "Target and connection")]
    pub spawn_log: Option<PathBuf>,
    /// The scenario to run.
    #[command(subcommand)]
    pub command: Command,
}

const AFTER_HELP: &str = "\
Exit codes: 0 every threshold held, 99 a threshold failed, 3 target unreachable/unhealthy,
130 interrupted, 1 other errors, 2 bad flags.
Example: vecrig-loadgen --spawn-server suite --profile quick --out report.json";

/// Parses `name: value` into gRPC metadata.
pub fn parse_header(text: &str) -> Result<(AsciiMetadataKey, AsciiMetadataValue), String> {
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected 'name: value'"))?;
    let key = AsciiMetadataKey::from_str(&name.trim().to_ascii_lowercase())
        .map_err(|e| format!("header name {name:?}: {e}"))?;
    let value = AsciiMetadataValue::try_from(value.trim())
        .map_err(|e| format!("header value for {name:?}: {e}"))?;
    Ok((key, value))
}

impl Cli {
    /// Where a server started with `--spawn-server` writes its log.
    pub fn spawn_log(&self) -> PathBuf {
        match (&self.spawn_log, &self.out) {
            (Some(log), _) => log.clone(),
            (None, Some(out)) => out.with_extension("server.log"),
            (None, None) => PathBuf::from("vecrig-server.log"),
        }
    }

    /// How to reach the target (`target` replaces `--target`, e.g. a spawned server's).
    pub fn run_options(&self, target: &str) -> Result<RunOptions, String> {
        let ca_cert = match &self.ca_cert {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| format!("cannot read --ca-cert {}: {e}", path.display()))?,
            ),
            None => None,
        };
        Ok(RunOptions {
            target: target.to_string(),
            connect: ConnectOptions {
                connections: self.connections.max(1),
                ca_cert,
                tls_domain: self.tls_domain.clone(),
                ..ConnectOptions::default()
            },
            timeout: self.timeout,
            headers: self.headers.clone(),
            retry: RetryPolicy {
                max_attempts: self.max_attempts.max(1),
                budget_ratio: self.retry_budget,
                ..RetryPolicy::default()
            },
            live_progress: !self.no_progress,
            wait_healthy: self.wait_healthy,
            abort_on_fail: self.abort_on_fail.then_some(self.abort_grace),
            metrics_url: self.metrics_url.clone(),
            threads: self.threads,
            transport: self.transport,
            recall_sample: self.recall_sample,
            server_log: None,
        })
    }

    /// The fault run, for the `fault` subcommand: the kind's defaults, overridden by flags.
    pub fn fault_run(&self) -> Option<crate::fault::FaultRun> {
        let Command::Fault {
            kind,
            duration,
            rate,
            workers,
            write_fraction,
            batch,
            pad_bytes,
            request_timeout,
            keepalive,
            recover_within,
            recovered_fraction,
            max_outage,
        } = &self.command
        else {
            return None;
        };
        let d = crate::fault::FaultRun::new(*kind);
        Some(crate::fault::FaultRun {
            kind: *kind,
            duration: duration.unwrap_or(d.duration),
            rate: rate.unwrap_or(d.rate).max(0.1),
            workers: workers.unwrap_or(d.workers).max(1),
            upsert_fraction: write_fraction.unwrap_or(d.upsert_fraction).clamp(0.0, 1.0),
            batch: batch.unwrap_or(d.batch).max(1),
            pad_bytes: pad_bytes.unwrap_or(d.pad_bytes),
            request_timeout: request_timeout.unwrap_or(d.request_timeout),
            keepalive: keepalive
                .unwrap_or(d.keepalive)
                .max(Duration::from_millis(100)),
            recover_within: recover_within.unwrap_or(d.recover_within),
            recovered_fraction: recovered_fraction
                .unwrap_or(d.recovered_fraction)
                .clamp(0.0, 1.0),
            max_outage: max_outage.unwrap_or(d.max_outage),
            verify_concurrency: d.verify_concurrency,
        })
    }

    /// What to run.
    pub fn plan(&self) -> Plan {
        let full = self.profile == Profile::Full;
        let scenarios = match &self.command {
            Command::Merge { .. }
            | Command::Compare { .. }
            | Command::Run { .. }
            | Command::Fault { .. } => Vec::new(),
            Command::Suite => ScenarioSpec::suite(self.profile),
            Command::ExtremeConcurrency {
                users,
                queries_per_user,
                think,
            } => {
                let d = if full {
                    ExtremeConcurrency::full()
                } else {
                    ExtremeConcurrency::quick()
                };
                vec![ScenarioSpec::ExtremeConcurrency(ExtremeConcurrency {
                    users: users.unwrap_or(d.users),
                    queries_per_user: queries_per_user.unwrap_or(d.queries_per_user),
                    think: think.unwrap_or(d.think),
                })]
            }
            Command::MemoryPressure {
                tasks,
                duration,
                query_bytes,
            } => {
                let d = if full {
                    MemoryPressure::full()
                } else {
                    MemoryPressure::quick()
                };
                vec![ScenarioSpec::MemoryPressure(MemoryPressure {
                    tasks: tasks.unwrap_or(d.tasks),
                    duration: duration.unwrap_or(d.duration),
                    query_bytes: query_bytes.unwrap_or(d.query_bytes),
                    pause: d.pause,
                })]
            }
            Command::Sustained {
                workers,
                rate,
                duration,
                monitor_every,
            } => {
                let d = if full {
                    Sustained::full()
                } else {
                    Sustained::quick()
                };
                vec![ScenarioSpec::Sustained(Sustained {
                    workers: workers.unwrap_or(d.workers),
                    rate: rate.unwrap_or(d.rate),
                    duration: duration.unwrap_or(d.duration),
                    monitor_every: monitor_every.unwrap_or(d.monitor_every),
                })]
            }
            Command::ResourceExhaustion {
                requests,
                request_timeout,
            } => {
                let d = ResourceExhaustion::full();
                vec![ScenarioSpec::ResourceExhaustion(ResourceExhaustion {
                    requests: requests.unwrap_or(d.requests),
                    timeout: request_timeout.unwrap_or(d.timeout),
                })]
            }
            Command::Load {
                model,
                stages,
                start,
                max_in_flight,
                think,
            } => vec![ScenarioSpec::Load(Load {
                model: *model,
                start: start.unwrap_or_else(|| stages.0.first().map_or(0.0, |s| s.target)),
                stages: stages.0.clone(),
                max_in_flight: *max_in_flight,
                think: *think,
            })],
            Command::Scale { phases, pause } => {
                let d = if full { Scale::full() } else { Scale::quick() };
                vec![ScenarioSpec::Scale(Scale {
                    phases: phases.clone().map(|p| p.0).unwrap_or(d.phases),
                    pause: pause.unwrap_or(d.pause),
                })]
            }
            Command::NoisyNeighbour {
                flood_users,
                polite_rate,
                duration,
                flood_bind,
                polite_bind,
                flood_token,
                polite_token,
            } => {
                let d = if full {
                    NoisyNeighbour::full()
                } else {
                    NoisyNeighbour::quick()
                };
                vec![ScenarioSpec::NoisyNeighbour(NoisyNeighbour {
                    flood_users: flood_users.unwrap_or(d.flood_users),
                    polite_rate: polite_rate.unwrap_or(d.polite_rate),
                    duration: duration.unwrap_or(d.duration),
                    flood: Identity {
                        bind: *flood_bind,
                        token: flood_token.clone(),
                    },
                    polite: Identity {
                        bind: *polite_bind,
                        token: polite_token.clone(),
                    },
                    ..d
                })]
            }
        };
        let workload = self.workload.clone().map(|w| match w {
            WorkloadKind::Mixed { batch, .. } => WorkloadKind::Mixed {
                upsert_fraction: self.upsert_fraction,
                batch,
            },
            other => other,
        });
        Plan {
            scenarios,
            seed: self.seed,
            k: self.k,
            workload,
            thresholds: self.thresholds.clone(),
            default_thresholds: !self.no_default_thresholds,
            shard: self.sharding.shard,
            dataset: self.dataset.spec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::suite::LoadModel;

    #[test]
    fn flags_become_a_plan() {
        let cli = Cli::try_parse_from([
            "vecrig-loadgen",
            "--profile",
            "quick",
            "--threshold",
            "p99<50ms",
            "--header",
            "Authorization: Bearer abc",
            "scale",
            "--phases",
            "5:1s,50:2s",
        ])
        .expect("parse");
        let plan = cli.plan();
        assert_eq!(
            plan.scenarios,
            vec![ScenarioSpec::Scale(Scale {
                phases: vec![(5, Duration::from_secs(1)), (50, Duration::from_secs(2))],
                pause: Duration::from_millis(100),
            })]
        );
        assert_eq!(plan.thresholds.len(), 1);
        let options = cli.run_options("http://127.0.0.1:1").expect("options");
        assert_eq!(options.headers[0].0.as_str(), "authorization");
        assert_eq!(options.headers[0].1.to_str().ok(), Some("Bearer abc"));
        assert!(Cli::try_parse_from(["vecrig-loadgen", "--threshold", "p99", "suite"]).is_err());
        assert!(parse_header("no-colon").is_err());

        let cli = Cli::try_parse_from([
            "vecrig-loadgen",
            "load",
            "--stages",
            "30s:100,1m:1000,30s:0",
            "--start",
            "0",
        ])
        .expect("parse");
        let ScenarioSpec::Load(load) = &cli.plan().scenarios[0] else {
            panic!("load expected")
        };
        assert_eq!(load.model, LoadModel::Open);
        assert_eq!(load.stages.len(), 3);
        assert_eq!(load.stages[1].target, 1000.0);
        assert_eq!(load.stages[1].duration, Duration::from_secs(60));
        assert!(Cli::try_parse_from(["vecrig-loadgen", "load", "--stages", "30s"]).is_err());
        assert!(Cli::try_parse_from(["vecrig-loadgen", "load", "--stages", "x:1"]).is_err());
        let cli =
            Cli::try_parse_from(["vecrig-loadgen", "--shard", "1/3", "suite"]).expect("parse");
        assert_eq!(cli.plan().shard, Some((1, 3)));
        for bad in ["3/3", "1", "a/2", "0/0"] {
            assert!(Cli::try_parse_from(["vecrig-loadgen", "--shard", bad, "suite"]).is_err());
        }
    }
}
