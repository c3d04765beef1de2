//! The load report: what the loadgen prints and writes as JSON, and what tests assert on.
//!
//! The JSON schema is versioned by [`SCHEMA`]; a field is never renamed or removed within a
//! version. Times are seconds (`_s`), latencies milliseconds (`_ms`), memory bytes (`_bytes`).
//! gRPC codes are keyed by their canonical upper-case names (`OK`, `RESOURCE_EXHAUSTED`, ...).
//!
//! Additions within v1, each optional so that older readers and older reports still work:
//! - `phases[].recall` / `total.recall` ([`RecallFigures`]): answer quality of the phase's
//!   sampled searches against the target's exact answer (`--recall-sample`); absent when
//!   nothing was sampled.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies this report format and version.
pub const SCHEMA: &str = "vecrig.loadgen.report/v1";

/// A whole run: one or more scenarios against one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Always [`SCHEMA`].
    pub schema: String,
    /// Version of the loadgen that wrote it.
    pub loadgen_version: String,
    /// The target, as given.
    pub target: String,
    /// Seed of the request generators.
    pub seed: u64,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Wall-clock end, milliseconds since the Unix epoch.
    pub finished_unix_ms: u64,
    /// Whether the user stopped the run early (Ctrl-C).
    pub interrupted: bool,
    /// Why the run was cut short by `--abort-on-fail`: the threshold that failed, where and
    /// when. Absent when the run was not aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The loadgen process's own resource use.
    pub loadgen: ProcessFigures,
    /// Where a server the loadgen started for the run (`--spawn-server`) wrote its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_log: Option<String>,
    /// Each scenario, in the order run.
    pub scenarios: Vec<ScenarioReport>,
    /// Things the reader should know about the run as a whole.
    pub warnings: Vec<String>,
    /// Whether every threshold of every scenario passed.
    pub passed: bool,
}

/// CPU and memory of a process over the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessFigures {
    /// User + system CPU time spent.
    pub cpu_seconds: f64,
    /// CPU time per wall-clock second: 1.0 is one core kept busy.
    pub cpu_cores_used: f64,
    /// Resident memory at the end.
    pub rss_bytes: u64,
    /// Largest resident memory seen.
    pub max_rss_bytes: u64,
}

/// One scenario: its phases, their sum, the server's figures and the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioReport {
    /// The server's Prometheus samples at the end of the scenario (`--metrics-url`), by
    /// series; empty when not scraped.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_metrics: BTreeMap<String, f64>,
    /// The scenario's name (`extreme-concurrency`, ...).
    pub name: String,
    /// What it does, in a sentence.
    pub description: String,
    /// Its parameters, as given or defaulted.
    pub parameters: BTreeMap<String, String>,
    /// Wall-clock duration.
    pub duration_s: f64,
    /// Each phase in order (a scenario without phases has one).
    pub phases: Vec<PhaseReport>,
    /// All phases together.
    pub total: PhaseReport,
    /// Server-side figures over the whole scenario (from `Stats`).
    pub server: ServerFigures,
    /// Each threshold and whether it held.
    pub thresholds: Vec<ThresholdResult>,
    /// The loadgen's own CPU and memory during this scenario.
    pub loadgen: ProcessFigures,
    /// Things the reader should know (e.g. the loadgen itself saturated).
    pub warnings: Vec<String>,
    /// Whether every threshold held.
    pub passed: bool,
    /// Second by second: throughput, outcomes and latency, for charts.
    #[serde(default)]
    pub timeline: Vec<TimePoint>,
    /// Tenth of a second by tenth of a second, for a scenario shorter than 10 s (empty
    /// otherwise): a sub-second scenario is one point in `timeline`, which charts as nothing.
    /// Counts are per tenth; each point's `t_s` is the start of its tenth.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fine_timeline: Vec<TimePoint>,
    /// The server's `Stats` samples, about once a second, for charts.
    #[serde(default)]
    pub server_timeline: Vec<ServerPoint>,
    /// The verdict of a fault run (`vecrig-loadgen fault`); absent for other scenarios.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultVerdict>,
}

