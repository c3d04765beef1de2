//! One `[[scenario]]` of a scenario file ([`Entry`]): a built-in by name with any of its
//! parameters overridden, or a custom staged load; and its optional `ingest` phase
//! ([`IngestSpec`]). [`crate::plan::file`] reads the file around it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::plan::scenario::parse_stages;
use crate::plan::spec::ScenarioSpec;
use crate::plan::suite::{
    ExtremeConcurrency, Load, LoadModel, MemoryPressure, Profile, ResourceExhaustion, Scale,
    Sustained,
};

/// A scenario's `ingest` phase: the seeded data set written through the write template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Points in the data set (with a `[dataset]`: its first `points`; 0 or none: all).
    #[serde(default)]
    pub points: usize,
    /// Points per write request.
    #[serde(default = "IngestSpec::default_batch")]
    pub batch: usize,
    /// Users writing at once.
    #[serde(default = "IngestSpec::default_writers")]
    pub writers: u64,
}

impl IngestSpec {
    fn default_batch() -> usize {
        100
    }

    fn default_writers() -> u64 {
        8
    }
}

/// One scenario of a file. Unknown keys are an error, so a typo never passes silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// A built-in's name, or the name of a custom load.
    pub name: String,
    /// Built-ins: users (extreme-concurrency).
    pub users: Option<u64>,
    /// Built-ins: queries per user (extreme-concurrency).
    pub queries_per_user: Option<u64>,
    /// Built-ins: pause after each answer (extreme-concurrency).
    pub think: Option<String>,
    /// Built-ins: tasks (memory-pressure).
    pub tasks: Option<u64>,
    /// Built-ins: duration (memory-pressure, sustained).
    pub duration: Option<String>,
    /// Built-ins: query size in bytes (memory-pressure).
    pub query_bytes: Option<usize>,
    /// Built-ins: workers (sustained).
    pub workers: Option<u64>,
    /// Built-ins: total rate (sustained).
    pub rate: Option<f64>,
    /// Built-ins: monitor interval (sustained).
    pub monitor_every: Option<String>,
    /// Built-ins: concurrent requests (resource-exhaustion).
    pub requests: Option<u64>,
    /// Built-ins: each request's deadline (resource-exhaustion).
    pub request_timeout: Option<String>,
    /// Built-ins: steps `WORKERS:DURATION,...` (scale).
    pub phases: Option<String>,
    /// Built-ins: pause after each answer (scale).
    pub pause: Option<String>,
    /// Custom: `open` or `closed`.
    pub model: Option<String>,
    /// Custom: rate or users at the start.
    pub start: Option<f64>,
    /// Custom: stages `DURATION:TARGET,...`.
    pub stages: Option<String>,
    /// Custom: outstanding requests allowed (open model).
    pub max_in_flight: Option<u64>,
    /// The requests: spec, text, vector, fixed, exact or mixed.
    pub workload: Option<String>,
    /// Thresholds, added to a built-in's criteria.
    #[serde(default)]
    pub thresholds: Vec<String>,
    /// Free-form labels, copied into the report's parameters as `tag.NAME`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Templated targets: write the data set first, as a phase named `ingest`.
    pub ingest: Option<IngestSpec>,
}

fn duration(field: &str, text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref()
        .map(|t| humantime::parse_duration(t).map_err(|e| format!("{field}: {e}")))
        .transpose()
}

impl Entry {
    /// The scenario this entry asks for: a built-in with its overrides, or a custom load.
    pub(crate) fn spec(&self, profile: Profile) -> Result<ScenarioSpec, String> {
        let full = profile == Profile::Full;
        let ctx = |e: String| format!("scenario {:?}: {e}", self.name);
        Ok(match self.name.as_str() {
            "extreme-concurrency" => {
                let d = ExtremeConcurrency::full();
                ScenarioSpec::ExtremeConcurrency(ExtremeConcurrency {
                    users: self.users.unwrap_or(d.users),
                    queries_per_user: self.queries_per_user.unwrap_or(d.queries_per_user),
                    think: duration("think", &self.think)?.unwrap_or(d.think),
                })
            }
            "memory-pressure" => {
                let d = if full {
                    MemoryPressure::full()
                } else {
                    MemoryPressure::quick()
                };
                ScenarioSpec::MemoryPressure(MemoryPressure {
                    tasks: self.tasks.unwrap_or(d.tasks),
                    duration: duration("duration", &self.duration)?.unwrap_or(d.duration),
                    query_bytes: self.query_bytes.unwrap_or(d.query_bytes),
                    pause: d.pause,
                })
            }
            "sustained" => {
                let d = if full {
                    Sustained::full()
                } else {
                    Sustained::quick()
                };
                ScenarioSpec::Sustained(Sustained {
                    workers: self.workers.unwrap_or(d.workers),
                    rate: self.rate.unwrap_or(d.rate),
                    duration: duration("duration", &self.duration)?.unwrap_or(d.duration),
                    monitor_every: duration("monitor_every", &self.monitor_every)?
                        .unwrap_or(d.monitor_every),
                })
            }
            "resource-exhaustion" => {
                let d = ResourceExhaustion::full();
                ScenarioSpec::ResourceExhaustion(ResourceExhaustion {
                    requests: self.requests.unwrap_or(d.requests),
                    timeout: duration("request_timeout", &self.request_timeout)?
                        .unwrap_or(d.timeout),
                })
            }
            "scale" => {
                let d = if full { Scale::full() } else { Scale::quick() };
                ScenarioSpec::Scale(Scale {
                    phases: match &self.phases {
                        Some(p) => Scale::parse_phases(p).map_err(ctx)?,
                        None => d.phases,
                    },
                    pause: duration("pause", &self.pause)?.unwrap_or(d.pause),
                })
            }
            _ => {
                let stages = parse_stages(
                    self.stages
                        .as_deref()
                        .ok_or_else(|| ctx("a custom scenario needs stages".into()))?,
                )
                .map_err(ctx)?;
                let model = match self.model.as_deref().unwrap_or("open") {
                    "open" => LoadModel::Open,
                    "closed" => LoadModel::Closed,
                    other => return Err(ctx(format!("model {other:?}: expected open or closed"))),
                };
                ScenarioSpec::Load(Load {
                    model,
                    start: self
                        .start
                        .unwrap_or_else(|| stages.first().map_or(0.0, |s| s.target)),
                    stages,
                    max_in_flight: self.max_in_flight.unwrap_or(1000),
                    think: duration("think", &self.think)?.unwrap_or(Duration::ZERO),
                })
            }
        })
    }
}
