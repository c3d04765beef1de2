//! `vecrig-loadgen fault`: a paced load of searches and stamped writes, kept up while a fault
//! is injected from outside (the server container killed and restarted, the network cut and
//! restored), or caused by the load itself (the server pushed against its memory limit), and
//! a verdict on what the clients saw.
//!
//! The loadgen does not inject the fault: the environment does (`docker kill`, `docker
//! network disconnect`; see `docker/fault.sh`). It sends the load through the ordinary scheduler
//! (paced model, deadlines, retries under a budget), records every acknowledged write
//! ([`crate::measure::acks`]), reads them all back once the load is over, and judges the run with
//! [`vecrig::validation::fault`]: outage window, time to recover throughput, server restarts,
//! acknowledged writes lost. The verdict lands in the scenario's report (`fault`) and its
//! checks among the thresholds, so the exit code says whether the fault was survived.
//!
//! Two settings matter for a fault run and differ from the stress scenarios': a short request
//! deadline (a request to a cut network fails in seconds, not 30), and a short HTTP/2 keepalive
//! (a connection to a peer that vanished is noticed and re-dialled within seconds).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vecrig::validation::fault::{self, AckCheck, Expectations, FaultKind};
use vecrig::validation::report::Report;

use crate::measure::acks::Acks;
use crate::plan::scenario::{Model, Phase, Scenario};
use crate::plan::suite::Common;
use crate::plan::workload::{Workload, WorkloadKind};
use crate::plan::{Plan, RunOptions};
use crate::scheduler::Stop;
use crate::target::{self, PreflightError};

/// A fault run's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRun {
    /// The fault expected (decides which checks apply).
    pub kind: FaultKind,
    /// How long the load runs.
    pub duration: Duration,
    /// Requests per second, in total.
    pub rate: f64,
    /// Paced workers sharing the rate.
    pub workers: u64,
    /// Share of requests that are upserts.
    pub upsert_fraction: f64,
    /// Points per upsert.
    pub batch: usize,
    /// Extra payload bytes per written point.
    pub pad_bytes: usize,
    /// Each request's deadline.
    pub request_timeout: Duration,
    /// HTTP/2 keepalive: how soon a vanished peer is noticed.
    pub keepalive: Duration,
    /// Recovered: successes per second back to this fraction of the baseline ...
    pub recovered_fraction: f64,
    /// ... within this long after the outage's end.
    pub recover_within: Duration,
    /// Longest outage that passes.
    pub max_outage: Duration,
    /// Concurrent `Get`s when reading the acknowledged writes back.
    pub verify_concurrency: usize,
}

impl FaultRun {
    /// Defaults for a kind of fault. The memory run writes big points in small batches: it
    /// fills memory quickly while costing the server's single writer little index work.
    pub fn new(kind: FaultKind) -> Self {
        let base = Self {
            kind,
            duration: Duration::from_secs(60),
            rate: 200.0,
            workers: 20,
            upsert_fraction: 0.2,
            batch: 16,
            pad_bytes: 0,
            request_timeout: Duration::from_secs(2),
            keepalive: Duration::from_secs(2),
            recovered_fraction: 0.8,
            recover_within: Duration::from_secs(10),
            max_outage: Duration::from_secs(120),
            verify_concurrency: 32,
        };
        match kind {
            FaultKind::Memory => Self {
                rate: 50.0,
                workers: 10,
                upsert_fraction: 0.5,
                batch: 64,
                pad_bytes: 8 * 1024,
                // A snapshot under heavy writes stalls writes for a moment: slow, not gone.
                request_timeout: Duration::from_secs(10),
                ..base
            },
            _ => base,
        }
    }

