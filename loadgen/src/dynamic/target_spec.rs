//! The `[target]` table of a scenario file ([`TargetSpec`]): where the service's descriptors
//! come from, which method each kind of request calls and with what request template, the
//! vars those templates name; and the built-in set for vecrig's own API ([`VECRIG_V1`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value as Json;

use super::check::CheckSpec;
use super::describe::Source;
use super::error::DynamicError;
use super::truth::Metric;

/// The built-in template set for vecrig's own API: every request the loadgen sends to
/// `vecrig-server` is rendered from it (vector, text and exact searches; batches of points
/// with a payload, stamped and padded when the scenario asks). A scenario file names it with
/// `builtin = "vecrig.v1"` in `[target]`; what the table gives itself takes precedence.
pub const VECRIG_V1: &str = r#"
[search]
method = "vecrig.v1.VectorIndex/Search"
request = { vector = { values = "{{vector}}" }, k = "{{k}}" }
ids = "hits[].id"

[text_search]
method = "vecrig.v1.VectorIndex/Search"
request = { text = "{{text}}", k = "{{k}}" }

[exact_search]
method = "vecrig.v1.VectorIndex/Search"
request = { vector = { values = "{{vector}}" }, k = "{{k}}", exact = true }

[write]
method = "vecrig.v1.VectorIndex/Upsert"
request = { points = [{ id = "{{id}}", vector = { values = "{{vector}}" }, payload = { writer = "{{user}}", ack = "{{stamp}}", pad = "{{pad}}" } }] }
"#;

/// The `[target]` table of a scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// `.proto` files to read the descriptors from; none: the target's server reflection.
    #[serde(default)]
    pub protos: Vec<PathBuf>,
    /// Import paths for `protos`.
    #[serde(default)]
    pub proto_path: Vec<PathBuf>,
    /// Descriptor sets (`FileDescriptorSet`) to read the descriptors from: one path or several.
    pub protoset: Option<super::check::OneOrMany>,
    /// Width of the vectors `{{vector}}` generates.
    pub dimensions: usize,
    /// How the target ranks neighbours (for the loadgen's own exact answers).
    #[serde(default)]
    pub metric: Metric,
    /// Id of the first point ingest writes.
    #[serde(default)]
    pub first_id: u64,
    /// The search method.
    pub search: MethodSpec,
    /// Searches by text (the `spec`, `text` and `large-text` workloads), on the search's
    /// method; none: those workloads send vector searches instead.
    pub text_search: Option<MethodSpec>,
    /// Exact (brute-force) searches (the `exact` workload), on the search's method; none:
    /// that workload sends the usual searches.
    pub exact_search: Option<MethodSpec>,
    /// The write method (needed by ingest, and by the writes of `mixed`).
    pub write: Option<MethodSpec>,
    /// Where answers say whether they succeeded, for every call whose answer has those
    /// fields (a call's own `check` takes precedence).
    pub check: Option<CheckSpec>,
    /// Calls made once, in order, before the probes and the load (create a collection, an
    /// index, load it); a failure stops the run naming the call.
    #[serde(default)]
    pub setup: Vec<CallSpec>,
    /// Calls made once, in order, after the run.
    #[serde(default)]
    pub teardown: Vec<CallSpec>,
    /// The collection (or index, or table) the templates name as `{{collection}}`.
    pub collection: Option<String>,
    /// The index type the templates name as `{{index}}`.
    pub index: Option<String>,
    /// More values the templates name as `{{name}}` (see [`TargetSpec::vars`]).
    #[serde(default)]
    pub vars: BTreeMap<String, Json>,
    /// How the target spells each metric in `{{metric}}` (`l2 = "Euclid"`); default `L2`,
    /// `IP`, `COSINE`.
    #[serde(default)]
    pub metric_names: BTreeMap<String, String>,
}

/// One call of `setup` or `teardown`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// `package.Service/Method`.
    pub method: String,
    /// The request: a table, or a string of JSON.
    pub request: Json,
    /// Where its answer says whether it succeeded (default: `[target].check` where it fits).
    pub check: Option<CheckSpec>,
    /// Failures that are not failures here: a gRPC code's name (`ALREADY_EXISTS`) or text
    /// that the answer's reason or message contains (`already exist`).
    #[serde(default)]
    pub tolerate: Vec<String>,
}

/// One templated method.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MethodSpec {
    /// `package.Service/Method`.
    pub method: String,
    /// The request: a table, or a string of JSON.
    pub request: Json,
    /// Searches: where the neighbours' ids are in the answer (`result[].id`).
    pub ids: Option<String>,
    /// Where its answer says whether it succeeded (default: `[target].check` where it fits).
    pub check: Option<CheckSpec>,
}