/// One second of a scenario, by the time answers arrived.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TimePoint {
    /// Start of the second, from the scenario's start.
    pub t_s: f64,
    /// Requests answered in this second.
    pub requests: u64,
    /// Of which succeeded.
    pub successes: u64,
    /// Non-OK answers by gRPC code.
    pub errors: BTreeMap<String, u64>,
    /// Median latency of this second's requests (from intended send time).
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// One `Stats` sample of the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerPoint {
    /// When, from the scenario's start.
    pub t_s: f64,
    /// Requests being served.
    pub in_flight: u64,
    /// Requests waiting for admission.
    pub queued: u64,
    /// Requests shed since the server started.
    pub shed_total: u64,
    /// Resident memory.
    pub rss_bytes: u64,
    /// The server's uptime: a value below the previous sample's means it restarted.
    #[serde(default)]
    pub uptime_ms: u64,
}

/// One phase of load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    /// The phase's name.
    pub name: String,
    /// Concurrent users or workers in this phase.
    pub concurrency: u64,
    /// Wall-clock duration.
    pub duration_s: f64,
    /// Requests completed (by final outcome, after retries).
    pub requests: u64,
    /// Requests whose final outcome was OK.
    pub successes: u64,
    /// Successful requests per second.
    pub qps: f64,
    /// Final outcomes by gRPC code.
    pub codes: BTreeMap<String, u64>,
    /// Outcomes of each request's first attempt, by gRPC code.
    pub first_try_codes: BTreeMap<String, u64>,
    /// Attempts sent, retries included.
    pub attempts: u64,
    /// Retries sent.
    pub retries: u64,
    /// Retries wanted but refused by the retry budget.
    pub retries_denied: u64,
    /// Open-model arrivals not sent because `max_in_flight` requests were outstanding.
    #[serde(default)]
    pub dropped: u64,
    /// Latency of every request (all outcomes), from its intended send time to its final answer.
    pub latency: LatencySummary,
    /// Latency of successful requests only.
    pub success_latency: LatencySummary,
    /// Time from the actual send of the final attempt to its answer.
    pub service_time: LatencySummary,
    /// Latency of requests finally refused with RESOURCE_EXHAUSTED: how fast shedding is.
    pub shed_latency: LatencySummary,
    /// Latency by final gRPC code.
    #[serde(default)]
    pub latency_by_code: BTreeMap<String, LatencySummary>,
    /// Server-side figures over this phase.
    pub server: ServerFigures,
    /// The latency histograms themselves, so reports can be merged losslessly and read by
    /// other HdrHistogram tools.
    #[serde(default)]
    pub histograms: Histograms,
    /// Recall@k of the phase's sampled searches; absent when none were sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recall: Option<RecallFigures>,
    /// What the server's own counters (`--metrics-url`: Prometheus series named `*_total`,
    /// `*_count` or `*_sum`) counted during the phase, by series: requests by code, shed by
    /// reason, CPU seconds by part. Absent without a metrics URL.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub server_counts: BTreeMap<String, f64>,
    /// What failed requests came with: the texts of their final answers (a `grpc-message`,
    /// what the client saw of a broken connection, an answer check's reason), each after its
    /// outcome's name (`INTERNAL: ...`, `ANSWER_ERROR: status.code=100: ...`); at most ten
    /// texts, with how many gave each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub failures: BTreeMap<String, u64>,
    /// An ingest phase: the points the target acknowledged writing (answers that passed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<u64>,
}

/// Recall@k of sampled searches: how many of the exact answer's neighbours each sampled
/// answer held. Kept as counts, so shards and phases merge losslessly by adding them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RecallFigures {
    /// Sampled searches checked against the exact answer.
    pub queries: u64,
    /// The exact answers' neighbours found in the sampled answers, over all queries.
    pub hits: u64,
    /// The exact answers' neighbours, over all queries.
    pub expected: u64,
    /// Queries by their recall in whole percent, rounded down: `by_percent[p]` queries had
    /// recall in `[p/100, (p+1)/100)`, `by_percent[100]` full recall. 101 entries.
    pub by_percent: Vec<u64>,
    /// Sampled searches left out: sent while the loadgen's own writes were in flight or
    /// followed by more of them in the phase (the exact answer, asked after the phase,
    /// would hold points the search could not have seen), or whose exact answer failed.
    #[serde(default)]
    pub skipped: u64,
}

