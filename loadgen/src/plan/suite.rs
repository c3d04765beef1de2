//! The specification's five stress scenarios, with its parameters as defaults and its pass
//! criteria as default thresholds. Each has a `full` profile (the specification's sizes and
//! durations) and a `quick` one (the same shape, scaled down in time) for fast feedback.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vecrig::validation::criteria;

use crate::dynamic::Templates;
use crate::plan::scenario::{Model, Phase, Scenario, Stage};
use crate::plan::workload::{Workload, WorkloadKind};

/// Sizes and durations: the specification's, or scaled down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Profile {
    /// Scaled down in time: the whole suite in about a minute.
    Quick,
    /// The specification's sizes and durations.
    #[default]
    Full,
}

/// What every scenario needs to build its requests.
#[derive(Debug, Clone)]
pub struct Common {
    /// Vector width of the target (from its `Stats`).
    pub dimensions: usize,
    /// Seed of the request generators (match the server's `--preload-seed`).
    pub seed: u64,
    /// Neighbours per search.
    pub k: u32,
    /// Replaces the scenario's own workload when set.
    pub workload: Option<WorkloadKind>,
    /// What the requests are rendered from: a templated target's set; `None`, vecrig's own.
    pub templates: Option<Arc<Templates>>,
}

impl Common {
    pub(crate) fn workload(&self, default: WorkloadKind) -> Arc<Workload> {
        let kind = self.workload.clone().unwrap_or(default);
        let templates = self.templates.clone().unwrap_or_else(Templates::vecrig_v1);
        Workload::on(kind, self.dimensions, self.seed, self.k, templates)
    }
}

pub(crate) fn params(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

pub(crate) fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `extreme-concurrency`: many users at once, each sending a few queries.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtremeConcurrency {
    /// Concurrent users.
    pub users: u64,
    /// Queries per user.
    pub queries_per_user: u64,
    /// Pause after each answer.
    pub think: Duration,
}

impl ExtremeConcurrency {
    /// The specification's: 1000 users x 10 queries, 1 ms apart.
    pub fn full() -> Self {
        Self {
            users: 1000,
            queries_per_user: 10,
            think: Duration::from_millis(1),
        }
    }

    /// Same as full: it already finishes in seconds.
    pub fn quick() -> Self {
        Self::full()
    }

    /// The scenario.
    pub fn build(&self, common: &Common) -> Scenario {
        Scenario {
            name: "extreme-concurrency".into(),
            description: format!(
                "{} concurrent users each send {} text queries",
                self.users, self.queries_per_user
            ),
            parameters: params(&[
                ("users", self.users.to_string()),
                ("queries_per_user", self.queries_per_user.to_string()),
                ("think", human(self.think)),
            ]),
            phases: vec![Phase {
                name: format!("{}-users", self.users),
                model: Model::Closed {
                    users: self.users,
                    iterations: Some(self.queries_per_user),
                    duration: None,
                    think: self.think,
                    stagger: None,
                },
            }],
            workload: common.workload(WorkloadKind::Spec(
                "stress_test_user_{user}_query_{i}".into(),
            )),
            thresholds: criteria::extreme_concurrency(),
            monitor_every: None,
            check_recovery: false,
            timeout: None,
            identities: Vec::new(),
        }
    }
}

/// `memory-pressure`: tasks sending very large text queries for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPressure {
    /// Concurrent tasks.
    pub tasks: u64,
    /// How long.
    pub duration: Duration,
    /// Approximate size of each query, bytes.
    pub query_bytes: usize,
    /// Pause after each answer.
    pub pause: Duration,
}

impl MemoryPressure {
    /// The specification's: 50 tasks, ~150 KB queries (`"large_test_data " x 10000`), 30 s.
    pub fn full() -> Self {
        Self {
            tasks: 50,
            duration: Duration::from_secs(30),
            query_bytes: 160_000,
            pause: Duration::from_millis(10),
        }
    }

    /// 10 s instead of 30.
    pub fn quick() -> Self {
        Self {
            duration: Duration::from_secs(10),
            ..Self::full()
        }
    }

    /// The scenario.
    pub fn build(&self, common: &Common) -> Scenario {
        Scenario {
            name: "memory-pressure".into(),
            description: format!(
                "{} tasks send ~{} KB text queries for {}; judged on the server's memory",
                self.tasks,
                self.query_bytes / 1000,
                human(self.duration)
            ),
            parameters: params(&[
                ("tasks", self.tasks.to_string()),
                ("duration", human(self.duration)),
                ("query_bytes", self.query_bytes.to_string()),
                ("pause", human(self.pause)),
            ]),
            phases: vec![Phase {
                name: format!("{}-tasks", self.tasks),
                model: Model::Closed {
                    users: self.tasks,
                    iterations: None,
                    duration: Some(self.duration),
                    think: self.pause,
                    stagger: None,
                },
            }],
            workload: common.workload(WorkloadKind::LargeText {
                bytes: self.query_bytes,
            }),
            thresholds: criteria::memory_pressure(),
            monitor_every: None,
            check_recovery: false,
            timeout: None,
            identities: Vec::new(),
        }
    }
}

