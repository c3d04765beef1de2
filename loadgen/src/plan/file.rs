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
//! workload = "vector"              # spec, text, vector, fixed, exact or mixed
//! thresholds = ["p99<50ms", "dropped==0"]
//! ```
//!
//! A `[target]` table makes the target any gRPC vector service (see [`crate::dynamic`]): its
//! methods, request templates and where the ids are in its answers. Every scenario then
//! sends its own workload rendered from those templates (`text_search` and `exact_search`
//! are optional: without them, vector searches take their place), and a scenario may start
//! with an `ingest` phase that writes the seeded data set through the write template, so the
//! loadgen computes recall itself:
//!
//! ```toml
//! [target]
//! dimensions = 16
//! metric = "l2"                     # how the target ranks: cosine (default), l2 or ip
//! # protos = ["store.proto"]        # else: the target's server reflection
//! search = { method = "store.Store/Nearest", ids = "matches[].key", request = '''
//!   {"embedding": "{{vector}}", "limit": "{{k}}"} ''' }
//! # text_search = { method = "store.Store/Nearest", request = '{"text": "{{text}}", "limit": "{{k}}"}' }
//! write = { method = "store.Store/Put", request = '''
//!   {"items": [{"key": "{{id}}", "embedding": "{{vector}}"}]} ''' }
//!
//! [[scenario]]
//! name = "sustained"
//! ingest = { points = 5000, batch = 100, writers = 4 }
//! thresholds = ["recall>=0.95"]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use vecrig::validation::threshold::Threshold;

use crate::dynamic::{TargetSpec, Templates, Truth};
use crate::plan::dataset::Spec as DatasetSpec;
pub use crate::plan::entry::{Entry, IngestSpec};
use crate::plan::scenario::Writes;
use crate::plan::scenario::{Model, Phase, Scenario};
use crate::plan::spec::ScenarioSpec;
use crate::plan::suite::{Common, Profile};
use crate::plan::workload::{Workload, WorkloadKind};

/// A scenario file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// The scenarios, run in order.
    #[serde(rename = "scenario")]
    pub scenarios: Vec<Entry>,
    /// A templated target: any gRPC vector service.
    pub target: Option<TargetSpec>,
    /// A dataset file: the points an ingest writes, the queries searches send, and the truth.
    pub dataset: Option<DatasetSpec>,
}

/// A file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("scenario file: {0}")]
pub struct FileError(String);

/// `[target] builtin = "NAME"`: a built-in template set ([`crate::dynamic::builtin`]) fills in
/// what the table does not give itself, key by key (and `vars` entry by entry).
fn with_builtin_templates(table: &mut toml::Table) -> Result<(), FileError> {
    let Some(toml::Value::Table(target)) = table.get_mut("target") else {
        return Ok(());
    };
    let Some(builtin) = target.remove("builtin") else {
        return Ok(());
    };
    let Some(text) = builtin.as_str().and_then(crate::dynamic::builtin::named) else {
        return Err(FileError(format!(
            "[target] builtin = {builtin}: the built-in template sets are {}",
            crate::dynamic::builtin::NAMES
        )));
    };
    let set: toml::Table = toml::from_str(text)
        .map_err(|e| FileError(format!("the built-in template set {builtin}: {e}")))?;
    for (key, value) in set {
        match (target.get_mut(&key), value) {
            (Some(toml::Value::Table(own)), toml::Value::Table(defaults)) if key == "vars" => {
                for (name, value) in defaults {
                    own.entry(name).or_insert(value);
                }
            }
            (Some(_), _) => {}
            (None, value) => {
                target.insert(key, value);
            }
        }
    }
    Ok(())
}

/// Why the workload named `workload` cannot run against `target`, if it cannot: it asks for a
/// request the target's templates lack (the scenarios' own workloads fall back to vector
/// searches; one the file names is taken at its word), or it writes points that the ground
/// truth of an ingest would not hold.
fn missing_method(workload: &str, target: &TargetSpec, ingest: bool) -> Option<String> {
    let (needs, has) = match workload {
        "text" | "spec" => ("text_search", target.text_search.is_some()),
        "exact" => ("exact_search", target.exact_search.is_some()),
        "mixed" if ingest => {
            return Some(
                "workload mixed writes points the ingest's ground truth does not hold: recall would be wrong"
                    .into(),
            );
        }
        "mixed" => ("write", target.write.is_some()),
        _ => return None,
    };
    (!has).then(|| format!("workload {workload} needs [target].{needs}"))
}