impl RecallFigures {
    /// Adds one query that found `hits` of the exact answer's `expected` neighbours (a query
    /// whose exact answer is empty counts as full recall: there was nothing to miss).
    pub fn add(&mut self, hits: u64, expected: u64) {
        let hits = hits.min(expected);
        self.queries += 1;
        self.hits += hits;
        self.expected += expected;
        let percent = (hits * 100)
            .checked_div(expected)
            .map_or(100, |p| p as usize);
        if self.by_percent.len() < 101 {
            self.by_percent.resize(101, 0);
        }
        self.by_percent[percent] += 1;
    }

    /// Adds another phase's or shard's figures.
    pub fn merge(&mut self, other: &RecallFigures) {
        self.queries += other.queries;
        self.hits += other.hits;
        self.expected += other.expected;
        self.skipped += other.skipped;
        if self.by_percent.len() < other.by_percent.len() {
            self.by_percent.resize(other.by_percent.len(), 0);
        }
        for (mine, theirs) in self.by_percent.iter_mut().zip(&other.by_percent) {
            *mine += theirs;
        }
    }

    /// Recall@k over every sampled query: neighbours found over neighbours expected (1.0
    /// when nothing was expected).
    pub fn mean(&self) -> f64 {
        if self.expected == 0 {
            1.0
        } else {
            self.hits as f64 / self.expected as f64
        }
    }

    /// Mean recall of the worst 5% of sampled queries (at least one), to the percent: what
    /// the unluckiest users got.
    pub fn worst_5_percent(&self) -> f64 {
        let wanted = self.queries.div_ceil(20).max(1);
        let (mut taken, mut sum) = (0u64, 0.0);
        for (percent, &count) in self.by_percent.iter().enumerate() {
            let take = count.min(wanted - taken);
            sum += take as f64 * percent as f64 / 100.0;
            taken += take;
            if taken == wanted {
                break;
            }
        }
        if taken == 0 { 1.0 } else { sum / taken as f64 }
    }
}

/// HdrHistograms in their standard compressed form (V2 deflate, base64, as in HdrHistogram
/// interval logs), values in microseconds, 3 significant digits. Empty when not recorded.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histograms {
    /// See [`PhaseReport::latency`].
    pub latency: String,
    /// See [`PhaseReport::success_latency`].
    pub success_latency: String,
    /// See [`PhaseReport::service_time`].
    pub service_time: String,
    /// See [`PhaseReport::shed_latency`].
    pub shed_latency: String,
    /// See [`PhaseReport::latency_by_code`].
    #[serde(default)]
    pub by_code: BTreeMap<String, String>,
    /// The phase's latencies again, cut by when the answers arrived into consecutive slices
    /// of equal width (a tenth of a second, doubled as often as needed to keep at most 64),
    /// 2 significant digits: how the latencies moved within the phase, which is what a
    /// comparison needs to tell a run's hiccup from a change. Empty in older reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slices: Vec<String>,
}

impl PhaseReport {
    /// Final outcomes with this code.
    pub fn code(&self, name: &str) -> u64 {
        self.codes.get(name).copied().unwrap_or(0)
    }