impl TargetSpec {
    /// Where the descriptors come from; relative proto paths are taken from `base` (the
    /// scenario file's directory).
    pub fn source(&self, base: &std::path::Path) -> Source {
        let at = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                base.join(p)
            }
        };
        if let Some(sets) = &self.protoset {
            return Source::DescriptorSets(
                sets.paths().iter().map(|p| at(&PathBuf::from(p))).collect(),
            );
        }
        if self.protos.is_empty() {
            return Source::Reflection;
        }
        Source::Protos {
            files: self.protos.iter().map(at).collect(),
            includes: self.proto_path.iter().map(at).collect(),
        }
    }

    /// The services the methods belong to (what reflection is asked for).
    pub fn services(&self) -> Vec<&str> {
        let mut services: Vec<&str> = [Some(&self.search), self.write.as_ref()]
            .into_iter()
            .flatten()
            .map(|m| m.method.as_str())
            .chain(self.setup.iter().map(|c| c.method.as_str()))
            .chain(self.teardown.iter().map(|c| c.method.as_str()))
            .filter_map(|m| super::describe::split_method(m).ok().map(|(s, _)| s))
            .collect();
        services.sort_unstable();
        services.dedup();
        services
    }

    /// The values templates name as `{{name}}`, substituted before they are checked:
    /// `dimensions` (a number), `metric` as vector databases spell it (`L2`, `IP`, `COSINE`),
    /// every entry of `vars`, and `collection` and `index` where given (over `vars`).
    pub fn vars(&self) -> Result<BTreeMap<String, Json>, DynamicError> {
        let mut vars = BTreeMap::new();
        vars.insert("dimensions".to_string(), Json::from(self.dimensions));
        let (key, metric) = match self.metric {
            Metric::Cosine => ("cosine", "COSINE"),
            Metric::L2 => ("l2", "L2"),
            Metric::Ip => ("ip", "IP"),
        };
        let metric = self.metric_names.get(key).map_or(metric, String::as_str);
        vars.insert("metric".to_string(), Json::from(metric));
        for (name, value) in &self.vars {
            if GENERATOR_NAMES.contains(&name.as_str()) {
                return Err(DynamicError::Spec(format!(
                    "vars.{name}: {{{{{name}}}}} is a generator; choose another name"
                )));
            }
            vars.insert(name.clone(), value.clone());
        }
        // Named in [target] itself: over a built-in set's defaults in `vars`.
        for (name, value) in [("collection", &self.collection), ("index", &self.index)] {
            if let Some(value) = value {
                vars.insert(name.to_string(), Json::from(value.as_str()));
            }
        }
        Ok(vars)
    }
}

/// Names a var may not take: the template's generators.
const GENERATOR_NAMES: &[&str] = &[
    "vector",
    "vector_f16",
    "vector_bf16",
    "vectors",
    "text",
    "payload",
    "id",
    "ids",
    "batch_size",
    "user",
    "iteration",
    "k",
    "stamp",
    "pad",
    "uuid",
];

/// `json` with every `{{name}}` of `vars` replaced: a string that is exactly one becomes its
/// value (a number stays a number), a longer string gets its text. Other `{{...}}` are left
/// for the template (generators).
pub(super) fn substitute(json: &Json, vars: &BTreeMap<String, Json>) -> Json {
    match json {
        Json::String(text) if text.contains("{{") => {
            let trimmed = text.trim();
            if let Some(name) = trimmed
                .strip_prefix("{{")
                .and_then(|t| t.strip_suffix("}}"))
                .map(str::trim)
                && let Some(value) = vars.get(name)
            {
                return value.clone();
            }
            let mut out = text.clone();
            for (name, value) in vars {
                let shown = match value {
                    Json::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("{{{{{name}}}}}"), &shown);
            }
            Json::String(out)
        }
        Json::Array(items) => Json::Array(items.iter().map(|i| substitute(i, vars)).collect()),
        Json::Object(fields) => Json::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), substitute(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// A request given as a table or as a string of JSON, as JSON.
pub(super) fn request_json(method: &str, request: &Json) -> Result<Json, DynamicError> {
    match request {
        Json::String(text) => serde_json::from_str(text)
            .map_err(|e| DynamicError::Spec(format!("{method} request: not JSON: {e}"))),
        other => Ok(other.clone()),
    }
}
