//! Scenario files: several scenarios in one TOML file, each a built-in (by name, with any of
//! its parameters overridden) or a custom staged load, with its own workload, thresholds and
//! tags. `vecrig-loadgen run FILE.toml`.
//!
//! ```toml
//! [[scenario]]
//! name = "extreme-concurrency"     # a built-in: the specification's parameters and criteria,
//! users = 500                      # overridden where given
//! thresholds = ["p99<300ms"]       # added to the built-in's criteria
//! tags = { owner = "search" }
//!
//! [[scenario]]
//! name = "ramp"                    # any other name: a custom load in stages
//! model = "open"                   # open (arrival rate) or closed (users)
//! start = 0
//! stages = "30s:100,1m:1000,30s:0"
//! max_in_flight = 2000
//! workload = "vector"              # spec, text, vector, exact or mixed
//! thresholds = ["p99<50ms", "dropped==0"]
//! ```
//!
//! A `[target]` table makes the target any gRPC vector service (see [`crate::dynamic`]): its
//! methods, request templates and where the ids are in its answers. Every scenario then
//! sends searches rendered from the template, and a scenario may start with an `ingest`
//! phase that writes the seeded data set through the write template, so the loadgen computes
//! recall itself:
//!
//! ```toml
//! [target]
//! dimensions = 16
//! metric = "l2"                     # how the target ranks: cosine (default), l2 or ip
//! # protos = ["store.proto"]        # else: the target's server reflection
//! search = { method = "store.Store/Nearest", ids = "matches[].key", request = '''
//!   {"embedding": "{{vector}}", "limit": "{{k}}"} ''' }
//! write = { method = "store.Store/Put", request = '''
//!   {"items": [{"key": "{{id}}", "embedding": "{{vector}}"}]} ''' }
//!
//! [[scenario]]
//! name = "sustained"
//! ingest = { points = 5000, batch = 100, writers = 4 }
//! thresholds = ["recall>=0.95"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use vecrig::validation::threshold::Threshold;

use crate::dynamic::{TargetSpec, Templates, Truth};
use crate::engine::model::Writes;
use crate::engine::{Model, Phase, Scenario, parse_stages};
use crate::scenario::{
    Common, ExtremeConcurrency, Load, LoadModel, MemoryPressure, Profile, ResourceExhaustion,
    Scale, Sustained,
};
use crate::spec::ScenarioSpec;
use crate::workload::{Workload, WorkloadKind};

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The scenarios, run in order.
    #[serde(rename = "scenario")]
    pub scenarios: Vec<Entry>,
    /// A templated target: any gRPC vector service.
    pub target: Option<TargetSpec>,
}

/// A scenario's `ingest` phase: the seeded data set written through the write template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSpec {
    /// Points in the data set.
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
    /// The requests: spec, text, vector, exact or mixed.
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

/// A file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("scenario file: {0}")]
pub struct FileError(String);

fn duration(field: &str, text: &Option<String>) -> Result<Option<Duration>, FileError> {
    text.as_deref()
        .map(|t| humantime::parse_duration(t).map_err(|e| FileError(format!("{field}: {e}"))))
        .transpose()
}

impl Entry {
    fn spec(&self, profile: Profile) -> Result<ScenarioSpec, FileError> {
        let full = profile == Profile::Full;
        let ctx = |e: String| FileError(format!("scenario {:?}: {e}", self.name));
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

/// `[target] builtin = "vecrig.v1"`: the built-in template set fills in the methods the
/// table does not give itself.
fn with_builtin_templates(table: &mut toml::Table) -> Result<(), FileError> {
    let Some(toml::Value::Table(target)) = table.get_mut("target") else {
        return Ok(());
    };
    let Some(builtin) = target.remove("builtin") else {
        return Ok(());
    };
    if builtin.as_str() != Some("vecrig.v1") {
        return Err(FileError(format!(
            "[target] builtin = {builtin}: the built-in template set is \"vecrig.v1\""
        )));
    }
    let set: toml::Table = toml::from_str(crate::dynamic::VECRIG_V1)
        .map_err(|e| FileError(format!("the built-in template set: {e}")))?;
    for (key, value) in set {
        target.entry(key).or_insert(value);
    }
    Ok(())
}

/// A parsed file, ready to build: checks everything (names, durations, stages, thresholds,
/// workloads) before any load is sent.
#[derive(Debug)]
pub struct Planned {
    entries: Vec<(Entry, ScenarioSpec, Option<WorkloadKind>, Vec<Threshold>)>,
    target: Option<TargetSpec>,
    /// Where relative paths in the file (`protos`) start.
    base: PathBuf,
}

impl Planned {
    /// Parses and checks a file's text.
    pub fn parse(text: &str, profile: Profile) -> Result<Self, FileError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| FileError(e.to_string()))?;
        with_builtin_templates(&mut table)?;
        let file = File::deserialize(table).map_err(|e| FileError(e.to_string()))?;
        if file.scenarios.is_empty() {
            return Err(FileError("no [[scenario]] in the file".into()));
        }
        let mut entries = Vec::new();
        let ingests = file.scenarios.iter().filter(|e| e.ingest.is_some()).count();
        if ingests > 1 {
            return Err(FileError(
                "ingest in more than one scenario: the data set is written once".into(),
            ));
        }
        for entry in &file.scenarios {
            let ctx = |e: &str| FileError(format!("scenario {:?}: {e}", entry.name));
            match (&file.target, &entry.ingest) {
                (None, Some(_)) => return Err(ctx("ingest needs a [target] with a write method")),
                (Some(t), Some(_)) if t.write.is_none() => {
                    return Err(ctx("ingest needs [target].write"));
                }
                (Some(_), _) if entry.workload.is_some() => {
                    return Err(ctx(
                        "workload: a [target]'s requests come from its templates",
                    ));
                }
                (_, Some(i)) if i.points == 0 || i.batch == 0 || i.writers == 0 => {
                    return Err(ctx("ingest: points, batch and writers must be at least 1"));
                }
                _ => {}
            }
        }
        for entry in file.scenarios {
            let spec = entry.spec(profile)?;
            let workload = entry
                .workload
                .as_deref()
                .map(str::parse::<WorkloadKind>)
                .transpose()
                .map_err(|e| FileError(format!("scenario {:?}: {e}", entry.name)))?;
            let thresholds = entry
                .thresholds
                .iter()
                .map(|t| t.parse::<Threshold>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| FileError(format!("scenario {:?}: {e}", entry.name)))?;
            entries.push((entry, spec, workload, thresholds));
        }
        Ok(Self {
            entries,
            target: file.target,
            base: PathBuf::from("."),
        })
    }

