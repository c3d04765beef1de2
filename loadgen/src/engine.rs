//! The engine: schedules a scenario's requests, sends them with deadlines and retries, and
//! records every outcome. A scenario says *what* load; this module says *how* it is sent.
//!
//! Load models, in k6's vocabulary:
//! - **closed** (fixed or ramping users): each user sends its next request when the previous
//!   one answered (plus an optional think time). Throughput is whatever the server allows.
//! - **paced**: `workers` tasks sending at a fixed total rate on a fixed schedule (wrk2's model).
//! - **open** (fixed or ramping arrival rate): requests are sent on schedule whether or not
//!   earlier ones have answered, up to `max_in_flight` at once; a request that cannot be sent on
//!   time because that many are outstanding is counted as *dropped*, never silently skipped.
//!
//! In the paced and open models a request's latency runs from its *intended* send time, so a
//! server stall shows in full in the percentiles instead of being hidden by senders waiting
//! (coordinated omission). The service time from the actual send is recorded beside it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::Code;
use tonic::transport::Channel;
use vecrig::client::{Metadata, Pool, request_with};
use vecrig::proto::vector_index_client::VectorIndexClient;
use vecrig::validation::criteria;
use vecrig::validation::report::{PhaseReport, ScenarioReport, ServerPoint, ThresholdResult};
use vecrig::validation::threshold::{self, Scope, Threshold};

use crate::monitor::Monitor;
use crate::progress::Progress;
use crate::retry::{Pushback, RetryBudget, RetryPolicy};
use crate::stats::{Outcome, Outcomes, Recorder, Timeline};
use crate::workload::{Op, Workload};

/// How one phase's load is generated.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// Users that each wait for their answer before sending again.
    Closed {
        /// Concurrent users.
        users: u64,
        /// Requests per user; `None`: until `duration` ends.
        iterations: Option<u64>,
        /// How long the phase lasts; `None`: until every user finished its iterations.
        duration: Option<Duration>,
        /// Pause after each answer.
        think: Duration,
        /// Start users in groups: after every `.0` users, pause `.1`.
        stagger: Option<(u64, Duration)>,
    },
    /// Users ramped linearly from `from` to `to` over `duration` (a stage of ramping users).
    Ramping {
        /// Users at the start.
        from: u64,
        /// Users at the end.
        to: u64,
        /// How long the stage lasts.
        duration: Duration,
        /// Pause after each answer.
        think: Duration,
    },
    /// Arrivals at a rate ramped linearly from `from` to `to` requests per second over
    /// `duration`, whatever the answers, with at most `max_in_flight` outstanding.
    Open {
        /// Rate at the start, requests per second.
        from: f64,
        /// Rate at the end.
        to: f64,
        /// How long the stage lasts.
        duration: Duration,
        /// Outstanding requests allowed; arrivals beyond are dropped (and counted).
        max_in_flight: u64,
    },
    /// Workers sending on a fixed schedule at `rate` requests per second in total.
    Paced {
        /// Concurrent workers (each sends `rate / workers` per second).
        workers: u64,
        /// Total requests per second.
        rate: f64,
        /// How long the phase lasts.
        duration: Duration,
    },
}

impl Model {
    /// Users or workers.
    pub fn concurrency(&self) -> u64 {
        match self {
            Model::Closed { users, .. } => *users,
            Model::Ramping { from, to, .. } => (*from).max(*to),
            Model::Open { max_in_flight, .. } => *max_in_flight,
            Model::Paced { workers, .. } => *workers,
        }
    }
}

/// One stage of a ramp: reach `target` (users or requests per second) over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    /// How long the stage lasts.
    pub duration: Duration,
    /// Users or rate at its end.
    pub target: f64,
}

/// Parses k6-style stages: `30s:100,1m:1000,30s:0`.
pub fn parse_stages(text: &str) -> Result<Vec<Stage>, String> {
    text.split(',')
        .map(|stage| {
            let (duration, target) = stage
                .split_once(':')
                .ok_or_else(|| format!("{stage:?}: expected DURATION:TARGET"))?;
            let duration = humantime::parse_duration(duration.trim())
                .map_err(|e| format!("{stage:?}: duration: {e}"))?;
            let target: f64 = target
                .trim()
                .parse()
                .map_err(|e| format!("{stage:?}: target: {e}"))?;
            if !(target.is_finite() && target >= 0.0) {
                return Err(format!("{stage:?}: target must be a number >= 0"));
            }
            Ok(Stage { duration, target })
        })
        .collect()
}