/// `sustained`: a steady rate for a long time, monitored as it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Sustained {
    /// Concurrent workers.
    pub workers: u64,
    /// Total queries per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// How often to print a monitor line.
    pub monitor_every: Duration,
}

impl Sustained {
    /// The specification's: 10 workers, 100 QPS in total, 5 minutes, a check every 10 s.
    pub fn full() -> Self {
        Self {
            workers: 10,
            rate: 100.0,
            duration: Duration::from_secs(300),
            monitor_every: Duration::from_secs(10),
        }
    }

    /// 20 s, a check every 5 s.
    pub fn quick() -> Self {
        Self {
            duration: Duration::from_secs(20),
            monitor_every: Duration::from_secs(5),
            ..Self::full()
        }
    }

    /// The scenario.
    pub fn build(&self, common: &Common) -> Scenario {
        Scenario {
            name: "sustained".into(),
            description: format!(
                "{} workers send {} queries per second in total for {}, on schedule",
                self.workers,
                self.rate,
                human(self.duration)
            ),
            parameters: params(&[
                ("workers", self.workers.to_string()),
                ("rate", self.rate.to_string()),
                ("duration", human(self.duration)),
                ("monitor_every", human(self.monitor_every)),
            ]),
            phases: vec![Phase {
                name: format!("{}-qps", self.rate),
                model: Model::Paced {
                    workers: self.workers,
                    rate: self.rate,
                    duration: self.duration,
                },
            }],
            workload: common.workload(WorkloadKind::Spec(
                "sustained_load_worker_{user}_query_{i}".into(),
            )),
            thresholds: criteria::sustained(self.rate),
            monitor_every: Some(self.monitor_every),
            check_recovery: false,
            timeout: None,
            identities: Vec::new(),
        }
    }
}

/// `resource-exhaustion`: far more concurrent requests than the server can serve at once.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceExhaustion {
    /// Concurrent one-shot requests.
    pub requests: u64,
    /// Each request's deadline.
    pub timeout: Duration,
}

impl ResourceExhaustion {
    /// The specification's: 2000 concurrent requests, 30 s deadline each.
    pub fn full() -> Self {
        Self {
            requests: 2000,
            timeout: Duration::from_secs(30),
        }
    }

    /// Same as full: it already finishes in seconds.
    pub fn quick() -> Self {
        Self::full()
    }

    /// The scenario. Its deadline is applied by the caller (`Context::timeout`).
    pub fn build(&self, common: &Common) -> Scenario {
        Scenario {
            name: "resource-exhaustion".into(),
            description: format!(
                "{} concurrent one-shot queries, {} deadline each",
                self.requests,
                human(self.timeout)
            ),
            parameters: params(&[
                ("requests", self.requests.to_string()),
                ("timeout", human(self.timeout)),
            ]),
            phases: vec![Phase {
                name: format!("{}-concurrent", self.requests),
                model: Model::Closed {
                    users: self.requests,
                    iterations: Some(1),
                    duration: None,
                    think: Duration::ZERO,
                    // As the specification: a 10 ms pause after every 100 requests started.
                    stagger: Some((100, Duration::from_millis(10))),
                },
            }],
            workload: common.workload(WorkloadKind::Spec("resource_exhaustion_test_{user}".into())),
            thresholds: criteria::resource_exhaustion(),
            monitor_every: None,
            check_recovery: false,
            timeout: Some(self.timeout),
            identities: Vec::new(),
        }
    }
}

/// `scale`: concurrency stepped up and down quickly.
#[derive(Debug, Clone, PartialEq)]
pub struct Scale {
    /// (workers, duration) of each phase, in order.
    pub phases: Vec<(u64, Duration)>,
    /// Pause after each answer.
    pub pause: Duration,
}

impl Scale {
    /// The specification's: 10 (30 s) -> 500 (60 s) -> 1000 (30 s) -> 100 (30 s) -> 10 (30 s).
    pub fn full() -> Self {
        let s = Duration::from_secs;
        Self {
            phases: vec![
                (10, s(30)),
                (500, s(60)),
                (1000, s(30)),
                (100, s(30)),
                (10, s(30)),
            ],
            pause: Duration::from_millis(100),
        }
    }