    /// The scenario: one paced phase of vector searches and stamped upserts recorded in `acks`.
    pub fn build(&self, common: &Common, acks: Acks) -> Scenario {
        let human = |d: Duration| humantime::format_duration(d).to_string();
        let parameters: BTreeMap<String, String> = [
            ("kind", self.kind.name().to_string()),
            ("duration", human(self.duration)),
            ("rate", self.rate.to_string()),
            ("workers", self.workers.to_string()),
            ("upsert_fraction", self.upsert_fraction.to_string()),
            ("batch", self.batch.to_string()),
            ("pad_bytes", self.pad_bytes.to_string()),
            ("request_timeout", human(self.request_timeout)),
            ("keepalive", human(self.keepalive)),
            ("recover_within", human(self.recover_within)),
            ("max_outage", human(self.max_outage)),
            ("stamp", acks.stamp().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        Scenario {
            name: format!("fault-{}", self.kind.name()),
            description: format!(
                "{} requests/s ({}% upserts of {} points) for {} while the fault '{}' happens; acknowledged writes read back after",
                self.rate,
                self.upsert_fraction * 100.0,
                self.batch,
                human(self.duration),
                self.kind.name()
            ),
            parameters,
            phases: vec![Phase {
                name: "load".into(),
                model: Model::Paced {
                    workers: self.workers.max(1),
                    rate: self.rate,
                    duration: self.duration,
                },
            }],
            workload: Workload::new(
                WorkloadKind::Durable {
                    upsert_fraction: self.upsert_fraction,
                    batch: self.batch.max(1),
                    pad_bytes: self.pad_bytes,
                    acks,
                },
                common.dimensions,
                common.seed,
                common.k,
            ),
            // No stress criteria: a fault run is judged by its verdict (added after the run).
            // Not even server_faults==0: a connection cut mid-request may end as UNKNOWN.
            thresholds: Vec::new(),
            monitor_every: Some(Duration::from_secs(5)),
            check_recovery: false,
            timeout: Some(self.request_timeout),
            identities: Vec::new(),
        }
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Runs the fault load against the target, reads the acknowledged writes back, and judges.
pub async fn run(
    options: &RunOptions,
    plan: &Plan,
    fault: &FaultRun,
    stop: &Stop,
) -> Result<Report, PreflightError> {
    let (shard, shards) = plan.shard.unwrap_or((0, 1));
    // Unique per run and shard: a point holding another stamp is an older write, not ours.
    let acks = Acks::new(format!("{}-{shard}", unix_ms()));
    let mut options = options.clone();
    options.connect.keepalive = fault.keepalive;
    let mut report = crate::runner::run_with(&options, plan.seed, stop, |stats| {
        let common = Common {
            dimensions: stats.dimensions as usize,
            seed: plan.seed,
            k: plan.k,
            workload: None,
            templates: None,
        };
        let mut scenario = fault.build(&common, acks.clone());
        scenario.thresholds.extend(plan.thresholds.iter().cloned());
        if let Some((index, count)) = plan.shard {
            scenario.shard(index, count);
        }
        vec![scenario]
    })
    .await?;

    // The server may still be coming back (a restart late in the run): wait for it as the
    // pre-flight does, then read every acknowledged write back.
    let acked = acks.len() as u64;
    let headers: vecrig::client::Metadata = options.headers.clone().into();
    let check = match target::preflight(
        &options.target,
        &options.connect,
        &headers,
        options.wait_healthy,
    )
    .await
    {
        Ok(checked) => {
            acks.verify(&checked.pool, &headers, fault.verify_concurrency)
                .await
        }
        Err(e) => {
            report
                .warnings
                .push(format!("cannot read the acknowledged writes back: {e}"));
            AckCheck {
                acked,
                unverified: acked,
                ..AckCheck::default()
            }
        }
    };
    let expectations = Expectations {
        target_qps: fault.rate / shards as f64,
        recovered_fraction: fault.recovered_fraction,
        recover_within_s: fault.recover_within.as_secs_f64(),
        max_outage_s: fault.max_outage.as_secs_f64(),
    };
    if let Some(scenario) = report.scenarios.first_mut() {
        let (verdict, checks) = fault::judge(scenario, fault.kind, expectations, check);
        scenario.passed &= checks.iter().all(|c| c.passed);
        scenario.thresholds.extend(checks);
        scenario.fault = Some(verdict);
    }
    report.passed = !report.scenarios.is_empty() && report.scenarios.iter().all(|s| s.passed);
    Ok(report)
}

/// The fault verdict as the printed report shows it, under the scenario's table.
pub fn render(v: &vecrig::validation::fault::FaultVerdict) -> String {
    let mut out = format!(
        "  fault '{}': baseline {:.1} ok/s; ",
        v.kind.name(),
        v.baseline_qps
    );
    match (v.outage_start_s, v.outage_end_s) {
        (Some(a), Some(b)) => {
            let errors: Vec<String> = v
                .outage_errors
                .iter()
                .map(|(c, n)| format!("{c}={n}"))
                .collect();
            out += &format!(
                "outage {a:.0}s..{b:.0}s ({:.0} s: {}), ",
                v.outage_s,
                errors.join(" ")
            );
            out += &match v.recovery_s {
                Some(r) => format!("throughput back {r:.0} s after it; "),
                None => "throughput never came back; ".into(),
            };
        }
        _ => out += "no outage; ",
    }
    out += &format!(
        "server restarts {}; longest Stats gap {:.1} s; refused {}\n  acknowledged writes: {} points, {} read back as written, {} lost, {} unverified{}\n",
        v.server_restarts,
        v.max_stats_gap_s,
        v.refused,
        v.acks.acked,
        v.acks.verified,
        v.acks.lost,
        v.acks.unverified,
        if v.acks.lost_ids.is_empty() {
            String::new()
        } else {
            format!(" (lost ids include {:?})", v.acks.lost_ids)
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_paced_durable_scenario_that_shards() {
        let common = Common {
            dimensions: 8,
            seed: 1,
            k: 10,
            workload: None,
            templates: None,
        };
        let acks = Acks::new("s");
        let mut scenario = FaultRun::new(FaultKind::Restart).build(&common, acks.clone());
        assert_eq!(scenario.name, "fault-restart");
        assert_eq!(scenario.timeout, Some(Duration::from_secs(2)));
        assert!(matches!(
            scenario.workload.kind(),
            WorkloadKind::Durable { acks: a, .. } if *a == acks
        ));
        scenario.shard(1, 2);
        assert_eq!(
            scenario.phases[0].model,
            Model::Paced {
                workers: 10,
                rate: 100.0,
                duration: Duration::from_secs(60)
            }
        );
        let memory = FaultRun::new(FaultKind::Memory);
        assert!(memory.pad_bytes > 0 && memory.request_timeout > Duration::from_secs(2));
    }
}