/// Value at `elapsed` of a linear ramp from `from` to `to` over `duration`.
fn ramp(from: f64, to: f64, duration: Duration, elapsed: Duration) -> f64 {
    if duration.is_zero() {
        return to;
    }
    let t = (elapsed.as_secs_f64() / duration.as_secs_f64()).clamp(0.0, 1.0);
    from + (to - from) * t
}

/// One phase of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// Its name in the report.
    pub name: String,
    /// Its load.
    pub model: Model,
}

/// A scenario: phases of load, what each request is, and how the result is judged.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name (`extreme-concurrency`, ...).
    pub name: String,
    /// One sentence on what it does.
    pub description: String,
    /// Its parameters, for the report.
    pub parameters: BTreeMap<String, String>,
    /// Its phases, run in order.
    pub phases: Vec<Phase>,
    /// What each request is.
    pub workload: Arc<Workload>,
    /// Pass/fail thresholds.
    pub thresholds: Vec<Threshold>,
    /// Print a progress line with recent QPS and error rate this often.
    pub monitor_every: Option<Duration>,
    /// Also judge whether the last phase recovered to the first phase's latency.
    pub check_recovery: bool,
    /// Per-request deadline for this scenario, instead of the run's.
    pub timeout: Option<Duration>,
}

/// This shard's part of `total` when it is split `count` ways (the first ones get the remainder).
pub fn share(total: u64, index: u64, count: u64) -> u64 {
    total / count + u64::from(index < total % count)
}

impl Scenario {
    /// Keeps shard `index`'s part of the load when `count` loadgens share it: users, workers
    /// and in-flight bounds are split, rates divided, and requests made distinct per shard.
    pub fn shard(&mut self, index: u64, count: u64) {
        let count = count.max(1);
        let part = |n: u64| share(n, index, count);
        let rate = |r: f64| r / count as f64;
        for phase in &mut self.phases {
            phase.model = match phase.model.clone() {
                Model::Closed {
                    users,
                    iterations,
                    duration,
                    think,
                    stagger,
                } => Model::Closed {
                    users: part(users),
                    iterations,
                    duration,
                    think,
                    stagger,
                },
                Model::Ramping {
                    from,
                    to,
                    duration,
                    think,
                } => Model::Ramping {
                    from: part(from),
                    to: part(to),
                    duration,
                    think,
                },
                Model::Paced {
                    workers,
                    rate: r,
                    duration,
                } => Model::Paced {
                    workers: part(workers).max(1),
                    rate: rate(r),
                    duration,
                },
                Model::Open {
                    from,
                    to,
                    duration,
                    max_in_flight,
                } => Model::Open {
                    from: rate(from),
                    to: rate(to),
                    duration,
                    max_in_flight: part(max_in_flight).max(1),
                },
            };
        }
        self.workload = self.workload.offset_users(index * 1_000_000);
        self.parameters
            .insert("shard".into(), format!("{index}/{count}"));
    }
}

/// Tells every task to stop sending new requests (Ctrl-C, or a failed threshold with abort).
#[derive(Debug, Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
    /// Why the run was aborted, when a failed threshold (not the user) stopped it.
    aborted: Arc<std::sync::Mutex<Option<String>>>,
}

impl Default for Stop {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
            aborted: Arc::default(),
        }
    }
}

impl Stop {
    /// Stops the run.
    pub fn stop(&self) {
        self.tx.send_replace(true);
    }

    /// Stops the run because a threshold failed; the first reason given is kept.
    pub fn abort(&self, reason: String) {
        if let Ok(mut aborted) = self.aborted.lock() {
            aborted.get_or_insert(reason);
        }
        self.stop();
    }

    /// Why the run was aborted, if a failed threshold stopped it.
    pub fn abort_reason(&self) -> Option<String> {
        self.aborted.lock().ok().and_then(|a| a.clone())
    }

    /// Whether the run was stopped.
    pub fn is_stopped(&self) -> bool {
        *self.tx.borrow()
    }