    /// Fraction of requests that succeeded (1.0 when there were none).
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            self.successes as f64 / self.requests as f64
        }
    }

    /// Fraction of requests that failed.
    pub fn error_rate(&self) -> f64 {
        1.0 - self.success_rate()
    }

    /// Fraction of requests finally refused with RESOURCE_EXHAUSTED.
    pub fn shed_rate(&self) -> f64 {
        ratio(self.code("RESOURCE_EXHAUSTED"), self.requests)
    }

    /// Fraction of requests that got any answer from the server before their deadline
    /// (everything but DEADLINE_EXCEEDED and CANCELLED).
    pub fn completion_rate(&self) -> f64 {
        let unanswered = self.code("DEADLINE_EXCEEDED") + self.code("CANCELLED");
        1.0 - ratio(unanswered, self.requests)
    }

    /// Fraction of first attempts that succeeded.
    pub fn first_try_success_rate(&self) -> f64 {
        let first: u64 = self.first_try_codes.values().sum();
        if first == 0 {
            1.0
        } else {
            ratio(self.first_try_codes.get("OK").copied().unwrap_or(0), first)
        }
    }

    /// Requests that failed in ways graceful degradation never allows (INTERNAL, UNKNOWN,
    /// DATA_LOSS).
    pub fn server_faults(&self) -> u64 {
        self.code("INTERNAL") + self.code("UNKNOWN") + self.code("DATA_LOSS")
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Latency percentiles, in milliseconds, from an HdrHistogram.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Smallest.
    pub min_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// What the server said about itself (`Stats`) while the load ran.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerFigures {
    /// Stats samples taken.
    pub samples: u64,
    /// Requests the server shed during the period (difference of `shed_total`).
    pub shed: u64,
    /// Largest `queued` seen: in the samples, and in the server's high-water marks
    /// between them (`peak_queued`, servers that keep it), so a burst shorter than the
    /// sampling interval still shows.
    pub max_queued: u64,
    /// Largest `in_flight` seen, the same way (`peak_in_flight`).
    pub max_in_flight: u64,
    /// Resident memory at the first sample.
    pub rss_start_bytes: u64,
    /// Largest resident memory seen.
    pub rss_max_bytes: u64,
    /// Resident memory at the last sample.
    pub rss_end_bytes: u64,
    /// Points in the index at the first sample.
    pub points_start: u64,
    /// Points in the index at the last sample.
    pub points_end: u64,
    /// The narrowest share of their `ef` that searches ran with in the samples, when the
    /// server browned out (`vecrig-server --brownout`); absent when it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_search_breadth: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_merges_by_adding_counts_and_finds_the_worst_queries() {
        let mut a = RecallFigures::default();
        for hits in [10, 10, 9, 10] {
            a.add(hits, 10);
        }
        let mut b = RecallFigures::default();
        for hits in [2, 10, 10, 10] {
            b.add(hits, 10);
        }
        let mut whole = RecallFigures::default();
        for hits in [10, 10, 9, 10, 2, 10, 10, 10] {
            whole.add(hits, 10);
        }
        let mut merged = a.clone();
        merged.merge(&b);
        assert_eq!(merged, whole);
        assert_eq!((merged.hits, merged.expected, merged.queries), (71, 80, 8));
        assert!((merged.mean() - 71.0 / 80.0).abs() < 1e-12);
        // 8 queries: the worst 5% is the single worst one.
        assert!((merged.worst_5_percent() - 0.2).abs() < 1e-12);
        assert_eq!(RecallFigures::default().mean(), 1.0);
        // More hits than expected (duplicates in an answer) never count above 1.
        let mut over = RecallFigures::default();
        over.add(12, 10);
        assert_eq!(over.mean(), 1.0);
    }
}

impl ServerFigures {
    /// Growth of resident memory from the first sample to the largest.
    pub fn rss_growth_bytes(&self) -> u64 {
        self.rss_max_bytes.saturating_sub(self.rss_start_bytes)
    }
}

/// One threshold's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdResult {
    /// Where it applied: `total`, or a phase's name.
    pub scope: String,
    /// The expression, as written.
    pub expression: String,
    /// The value observed.
    pub observed: f64,
    /// Whether it held.
    pub passed: bool,
}

/// The outcome of an answer that was gRPC OK but whose own status (the target's answer
/// check) said it failed: counted beside the gRPC codes, never as OK.
pub const ANSWER_ERROR: &str = "ANSWER_ERROR";