/// A parsed file, ready to build: checks everything (names, durations, stages, thresholds,
/// workloads) before any load is sent.
#[derive(Debug)]
pub struct Planned {
    entries: Vec<(Entry, ScenarioSpec, Option<WorkloadKind>, Vec<Threshold>)>,
    target: Option<TargetSpec>,
    dataset: Option<DatasetSpec>,
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
            if let (Some(target), Some(workload)) = (&file.target, entry.workload.as_deref())
                && let Some(e) = missing_method(workload, target, ingests > 0)
            {
                return Err(ctx(&e));
            }
            match (&file.target, &entry.ingest) {
                (None, Some(_)) => return Err(ctx("ingest needs a [target] with a write method")),
                (Some(t), Some(_)) if t.write.is_none() => {
                    return Err(ctx("ingest needs [target].write"));
                }
                (_, Some(i))
                    if (i.points == 0 && file.dataset.is_none())
                        || i.batch == 0
                        || i.writers == 0 =>
                {
                    return Err(ctx("ingest: points, batch and writers must be at least 1"));
                }
                _ => {}
            }
        }
        for entry in file.scenarios {
            let spec = entry.spec(profile).map_err(FileError)?;
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
            dataset: file.dataset,
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
    /// file's own (`protos` or `protoset`) or reflection. Nothing to do when none are given.
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
            // The files on the command line stand in for the file's descriptor set too.
            target.protoset = None;
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

    /// The file's `[dataset]`, its paths relative to the file's directory.
    pub fn dataset(&self) -> Option<DatasetSpec> {
        self.dataset.clone().map(|d| d.relative_to(&self.base))
    }

    /// The ground truth of a run on `dataset`: its points (as many as the ingest phase asks,
    /// all of them for `points = 0`) when a scenario ingests, else only its neighbours.
    pub fn truth_of(
        &self,
        dataset: &vecrig::dataset::Dataset,
    ) -> Result<Option<Arc<Truth>>, vecrig::dataset::Error> {
        let Some(target) = self.target.as_ref() else {
            return Ok(Truth::answers_of(dataset, 0).map(Arc::new));
        };
        let Some(ingest) = self.entries.iter().find_map(|(e, ..)| e.ingest) else {
            return Ok(Truth::answers_of(dataset, target.first_id).map(Arc::new));
        };
        let limit = (ingest.points > 0).then_some(ingest.points);
        Truth::from_dataset(dataset, limit, ingest.batch, target.first_id, target.metric)
            .map(|t| Some(Arc::new(t)))
    }

    /// The templated target's dimensions and metric, if the file has a `[target]`.
    pub fn target_shape(&self) -> Option<(usize, crate::dynamic::Metric)> {
        self.target.as_ref().map(|t| (t.dimensions, t.metric))
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
        let mut scenarios = self.build_with(dimensions, seed, k, Some(templates));
        for ((entry, ..), scenario) in self.entries.iter().zip(&mut scenarios) {
            let (Some(ingest), Some(truth)) = (entry.ingest, truth) else {
                continue;
            };
            let kind = WorkloadKind::Ingest {
                truth: Arc::clone(truth),
                writers: ingest.writers,
            };
            let writes = Writes(Workload::on(
                kind,
                dimensions,
                seed,
                k,
                Arc::clone(templates),
            ));
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
                format!("{} points in batches of {}", truth.len(), ingest.batch),
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
        templates: Option<&Arc<Templates>>,
    ) -> Vec<Scenario> {
        self.entries
            .iter()
            .map(|(entry, spec, workload, thresholds)| {
                let common = Common {
                    dimensions,
                    seed,
                    k,
                    workload: workload.clone(),
                    templates: templates.cloned(),
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
        let file = "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = 8\nprotoset = \"v1.protoset\"\n\n[[scenario]]\nname = \"scale\"\ningest = { points = 10 }\n";
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
        assert!(
            planned.target().expect("a target").protoset.is_none(),
            "--proto stands in for the file's protoset"
        );
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
                "[target]\ndimensions = 8\nsearch = { method = \"vecrig.v1.VectorIndex/Search\", request = { k = 1 }, ids = \"hits[].id\" }\n[[scenario]]\nname = \"scale\"\nworkload = \"text\"\n",
                "workload text needs [target].text_search",
            ),
            (
                "[target]\nbuiltin = \"vecrig.v1\"\ndimensions = 8\n[[scenario]]\nname = \"scale\"\nworkload = \"mixed\"\ningest = { points = 4 }\n",
                "ground truth",
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