    /// The same steps, 3-5 s each.
    pub fn quick() -> Self {
        let s = Duration::from_secs;
        Self {
            phases: vec![
                (10, s(3)),
                (500, s(5)),
                (1000, s(3)),
                (100, s(3)),
                (10, s(3)),
            ],
            ..Self::full()
        }
    }

    /// Parses `10:30s,500:1m,...`.
    pub fn parse_phases(text: &str) -> Result<Vec<(u64, Duration)>, String> {
        text.split(',')
            .map(|step| {
                let (workers, duration) = step
                    .split_once(':')
                    .ok_or_else(|| format!("{step:?}: expected WORKERS:DURATION"))?;
                let workers = workers
                    .trim()
                    .parse()
                    .map_err(|e| format!("{step:?}: workers: {e}"))?;
                let duration = humantime::parse_duration(duration.trim())
                    .map_err(|e| format!("{step:?}: duration: {e}"))?;
                Ok((workers, duration))
            })
            .collect()
    }

    /// The scenario.
    pub fn build(&self, common: &Common) -> Scenario {
        let steps: Vec<String> = self
            .phases
            .iter()
            .map(|(w, d)| format!("{w}:{}", human(*d)))
            .collect();
        Scenario {
            name: "scale".into(),
            description: format!(
                "workers stepped {} with {} pauses",
                steps.join(" -> "),
                human(self.pause)
            ),
            parameters: params(&[("phases", steps.join(",")), ("pause", human(self.pause))]),
            phases: self
                .phases
                .iter()
                .enumerate()
                .map(|(i, (workers, duration))| Phase {
                    name: format!("{}-{workers}-workers", i + 1),
                    model: Model::Closed {
                        users: *workers,
                        iterations: None,
                        duration: Some(*duration),
                        think: self.pause,
                        stagger: None,
                    },
                })
                .collect(),
            workload: common.workload(WorkloadKind::Spec("scale_test_c{c}_w{user}_q{i}".into())),
            thresholds: criteria::scale(),
            monitor_every: None,
            check_recovery: true,
            timeout: None,
            identities: Vec::new(),
        }
    }
}

/// Which model a custom `load` follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadModel {
    /// Users that wait for each answer (k6's ramping-vus).
    Closed,
    /// Arrivals on schedule whatever the answers (k6's ramping-arrival-rate).
    Open,
}

/// `load`: a custom load in stages, closed (users) or open (arrival rate).
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    /// Closed or open.
    pub model: LoadModel,
    /// Users or rate at the start of the first stage.
    pub start: f64,
    /// The stages.
    pub stages: Vec<Stage>,
    /// Open model: outstanding requests allowed.
    pub max_in_flight: u64,
    /// Closed model: pause after each answer.
    pub think: Duration,
}

impl Load {
    /// The scenario: one phase per stage.
    pub fn build(&self, common: &Common) -> Scenario {
        let mut from = self.start;
        let mut phases = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let to = stage.target;
            let model = match self.model {
                LoadModel::Open => Model::Open {
                    from,
                    to,
                    duration: stage.duration,
                    max_in_flight: self.max_in_flight,
                },
                LoadModel::Closed => Model::Ramping {
                    from: from.round() as u64,
                    to: to.round() as u64,
                    duration: stage.duration,
                    think: self.think,
                },
            };
            phases.push(Phase {
                name: format!("stage-{}", i + 1),
                model,
            });
            from = to;
        }
        let stages: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{}:{}", human(s.duration), s.target))
            .collect();
        let unit = match self.model {
            LoadModel::Open => "requests/s",
            LoadModel::Closed => "users",
        };
        Scenario {
            name: "load".into(),
            description: format!(
                "{:?} model from {} {unit} through stages {}",
                self.model,
                self.start,
                stages.join(" -> ")
            )
            .to_lowercase(),
            parameters: params(&[
                ("model", format!("{:?}", self.model).to_lowercase()),
                ("start", self.start.to_string()),
                ("stages", stages.join(",")),
                ("max_in_flight", self.max_in_flight.to_string()),
                ("think", human(self.think)),
            ]),
            phases,
            workload: common.workload(WorkloadKind::Vector),
            thresholds: vec!["server_faults==0".parse().expect("threshold parses")],
            monitor_every: None,
            check_recovery: false,
            timeout: None,
            identities: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_phases_parse() {
        let phases = Scale::parse_phases("10:30s, 500:1m,1000:2s").expect("parse");
        assert_eq!(
            phases,
            vec![
                (10, Duration::from_secs(30)),
                (500, Duration::from_secs(60)),
                (1000, Duration::from_secs(2))
            ]
        );
        assert!(Scale::parse_phases("10").is_err());
        assert!(Scale::parse_phases("x:1s").is_err());
        assert!(Scale::parse_phases("10:soon").is_err());
    }
}