/// The canonical upper-case name of a gRPC code, as used for keys in reports.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The fault a run expects to be injected while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// The server is killed (SIGKILL) and started again: an outage with UNAVAILABLE, a
    /// restart, recovery, no acknowledged write lost.
    Restart,
    /// The network between loadgen and server is cut and restored: an outage, no restart,
    /// recovery, no acknowledged write lost.
    Partition,
    /// The server is pushed against its memory limit by the run's own writes: it refuses
    /// (RESOURCE_EXHAUSTED) instead of being killed: no restart, no outage, no write lost.
    Memory,
    /// No fault: a control run. No outage, no restart, no write lost.
    None,
}

impl FaultKind {
    /// Its name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Restart => "restart",
            FaultKind::Partition => "partition",
            FaultKind::Memory => "memory",
            FaultKind::None => "none",
        }
    }
}

impl std::str::FromStr for FaultKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "restart" => FaultKind::Restart,
            "partition" => FaultKind::Partition,
            "memory" => FaultKind::Memory,
            "none" => FaultKind::None,
            other => {
                return Err(format!(
                    "unknown fault {other:?}: expected restart, partition, memory or none"
                ));
            }
        })
    }
}

/// What a fault run expects, besides its kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Expectations {
    /// The successes per second the load asks for (its paced rate).
    pub target_qps: f64,
    /// Recovered means successes per second back to this fraction of the baseline.
    pub recovered_fraction: f64,
    /// Recovery must come within this many seconds after the outage's last second.
    pub recover_within_s: f64,
    /// The outage may last at most this long.
    pub max_outage_s: f64,
}

/// The acknowledged writes, read back after the load.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AckCheck {
    /// Points whose upsert was answered OK.
    pub acked: u64,
    /// Of which were read back as written.
    pub verified: u64,
    /// Of which were missing (NOT_FOUND) or held other data than written: lost.
    pub lost: u64,
    /// Of which could not be read back (the server kept failing the Get).
    pub unverified: u64,
    /// Some of the lost ids, for a look at the server.
    pub lost_ids: Vec<u64>,
}

impl AckCheck {
    /// Adds another shard's check.
    pub fn add(&mut self, other: &AckCheck) {
        self.acked += other.acked;
        self.verified += other.verified;
        self.lost += other.lost;
        self.unverified += other.unverified;
        self.lost_ids.extend(
            other
                .lost_ids
                .iter()
                .take(MAX_LOST_IDS.saturating_sub(self.lost_ids.len())),
        );
    }
}

/// Lost ids listed in a report at most.
pub const MAX_LOST_IDS: usize = 20;

/// A fault run's verdict, in the scenario's report (`fault`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultVerdict {
    /// The fault expected.
    pub kind: FaultKind,
    /// What was expected besides.
    pub expectations: Expectations,
    /// Median successes per second before the outage (the target when too few seconds).
    pub baseline_qps: f64,
    /// Start of the first second with outage errors, from the scenario's start.
    pub outage_start_s: Option<f64>,
    /// End of the last second with outage errors.
    pub outage_end_s: Option<f64>,
    /// From the first to the end of the last second with outage errors (0: none).
    pub outage_s: f64,
    /// Outage errors by gRPC code, over the whole run.
    pub outage_errors: BTreeMap<String, u64>,
    /// Seconds from the outage's end until successes per second were back to
    /// `recovered_fraction` of the baseline; absent when they never were (or no outage).
    pub recovery_s: Option<f64>,
    /// Requests finally refused with RESOURCE_EXHAUSTED (shed, or refused for memory).
    pub refused: u64,
    /// Whole seconds of the run in which no request succeeded.
    pub seconds_without_success: u64,
    /// Longest time between two `Stats` samples (taken about every second, each given 2 s):
    /// how long the server was not answering at all.
    #[serde(default)]
    pub max_stats_gap_s: f64,
    /// Server restarts seen in its `Stats` (uptime going back).
    pub server_restarts: u64,
    /// The acknowledged writes, read back.
    pub acks: AckCheck,
}