    /// Resolves once the run is stopped.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Everything the request tasks share.
#[derive(Debug, Clone)]
pub struct Context {
    /// Connections to the target.
    pub pool: Pool,
    /// Per-request deadline (sent as `grpc-timeout`, and enforced here too).
    pub timeout: Duration,
    /// Metadata added to every request (e.g. `authorization`).
    pub headers: Metadata,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// Shared retry budget.
    pub budget: Arc<RetryBudget>,
    /// Stop signal.
    pub stop: Stop,
    /// Live progress.
    pub progress: Progress,
    /// Abort the whole run as soon as a threshold fails (k6's `abortOnFail`); upper bounds
    /// are checked every second once this grace has passed in a phase (k6's
    /// `delayAbortEval`), every threshold at the end of the phase it applies to.
    pub abort_on_fail: Option<Duration>,
    /// The server's Prometheus endpoint, scraped at the end of each scenario.
    pub metrics_url: Option<Arc<str>>,
}

impl Context {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        request_with(message, self.timeout, &self.headers)
    }

    /// Sends one attempt and returns its code. A deadline passing here counts as
    /// DEADLINE_EXCEEDED even when the server never answers (e.g. it is frozen).
    async fn send(&self, op: &Op) -> (Code, Pushback) {
        let mut client = self.pool.client();
        let call = async {
            match op {
                Op::Search(r) => client.search(self.request(r.clone())).await.map(drop),
                Op::Upsert(r) | Op::Durable(r, _) => {
                    client.upsert(self.request(r.clone())).await.map(drop)
                }
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => (Code::Ok, Pushback::None),
            Ok(Err(status)) => (status.code(), Pushback::of(&status)),
            Err(_) => (Code::DeadlineExceeded, Pushback::None),
        }
    }

    /// Sends `op` (retrying as the policy and budget allow) and records its outcome, with
    /// latency measured from `intended`.
    pub async fn execute(&self, op: Op, intended: Instant, recorder: &Recorder) {
        self.budget.deposit();
        let mut attempts = 0u32;
        let mut retries_denied = 0u32;
        let mut first = None;
        loop {
            attempts += 1;
            let sent = Instant::now();
            let (code, pushback) = self.send(&op).await;
            let answered = Instant::now();
            let first_code = *first.get_or_insert(code);
            let wait = pushback.wait(self.retry.backoff(attempts, &mut rand::rng()));
            if let Some(wait) = wait
                && RetryPolicy::retryable(code)
                && attempts < self.retry.max_attempts
                && !self.stop.is_stopped()
            {
                if self.budget.try_withdraw() {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                retries_denied += 1;
            }
            let outcome = Outcome {
                first: first_code,
                last: code,
                attempts,
                retries_denied,
                latency: answered.saturating_duration_since(intended),
                service_time: answered - sent,
            };
            recorder.record(&outcome);
            self.progress.record(&outcome);
            if let (Code::Ok, Op::Durable(request, acks)) = (code, &op) {
                acks.record(request);
            }
            return;
        }
    }
}

/// Runs one scenario to the end (or until stopped) and judges it.
pub async fn run_scenario(
    ctx: &Context,
    scenario: &Scenario,
    stats_client: VectorIndexClient<Channel>,
) -> ScenarioReport {
    let ctx = &Context {
        timeout: scenario.timeout.unwrap_or(ctx.timeout),
        ..ctx.clone()
    };
    let monitor = Monitor::start(
        stats_client,
        Arc::clone(&ctx.headers),
        Duration::from_secs(1),
    );
    let started = Instant::now();
    let timeline = Arc::new(Timeline::new());
    let mut phases = Vec::new();
    let mut total = Outcomes::default();
    let mut abort_failures = Vec::new();
    for (index, phase) in scenario.phases.iter().enumerate() {
        if ctx.stop.is_stopped() {
            break;
        }
        monitor.set_phase(index);
        monitor.sample_now().await;
        ctx.progress
            .set_label(format!("{} / {}", scenario.name, phase.name));
        let recorder = Arc::new(Recorder::with_timeline(Arc::clone(&timeline)));
        let phase_started = Instant::now();
        let ticker = scenario.monitor_every.map(|every| {
            let (recorder, progress, label) = (
                Arc::clone(&recorder),
                ctx.progress.clone(),
                format!("{}/{}", scenario.name, phase.name),
            );
            tokio::spawn(async move { report_every(every, &recorder, &progress, &label).await })
        });
        let watchdog = ctx.abort_on_fail.map(|grace| {
            let watch = AbortWatch {
                scenario: scenario.name.clone(),
                phase: phase.name.clone(),
                concurrency: phase.model.concurrency(),
                thresholds: scenario.thresholds.clone(),
                total_before: total.clone(),
                recorder: Arc::clone(&recorder),
                stop: ctx.stop.clone(),
            };
            tokio::spawn(watch.run(grace, phase_started))
        });
        run_phase(ctx, phase, &scenario.workload, &recorder).await;
        let elapsed = phase_started.elapsed();
        if let Some(t) = ticker {
            t.abort();
        }
        let mid_run_failure = match watchdog {
            Some(task) => {
                task.abort();
                task.await.ok().flatten()
            }
            None => None,
        };
        monitor.sample_now().await;
        let outcomes = recorder.snapshot();
        total.merge(&outcomes);
        let report = outcomes.report(
            &phase.name,
            phase.model.concurrency(),
            elapsed,
            monitor.figures(Some(index)),
        );
        let failure = mid_run_failure.or_else(|| {
            ctx.abort_on_fail?;
            failed_at_phase_end(&scenario.thresholds, &report)
        });
        phases.push(report);
        if let Some(failure) = failure {
            ctx.stop.abort(format!(
                "{}: {} failed in {} (observed {})",
                scenario.name, failure.expression, failure.scope, failure.observed
            ));
            abort_failures.push(failure);
        }
    }
    let duration = started.elapsed();
    let peak = scenario
        .phases
        .iter()
        .map(|p| p.model.concurrency())
        .max()
        .unwrap_or(0);
    let mut report = ScenarioReport {
        server_metrics: Default::default(),
        name: scenario.name.clone(),
        description: scenario.description.clone(),
        parameters: scenario.parameters.clone(),
        duration_s: duration.as_secs_f64(),
        total: total.report("total", peak, duration, monitor.figures(None)),
        phases,
        server: monitor.figures(None),
        thresholds: Vec::new(),
        loadgen: Default::default(),
        warnings: Vec::new(),
        passed: false,
        timeline: timeline.points(),
        server_timeline: monitor
            .samples()
            .into_iter()
            .map(|s| ServerPoint {
                t_s: s.at_s,
                in_flight: s.in_flight,
                queued: s.queued,
                shed_total: s.shed_total,
                rss_bytes: s.rss_bytes,
                uptime_ms: s.uptime_ms,
            })
            .collect(),
        fault: None,
    };
    if let Some(url) = &ctx.metrics_url {
        match crate::scrape::scrape(url).await {
            Ok(samples) => report.server_metrics = samples,
            Err(e) => report
                .warnings
                .push(format!("cannot scrape server metrics: {e}")),
        }
    }
    threshold::judge(&mut report, &scenario.thresholds);
    if !abort_failures.is_empty() {
        // The failure that aborted the run stays in the verdict even if the figure it was
        // judged on recovered by the end of the phase.
        report.passed = false;
        report.thresholds.extend(abort_failures);
    }
    if scenario.check_recovery
        && let Some(recovered) = criteria::recovery(&report)
    {
        report.passed &= recovered.passed;
        report.thresholds.push(recovered);
    }
    for violation in criteria::graceful_violations(&report) {
        report.warnings.push(format!("not graceful: {violation}"));
    }
    report
}

/// Watches a running phase for a failed threshold when `--abort-on-fail` is on.
struct AbortWatch {
    scenario: String,
    phase: String,
    concurrency: u64,
    thresholds: Vec<Threshold>,
    /// The scenario's outcomes before this phase, for thresholds on the totals.
    total_before: Outcomes,
    recorder: Arc<Recorder>,
    stop: Stop,
}

impl AbortWatch {
    /// Every second after `grace`, judges the upper-bound thresholds (`p99<50ms`,
    /// `error_rate<0.01`, ...) on the phase so far, and the totals so far; the first failure
    /// aborts the run and is returned. Lower bounds (`qps>500`) are left to the end of the
    /// phase: a phase that has only begun has not yet had its chance to reach them.
    async fn run(self, grace: Duration, phase_started: Instant) -> Option<ThresholdResult> {
        tokio::time::sleep_until((phase_started + grace).into()).await;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        loop {
            every.tick().await;
            let elapsed = phase_started.elapsed();
            let outcomes = self.recorder.snapshot();
            let mut totals = self.total_before.clone();
            totals.merge(&outcomes);
            let figures = Default::default();
            let phase = outcomes.report(&self.phase, self.concurrency, elapsed, figures);
            let total = totals.report("total", self.concurrency, elapsed, Default::default());
            let failure = self
                .thresholds
                .iter()
                .filter(|t| matches!(t.op, threshold::Op::Lt | threshold::Op::Le))
                .filter(|t| !t.metric.is_server_figure())
                .find_map(|t| {
                    let (scope, observed) = match &t.scope {
                        Scope::Total => ("total", &total),
                        Scope::EachPhase => (self.phase.as_str(), &phase),
                        Scope::Phase(name) if *name == self.phase => (name.as_str(), &phase),
                        Scope::Phase(_) => return None,
                    };
                    let value = t.observe(observed);
                    (!t.holds(value)).then(|| ThresholdResult {
                        scope: format!("{scope} at {:.0}s, aborted", elapsed.as_secs_f64()),
                        expression: t.expression.clone(),
                        observed: value,
                        passed: false,
                    })
                });
            if let Some(failure) = failure {
                self.stop.abort(format!(
                    "{}: {} failed in {} (observed {})",
                    self.scenario, failure.expression, failure.scope, failure.observed
                ));
                return Some(failure);
            }
        }
    }
}

/// The first threshold scoped to this phase (by name or `@*`) that fails on its final figures.
fn failed_at_phase_end(thresholds: &[Threshold], phase: &PhaseReport) -> Option<ThresholdResult> {
    thresholds.iter().find_map(|t| {
        let applies = match &t.scope {
            Scope::EachPhase => true,
            Scope::Phase(name) => *name == phase.name,
            Scope::Total => false,
        };
        let observed = t.observe(phase);
        (applies && !t.holds(observed)).then(|| ThresholdResult {
            scope: format!("{} (end of phase), aborted", phase.name),
            expression: t.expression.clone(),
            observed,
            passed: false,
        })
    })
}

/// The specification's monitor: every `every`, recent throughput and the error rate so far.
async fn report_every(every: Duration, recorder: &Recorder, progress: &Progress, label: &str) {
    let started = Instant::now();
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        let o = recorder.snapshot();
        let (requests, successes) = (o.requests(), o.successes());
        let recent = (successes - last.0) as f64 / last.1.elapsed().as_secs_f64();
        let error_rate = if requests == 0 {
            0.0
        } else {
            1.0 - successes as f64 / requests as f64
        };
        progress.println(format!(
            "[{label} {:>4.0}s] {recent:.1} QPS, {:.2}% errors, p99 {:.1} ms",
            started.elapsed().as_secs_f64(),
            error_rate * 100.0,
            o.latency.value_at_quantile(0.99) as f64 / 1000.0
        ));
        last = (successes, Instant::now());
    }
}

async fn run_phase(
    ctx: &Context,
    phase: &Phase,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    match phase.model {
        Model::Closed {
            users,
            iterations,
            duration,
            think,
            stagger,
        } => {
            run_closed(
                ctx, users, iterations, duration, think, stagger, workload, recorder,
            )
            .await
        }
        Model::Paced {
            workers,
            rate,
            duration,
        } => run_paced(ctx, workers, rate, duration, workload, recorder).await,
        Model::Ramping {
            from,
            to,
            duration,
            think,
        } => run_ramping(ctx, from, to, duration, think, workload, recorder).await,
        Model::Open {
            from,
            to,
            duration,
            max_in_flight,
        } => run_open(ctx, from, to, duration, max_in_flight, workload, recorder).await,
    }
}

/// Ramping users: a controller adds or retires users every 100 ms to follow the ramp; a
/// retired user finishes its request in flight and stops.
async fn run_ramping(
    ctx: &Context,
    from: u64,
    to: u64,
    duration: Duration,
    think: Duration,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let start = Instant::now();
    let mut active: Vec<Arc<std::sync::atomic::AtomicBool>> = Vec::new();
    let mut tasks = JoinSet::new();
    let mut next_user = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration || ctx.stop.is_stopped() {
            break;
        }
        let want = ramp(from as f64, to as f64, duration, elapsed).round() as usize;
        while active.len() < want {
            let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
            active.push(Arc::clone(&running));
            let (ctx, workload, recorder) =
                (ctx.clone(), Arc::clone(workload), Arc::clone(recorder));
            let user = next_user;
            next_user += 1;
            tasks.spawn(async move {
                let mut requests = workload.generator(user, from.max(to));
                let mut i = 0;
                while running.load(std::sync::atomic::Ordering::Acquire)
                    && !ctx.stop.is_stopped()
                    && start.elapsed() < duration
                {
                    ctx.execute(requests.next(i), Instant::now(), &recorder)
                        .await;
                    i += 1;
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
            });
        }
        while active.len() > want {
            if let Some(user) = active.pop() {
                user.store(false, std::sync::atomic::Ordering::Release);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for user in &active {
        user.store(false, std::sync::atomic::Ordering::Release);
    }
    while tasks.join_next().await.is_some() {}
}

/// Open model: one scheduler computes each arrival's intended time from the (ramping) rate and
/// hands it to a fresh task, unless `max_in_flight` are outstanding: then the arrival is dropped
/// and counted. A scheduler that wakes late sends what is due at once, with latency still timed
/// from each request's intended time.
async fn run_open(
    ctx: &Context,
    from: f64,
    to: f64,
    duration: Duration,
    max_in_flight: u64,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight.max(1) as usize));
    let start = tokio::time::Instant::now();
    let mut requests = workload.generator(0, 1);
    let mut tasks = JoinSet::new();
    // Arrivals so far at time t on a linear ramp: N(t) = from*t + (to-from)*t^2/(2*duration).
    // The n-th arrival is at the t where N(t) = n, solved in the form that stays exact when
    // the ramp is flat or starts at zero: t = 2n / (from + sqrt(from^2 + 2*slope*n)).
    let slope = (to - from) / duration.as_secs_f64().max(1e-9);
    for n in 0u64.. {
        let discriminant = from * from + 2.0 * slope * n as f64;
        let denominator = from + discriminant.max(0.0).sqrt();
        let offset = if n == 0 && (from > 0.0 || slope > 0.0) {
            Duration::ZERO
        } else if discriminant < 0.0 || denominator <= 0.0 {
            break; // no rate at all, or a ramp down to zero has no more arrivals
        } else {
            Duration::from_secs_f64(2.0 * n as f64 / denominator)
        };
        if offset >= duration || ctx.stop.is_stopped() {
            break;
        }
        let intended = start + offset;
        tokio::select! {
            () = tokio::time::sleep_until(intended) => {}
            () = ctx.stop.stopped() => break,
        }
        let op = requests.next(n);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let (ctx, recorder) = (ctx.clone(), Arc::clone(recorder));
                let at = intended.into_std();
                tasks.spawn(async move {
                    ctx.execute(op, at, &recorder).await;
                    drop(slot);
                });
            }
            Err(_) => recorder.drop_arrival(),
        }
        // Reap finished tasks so the set stays small on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[allow(clippy::too_many_arguments)]
async fn run_closed(
    ctx: &Context,
    users: u64,
    iterations: Option<u64>,
    duration: Option<Duration>,
    think: Duration,
    stagger: Option<(u64, Duration)>,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let deadline = duration.map(|d| Instant::now() + d);
    let over = move || deadline.is_some_and(|d| Instant::now() >= d);
    let mut tasks = JoinSet::new();
    for user in 0..users {
        if let Some((every, pause)) = stagger
            && user > 0
            && every > 0
            && user % every == 0
        {
            tokio::time::sleep(pause).await;
        }
        if ctx.stop.is_stopped() || over() {
            break;
        }
        let (ctx, workload, recorder) = (ctx.clone(), Arc::clone(workload), Arc::clone(recorder));
        tasks.spawn(async move {
            let mut requests = workload.generator(user, users);
            let mut i = 0;
            while iterations.is_none_or(|n| i < n) && !ctx.stop.is_stopped() && !over() {
                let op = requests.next(i);
                ctx.execute(op, Instant::now(), &recorder).await;
                i += 1;
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn run_paced(
    ctx: &Context,
    workers: u64,
    rate: f64,
    duration: Duration,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let workers = workers.max(1);
    let start = tokio::time::Instant::now();
    let end = start + duration;
    // Each worker's gap between requests; workers are offset evenly within one gap.
    let gap = Duration::from_secs_f64(workers as f64 / rate.max(1e-6));
    let mut tasks = JoinSet::new();
    for worker in 0..workers {
        let (ctx, workload, recorder) = (ctx.clone(), Arc::clone(workload), Arc::clone(recorder));
        tasks.spawn(async move {
            let offset = gap.mul_f64(worker as f64 / workers as f64);
            let mut requests = workload.generator(worker, workers);
            for n in 0u64.. {
                let intended = start + offset + gap.mul_f64(n as f64);
                if intended >= end || ctx.stop.is_stopped() {
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(intended) => {}
                    () = ctx.stop.stopped() => break,
                }
                let op = requests.next(n);
                ctx.execute(op, intended.into_std(), &recorder).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}