    /// The same plan, its relative paths taken from `dir` (the file's directory).
    pub fn relative_to(mut self, dir: &Path) -> Self {
        self.base = dir.to_path_buf();
        self
    }

    /// The same plan with its templated target's descriptors from these `.proto` files
    /// (given on the command line: relative to the working directory), in place of the
    /// file's own or reflection. Nothing to do when none are given.
    pub fn with_protos(
        mut self,
        protos: &[PathBuf],
        includes: &[PathBuf],
    ) -> Result<Self, FileError> {
        if protos.is_empty() && includes.is_empty() {
            return Ok(self);
        }
        let Some(target) = &mut self.target else {
            return Err(FileError(
                "--proto needs a [target] table in the file (a templated target)".into(),
            ));
        };
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let absolute = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                cwd.join(p)
            }
        };
        if !protos.is_empty() {
            target.protos = protos.iter().map(absolute).collect();
        }
        target.proto_path = includes.iter().map(absolute).collect();
        Ok(self)
    }

    /// Where relative paths in the file start.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The templated target, if the file has one.
    pub fn target(&self) -> Option<&TargetSpec> {
        self.target.as_ref()
    }

    /// The ingest phase's data set (`None` without one), seeded by `seed`.
    pub fn truth(&self, seed: u64) -> Option<Arc<Truth>> {
        let target = self.target.as_ref()?;
        let ingest = self.entries.iter().find_map(|(e, ..)| e.ingest)?;
        Some(Arc::new(Truth::new(
            target.dimensions,
            seed,
            ingest.points,
            ingest.batch,
            target.first_id,
            target.metric,
        )))
    }

    /// Builds the scenarios for a templated target: every scenario's searches from the
    /// templates, and the scenario with `ingest` starting with a phase that writes `truth`.
    pub fn build_templated(
        &self,
        seed: u64,
        k: u32,
        templates: &Arc<Templates>,
        truth: Option<&Arc<Truth>>,
    ) -> Vec<Scenario> {
        let dimensions = templates.dimensions;
        let mut scenarios = self.build_with(
            dimensions,
            seed,
            k,
            Some(WorkloadKind::Templated(Arc::clone(templates))),
        );
        for ((entry, ..), scenario) in self.entries.iter().zip(&mut scenarios) {
            let (Some(ingest), Some(truth)) = (entry.ingest, truth) else {
                continue;
            };
            let kind = WorkloadKind::Ingest {
                templates: Arc::clone(templates),
                truth: Arc::clone(truth),
                writers: ingest.writers,
            };
            let writes = Writes(Workload::new(kind, dimensions, seed, k));
            scenario.phases.insert(
                0,
                Phase {
                    name: "ingest".into(),
                    model: Model::Ingest {
                        writers: ingest.writers,
                        writes,
                    },
                },
            );
            scenario.parameters.insert(
                "ingest".into(),
                format!("{} points in batches of {}", ingest.points, ingest.batch),
            );
        }
        scenarios
    }

    /// Number of scenarios.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Builds the scenarios for a target of `dimensions`.
    pub fn build(&self, dimensions: usize, seed: u64, k: u32) -> Vec<Scenario> {
        self.build_with(dimensions, seed, k, None)
    }

    fn build_with(
        &self,
        dimensions: usize,
        seed: u64,
        k: u32,
        every: Option<WorkloadKind>,
    ) -> Vec<Scenario> {
        self.entries
            .iter()
            .map(|(entry, spec, workload, thresholds)| {
                let common = Common {
                    dimensions,
                    seed,
                    k,
                    workload: every.clone().or_else(|| workload.clone()),
                };
                let mut scenario = spec.build(&common);
                scenario.name = entry.name.clone();
                scenario.thresholds.extend(thresholds.iter().cloned());
                for (k, v) in &entry.tags {
                    scenario.parameters.insert(format!("tag.{k}"), v.clone());
                }
                scenario
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[scenario]]
name = "extreme-concurrency"
users = 500
thresholds = ["p99<300ms"]
tags = { owner = "search" }

[[scenario]]
name = "memory-pressure"
[[scenario]]
name = "sustained"
rate = 50
[[scenario]]
name = "resource-exhaustion"
[[scenario]]
name = "scale"
phases = "10:1s,100:2s"

[[scenario]]
name = "ramp"
model = "open"
start = 0
stages = "30s:100,1m:1000,30s:0"
max_in_flight = 2000
workload = "vector"
thresholds = ["p99<50ms", "dropped==0"]
"#;

    #[test]
    fn the_five_built_ins_and_a_custom_load() {
        let planned = Planned::parse(FILE, Profile::Quick).expect("parse");
        assert_eq!(planned.len(), 6);
        let scenarios = planned.build(8, 1, 10);
        let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "extreme-concurrency",
                "memory-pressure",
                "sustained",
                "resource-exhaustion",
                "scale",
                "ramp"
            ]
        );
        assert_eq!(scenarios[0].phases[0].model.concurrency(), 500);
        assert_eq!(scenarios[0].parameters["tag.owner"], "search");
        // The built-in's criteria plus the file's own threshold.
        assert!(
            scenarios[0]
                .thresholds
                .iter()
                .any(|t| t.expression == "p99<300ms")
        );
        assert!(
            scenarios[0]
                .thresholds
                .iter()
                .any(|t| t.expression == "success_rate>=0.95")
        );
        assert_eq!(scenarios[4].phases.len(), 2);
        assert_eq!(scenarios[5].phases.len(), 3);
        assert_eq!(scenarios[5].thresholds.len(), 3);
    }

    #[test]
    fn a_templated_target_with_the_built_in_set_and_its_mistakes() {
        let file = "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = 8\n\n[[scenario]]\nname = \"scale\"\ningest = { points = 10 }\n";
        let planned = Planned::parse(file, Profile::Quick).expect("parse");
        let target = planned.target().expect("a target");
        assert_eq!(target.search.method, "vecrig.v1.VectorIndex/Search");
        assert_eq!(target.search.ids.as_deref(), Some("hits[].id"));
        assert!(target.write.is_some());
        let truth = planned.truth(1).expect("an ingest");
        assert_eq!((truth.len(), truth.batches()), (10, 1));
        let planned = planned
            .with_protos(&[PathBuf::from("a/b.proto")], &[])
            .expect("a target takes --proto");
        let protos = &planned.target().expect("a target").protos;
        assert!(protos[0].is_absolute() && protos[0].ends_with("a/b.proto"));
        let native =
            Planned::parse("[[scenario]]\nname = \"scale\"\n", Profile::Quick).expect("parse");
        let e = native
            .with_protos(&[PathBuf::from("b.proto")], &[])
            .expect_err("no target");
        assert!(e.to_string().contains("[target]"), "{e}");
        for (bad, mentions) in [
            (
                "[[scenario]]\nname = \"scale\"\ningest = { points = 10 }\n",
                "ingest needs a [target]",
            ),
            (
                "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = 8\n[[scenario]]\nname = \"scale\"\nworkload = \"text\"\n",
                "from its templates",
            ),
            (
                "[target]\nbuiltin = \"vecrig.v2\"\ndimensions = 8\n[[scenario]]\nname = \"scale\"\n",
                "vecrig.v2",
            ),
            (
                "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = 8\n[[scenario]]\nname = \"scale\"\ningest = { points = 1, batch = 0 }\n",
                "at least 1",
            ),
        ] {
            let e = Planned::parse(bad, Profile::Quick).expect_err(bad);
            assert!(e.to_string().contains(mentions), "{bad:?}: {e}");
        }
    }

    #[test]
    fn mistakes_are_named() {
        for (bad, mentions) in [
            ("[[scenario]]\nname = \"x\"\n", "needs stages"),
            (
                "[[scenario]]\nname = \"x\"\nstages = \"1s\"\n",
                "DURATION:TARGET",
            ),
            ("[[scenario]]\nname = \"scale\"\nusres = 3\n", "usres"),
            (
                "[[scenario]]\nname = \"x\"\nstages = \"1s:1\"\nmodel = \"half\"\n",
                "half",
            ),
            (
                "[[scenario]]\nname = \"sustained\"\nthresholds = [\"p99\"]\n",
                "p99",
            ),
            (
                "[[scenario]]\nname = \"sustained\"\nduration = \"soon\"\n",
                "duration",
            ),
            ("", "scenario"),
        ] {
            let e = Planned::parse(bad, Profile::Quick).expect_err(bad);
            assert!(e.to_string().contains(mentions), "{bad:?}: {e}");
        }
    }
}
