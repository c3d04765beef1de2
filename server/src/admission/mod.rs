//! Admission control for the VectorIndex service: a cost-weighted concurrency limit, a bounded
//! wait queue in front of it, and load shedding that refuses early and cheaply.
//!
//! A request's life here:
//! 1. **Queue full?** Once `queue_depth` requests wait, the next one is answered
//!    `RESOURCE_EXHAUSTED` at once, before it is decoded or priced: an overloaded server spends
//!    almost nothing on the work it refuses. (Its body has already arrived: [`crate::net`]
//!    reads bodies whole first, so a client that never finishes one cannot hold a slot.)
//! 2. **Body and cost.** The (unary) body is taken, bounded by `max_queued_bytes` across all
//!    waiting requests, and priced in [`Cost`] units: an ANN search with a modest `k`/`ef` is
//!    one slot; wide searches, long texts, exact scans and big upsert batches cost more, up to
//!    half the limit. Expensive requests wait in their own queue, and the two queues take turns
//!    by cost served, so a few exact scans cannot starve the cheap searches (and vice versa).
//! 3. **Deadline and wait.** A request whose `grpc-timeout` cannot be met (the expected queue
//!    wait plus its service time, from measured service times, exceeds it) is refused with
//!    `DEADLINE_EXCEEDED` before any work. Waiting is bounded in time: `max_queue_wait` always,
//!    and with `queue_target` set, CoDel-style, once the queue has not emptied for
//!    `queue_interval`, arrivals whose expected wait exceeds the target are shed at once, and
//!    go on being held to it until a whole interval passes in which every arrival fitted.
//!    A request whose client cancels while it waits leaves the queue and never runs.
//! 4. **Shed answers** carry `grpc-retry-pushback-ms` (gRFC A6): the expected wait, so polite
//!    clients come back when there is room.
//!
//! `Stats` bypasses it: monitoring must see an overloaded server, not be shed by it.
//!
//! It is one tower layer rather than tower's `LoadShed` + `Buffer` + `ConcurrencyLimit`, because
//! those cannot price requests, bound wait time, or report how many requests wait.

pub mod adaptive;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use prost::Message;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::config::AdmissionConfig;
use crate::layers::metrics::Metrics;

/// Permits per slot: costs are counted in quarter slots, so that moderately wider requests
/// can cost a little more than the cheapest without costing double.
const UNITS_PER_SLOT: u32 = 4;

/// Why a request was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `queue_depth` requests were already waiting.
    QueueFull,
    /// The bodies of waiting requests already took `max_queued_bytes`.
    QueueBytes,
    /// It waited `max_queue_wait` without a slot.
    QueueTimeout,
    /// The queue has stayed non-empty and its expected wait exceeds `queue_target`.
    QueueLatency,
    /// Its deadline could not be met.
    Deadline,
}

impl ShedReason {
    /// Every reason, for metrics.
    pub const ALL: [ShedReason; 5] = [
        ShedReason::QueueFull,
        ShedReason::QueueBytes,
        ShedReason::QueueTimeout,
        ShedReason::QueueLatency,
        ShedReason::Deadline,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueBytes => "queue_bytes",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::QueueLatency => "queue_latency",
            ShedReason::Deadline => "deadline",
        }
    }
}

/// What a request is expected to cost, in units ([`UNITS_PER_SLOT`] to a slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Units held while it runs.
    pub units: u32,
}

impl Cost {
    /// The cheapest request: one slot.
    pub const ONE_SLOT: Cost = Cost {
        units: UNITS_PER_SLOT,
    };

    /// Prices a request from its method and gRPC message body (a 5-byte frame header and the
    /// protobuf). Anything it cannot read costs one slot: the service will reject it anyway.
    pub fn estimate(path: &str, body: &[u8]) -> Cost {
        let message = match body {
            // Uncompressed single frame; compressed or odd bodies are priced as one slot.
            [0, _, _, _, _, rest @ ..] => rest,
            _ => return Cost::ONE_SLOT,
        };
        let slot = UNITS_PER_SLOT;
        let units = match path.rsplit('/').next().unwrap_or_default() {
            "Search" => match vecrig::proto::SearchRequest::decode(message) {
                Ok(request) => {
                    // Exact scans touch every point: a few of them fill a server.
                    let base = if request.exact { 8 * slot } else { slot };
                    // Wider searches visit proportionally more of the graph.
                    let breadth = request.k.max(request.ef).saturating_sub(128) / 64;
                    let text = match &request.query {
                        Some(vecrig::proto::search_request::Query::Text(t)) => {
                            (t.len() / 16_384) as u32
                        }
                        _ => 0,
                    };
                    base.saturating_add(breadth).saturating_add(text)
                }
                Err(_) => slot,
            },
            // Each inserted point costs graph work; priced by size rather than decoded
            // twice, ~16 KiB (a few dozen points) to a unit.
            "Upsert" => slot.saturating_add((message.len() / 16_384) as u32),
            _ => slot,
        };
        Cost { units }
    }

    /// This cost in slots (for estimates).
    fn slots(self) -> f64 {
        f64::from(self.units) / f64::from(UNITS_PER_SLOT)
    }

    /// Whether it waits in the expensive requests' queue.
    fn is_heavy(self) -> bool {
        self.units > UNITS_PER_SLOT
    }
}

/// Live admission figures, shared between the layer, `Stats` and the metrics endpoint.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    scheduler: Mutex<Scheduler>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    shed_total: AtomicU64,
    /// Exponentially weighted mean service time of one slot of cost, in nanoseconds.
    service_ns_per_slot: AtomicU64,
    metrics: Arc<Metrics>,
}

/// A snapshot of the admission figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Requests refused since start.
    pub shed_total: u64,
    /// The concurrency limit, in slots (0 when admission is off).
    pub limit: u64,
}

impl Admission {
    /// Admission state for these sizes, recording into `metrics`.
    pub fn new(config: AdmissionConfig, metrics: Arc<Metrics>) -> Arc<Self> {
        let limit_units = (config.concurrency_limit.max(1) as u32).saturating_mul(UNITS_PER_SLOT);
        Arc::new(Self {
            config,
            scheduler: Mutex::new(Scheduler::new(limit_units)),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            shed_total: AtomicU64::new(0),
            service_ns_per_slot: AtomicU64::new(0),
            metrics,
        })
    }

    /// Current figures.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            queued: self.queued.load(Ordering::Relaxed) as u64,
            shed_total: self.shed_total.load(Ordering::Relaxed),
            limit: if self.config.enabled {
                u64::from(self.lock().limit_units / UNITS_PER_SLOT)
            } else {
                0
            },
        }
    }

    /// Takes the figures of the window since the last call and starts a new one (for the
    /// adaptive limit, [`crate::admission::adaptive`]).
    pub fn take_window(&self) -> Window {
        let mut scheduler = self.lock();
        let taken = std::mem::take(&mut scheduler.window);
        // What runs now is in use in the new window too. (The old window's peak already
        // counts it: usage only grows through `take`, which records the peak.)
        scheduler.window.peak_used_slots = scheduler.used_slots();
        scheduler.window_since = Instant::now();
        taken
    }

    /// Changes the concurrency limit (slots); waiting requests are admitted if it grew.
    pub fn set_limit(&self, slots: usize) {
        let mut scheduler = self.lock();
        scheduler.limit_units = (slots.max(1) as u32).saturating_mul(UNITS_PER_SLOT);
        scheduler.dispatch();
    }

    /// The measured mean service time of one slot of cost.
    pub fn service_time_per_slot(&self) -> Duration {
        Duration::from_nanos(self.service_ns_per_slot.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler> {
        // The scheduler's state stays consistent across a panic elsewhere (none of its
        // methods panic), so a poisoned lock is still usable.
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The expected wait for a request arriving now, from the cost queued and the measured
    /// service time (zero until something has been measured).
    fn expected_wait(&self) -> Duration {
        let per_slot = self.service_time_per_slot();
        self.lock().expected_wait(per_slot)
    }

    fn record_service_time(&self, cost: Cost, took: Duration) {
        let sample = took.as_nanos() as f64 / cost.slots().max(0.25);
        // An EWMA over roughly the last 50 requests: recent enough to follow a change of load,
        // smooth enough that one slow request does not swing the estimate.
        let _ =
            self.service_ns_per_slot
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                    let old = old as f64;
                    let new = if old == 0.0 {
                        sample
                    } else {
                        old + (sample - old) / 50.0
                    };
                    Some(new as u64)
                });
    }

    fn shed(&self, reason: ShedReason, deadline: Option<Instant>) -> Status {
        self.shed_total.fetch_add(1, Ordering::Relaxed);
        self.metrics.shed(reason);
        let stats = self.stats();
        // Once per refusal: it takes the scheduler's lock, and overload is when sheds are many.
        let expected_wait = self.expected_wait();
        let mut status = match reason {
            ShedReason::Deadline => {
                let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                Status::deadline_exceeded(format!(
                    "deadline cannot be met: {left:?} left, about {:?} expected in the queue; \
                     refused before running",
                    expected_wait
                ))
            }
            _ => Status::resource_exhausted(format!(
                "server overloaded ({}): {} requests in flight (limit {}), {} queued (limit {}); \
                 retry with backoff",
                reason.label(),
                stats.in_flight,
                stats.limit,
                stats.queued,
                self.config.queue_depth
            )),
        };
        if reason != ShedReason::Deadline {
            // gRFC A6 pushback: come back once the queue ahead should have drained.
            let pushback = expected_wait.as_millis().clamp(1, 10_000);
            if let Ok(value) = pushback.to_string().parse() {
                status
                    .metadata_mut()
                    .insert("grpc-retry-pushback-ms", value);
            }
        }
        status
    }

    /// Whether the CoDel-style check sheds an arrival (see [`Scheduler::too_long_a_wait`]).
    fn standing_queue_too_long(&self) -> bool {
        let Some(target) = self.config.queue_target else {
            return false;
        };
        let per_slot = self.service_time_per_slot();
        self.lock()
            .too_long_a_wait(Instant::now(), per_slot, target, self.config.queue_interval)
    }
}

/// Service times of the requests that started and finished within one window of the
/// adaptive controller, and how much of the limit was used at most.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Sum over those requests of their service time divided by their cost in slots.
    pub sum_secs_per_slot: f64,
    /// How many there were.
    pub count: u64,
    /// The most slots in use at once.
    pub peak_used_slots: f64,
}

/// Who runs next: free units, and two FIFO queues (cheap and expensive requests) that take
/// turns by cost served, so neither class starves the other. Work-conserving: when one queue
/// is empty, the other may use the whole limit.
#[derive(Debug)]
struct Scheduler {
    limit_units: u32,
    used_units: u32,
    queued_units: u32,
    queues: [VecDeque<Waiter>; 2],
    /// Units granted to each class (start-time fair queueing's virtual clocks).
    served: [u64; 2],
    next_id: u64,
    /// Since when the queue has been non-empty.
    nonempty_since: Option<Instant>,
    /// Until when arrivals are held to `queue_target` (the queue stood, and arrivals were
    /// shed for it, within the last interval).
    strict_until: Option<Instant>,
    /// The adaptive controller's current window, and when it began.
    window: Window,
    window_since: Instant,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    units: u32,
    grant: oneshot::Sender<()>,
}

impl Scheduler {
    fn new(limit_units: u32) -> Self {
        Self {
            limit_units,
            used_units: 0,
            queued_units: 0,
            queues: [VecDeque::new(), VecDeque::new()],
            served: [0; 2],
            next_id: 0,
            nonempty_since: None,
            strict_until: None,
            window: Window::default(),
            window_since: Instant::now(),
        }
    }

    /// The CoDel-style rule: an arrival is shed when the wait it would face exceeds `target`
    /// while the queue *stands*: it has not emptied for `interval`, or arrivals were shed
    /// for it within the last `interval`. The second half matters under sustained overload:
    /// the queue drains now and then between bursts, and if every drain reset the rule,
    /// each one would be followed by an interval of unbounded admission (a queue of a
    /// hundred requests waiting hundreds of milliseconds) before the rule held again. So
    /// the rule lets go only after a whole interval in which every arrival fitted.
    /// Outside a standing queue a burst may queue, but for no longer than `interval` (as in
    /// Facebook's adaptive CoDel): a burst that would take longer to drain is no longer one.
    fn too_long_a_wait(
        &mut self,
        now: Instant,
        per_slot: Duration,
        target: Duration,
        interval: Duration,
    ) -> bool {
        let standing = self.strict_until.is_some_and(|until| now < until)
            || self
                .nonempty_since
                .is_some_and(|since| now.saturating_duration_since(since) >= interval);
        let shed = self.expected_wait(per_slot) > if standing { target } else { interval };
        if shed {
            self.strict_until = Some(now + interval);
        }
        shed
    }

    /// The wait of a request queued now: the cost ahead of it, spread over the limit, at
    /// `per_slot` each.
    fn expected_wait(&self, per_slot: Duration) -> Duration {
        per_slot.mul_f64(f64::from(self.queued_units) / f64::from(self.limit_units.max(1)))
    }

    fn used_slots(&self) -> f64 {
        f64::from(self.used_units) / f64::from(UNITS_PER_SLOT)
    }

    /// Takes `units` of the limit for a request that starts now.
    fn take(&mut self, units: u32) {
        self.used_units += units;
        self.window.peak_used_slots = self.window.peak_used_slots.max(self.used_slots());
    }

    /// A finished request's service time, counted if it started within this window (one
    /// that started before a limit change would describe the old limit).
    fn sample(&mut self, started: Instant, took: Duration, cost: Cost) {
        if started >= self.window_since {
            self.window.sum_secs_per_slot += took.as_secs_f64() / cost.slots().max(0.25);
            self.window.count += 1;
        }
    }

    /// Grants units to waiting requests while they fit, in fair order.
    fn dispatch(&mut self) {
        loop {
            let class = match (self.queues[0].front(), self.queues[1].front()) {
                (None, None) => break,
                (Some(_), None) => 0,
                (None, Some(_)) => 1,
                (Some(_), Some(_)) => usize::from(self.served[1] < self.served[0]),
            };
            let Some(head) = self.queues[class].front() else {
                break;
            };
            // The class whose turn it is waits for room rather than being overtaken, so a
            // large request is not starved by a stream of small ones.
            if self.used_units + head.units > self.limit_units && self.used_units > 0 {
                break;
            }
            let Some(waiter) = self.queues[class].pop_front() else {
                break;
            };
            self.queued_units -= waiter.units;
            if waiter.grant.send(()).is_ok() {
                self.take(waiter.units);
                self.served[class] += u64::from(waiter.units);
            }
        }
        // A class that was idle must not bank credit for the time it had nothing to send.
        for class in 0..2 {
            if self.queues[class].is_empty() {
                self.served[class] = self.served[class].max(self.served[1 - class]);
            }
        }
        if self.queues.iter().all(VecDeque::is_empty) {
            self.nonempty_since = None;
        }
    }

    fn release(&mut self, units: u32) {
        self.used_units = self.used_units.saturating_sub(units);
        self.dispatch();
    }

    fn cancel(&mut self, id: u64) -> bool {
        for queue in &mut self.queues {
            if let Some(at) = queue.iter().position(|w| w.id == id) {
                if let Some(w) = queue.remove(at) {
                    self.queued_units -= w.units;
                }
                self.dispatch();
                return true;
            }
        }
        false
    }
}

/// Units held by a running request; released (and the next waiters admitted) on drop.
struct Grant {
    admission: Arc<Admission>,
    cost: Cost,
    started: Instant,
    method: &'static str,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        let took = self.started.elapsed();
        self.admission.record_service_time(self.cost, took);
        self.admission
            .metrics
            .observe_service_time(self.method, took);
        let mut scheduler = self.admission.lock();
        scheduler.sample(self.started, took, self.cost);
        scheduler.release(self.cost.units);
    }
}

/// A place in the queue; leaving it (cancelled, timed out) takes the request out of the
/// scheduler, and gives back units granted in the meantime.
struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    units: u32,
    grant: Option<oneshot::Receiver<()>>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(mut grant) = self.grant.take() {
            let mut scheduler = self.admission.lock();
            if !scheduler.cancel(self.id) && grant.try_recv().is_ok() {
                // Granted between the timeout and now: hand the units on.
                scheduler.release(self.units);
            }
        }
    }
}

/// Counts one request as queued (and its body's bytes) for as long as it lives.
struct Queued {
    admission: Arc<Admission>,
    bytes: usize,
}

impl Queued {
    fn add_bytes(&mut self, n: usize) -> bool {
        self.bytes += n;
        let total = self.admission.queued_bytes.fetch_add(n, Ordering::AcqRel) + n;
        total <= self.admission.config.max_queued_bytes
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.admission.queued.fetch_sub(1, Ordering::AcqRel);
        self.admission
            .queued_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The `grpc-timeout` header as a deadline (`None` when absent or unreadable).
fn deadline_of<B>(request: &http::Request<B>, arrived: Instant) -> Option<Instant> {
    let value = request.headers().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

impl Admission {
    /// Steps 1-3 of the module docs: returns the buffered request and its grant, or the
    /// status to answer instead.
    async fn admit<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
    ) -> Result<(http::Request<Body>, Grant), Status>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let arrived = Instant::now();
        let deadline = deadline_of(&request, arrived);
        let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
        let mut queued = Queued {
            admission: Arc::clone(self),
            bytes: 0,
        };
        if waiting >= self.config.queue_depth {
            return Err(self.shed(ShedReason::QueueFull, deadline));
        }
        if self.standing_queue_too_long() {
            return Err(self.shed(ShedReason::QueueLatency, deadline));
        }
        let wait_limit = match deadline {
            Some(d) => self
                .config
                .max_queue_wait
                .min(d.saturating_duration_since(arrived)),
            None => self.config.max_queue_wait,
        };
        let give_up = arrived + wait_limit;

        // Read the body (bounded in bytes across the queue, and in time).
        let (parts, body) = request.into_parts();
        // The body arrives already whole from `limits` (one frame): kept without a copy.
        let mut body = std::pin::pin!(body);
        let mut chunks: Vec<bytes::Bytes> = Vec::with_capacity(1);
        loop {
            let frame = match tokio::time::timeout_at(give_up.into(), body.frame()).await {
                Err(_) => return Err(self.timed_out(deadline)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    return Err(Status::cancelled(format!("request body: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !queued.add_bytes(data.len()) {
                    return Err(self.shed(ShedReason::QueueBytes, deadline));
                }
                chunks.push(data);
            }
        }
        let bytes = match chunks.len() {
            0 => bytes::Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        let cost = Cost::estimate(parts.uri.path(), &bytes);
        let limit_units = self.lock().limit_units;
        // Never more than half the limit: an expensive request must leave room for others.
        let cost = Cost {
            units: cost.units.min((limit_units / 2).max(UNITS_PER_SLOT)),
        };

        // Can the deadline still be met?
        if let Some(deadline) = deadline {
            let expected =
                self.expected_wait() + self.service_time_per_slot().mul_f64(cost.slots().max(0.25));
            if Instant::now() + expected > deadline {
                return Err(self.shed(ShedReason::Deadline, Some(deadline)));
            }
        }

        // Wait for units.
        let receiver = {
            let mut scheduler = self.lock();
            let queues_empty = scheduler.queues.iter().all(VecDeque::is_empty);
            if queues_empty && scheduler.used_units + cost.units <= scheduler.limit_units {
                scheduler.take(cost.units);
                None
            } else {
                let (grant, receiver) = oneshot::channel();
                let id = scheduler.next_id;
                scheduler.next_id += 1;
                scheduler.queued_units += cost.units;
                scheduler.queues[usize::from(cost.is_heavy())].push_back(Waiter {
                    id,
                    units: cost.units,
                    grant,
                });
                scheduler.nonempty_since.get_or_insert(arrived);
                Some(Ticket {
                    admission: Arc::clone(self),
                    id,
                    units: cost.units,
                    grant: Some(receiver),
                })
            }
        };
        if let Some(mut ticket) = receiver {
            let Some(grant) = ticket.grant.as_mut() else {
                return Err(Status::internal("admission ticket without a grant"));
            };
            match tokio::time::timeout_at(give_up.into(), grant).await {
                Ok(Ok(())) => {
                    // Granted: the units are ours now; the ticket must not hand them back.
                    ticket.grant = None;
                }
                Ok(Err(_)) => return Err(Status::unavailable("admission closed")),
                Err(_) => return Err(self.timed_out(deadline)),
            }
        }
        drop(queued);
        let now = Instant::now();
        self.metrics
            .observe_queue_wait(parts.uri.path(), now - arrived);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        let grant = Grant {
            admission: Arc::clone(self),
            cost,
            started: now,
            method: crate::layers::metrics::method_of(parts.uri.path()),
        };
        let request = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)));
        Ok((request, grant))
    }

    fn timed_out(&self, deadline: Option<Instant>) -> Status {
        let deadline_first = deadline.is_some_and(|d| d <= Instant::now());
        if deadline_first {
            self.shed(ShedReason::Deadline, deadline)
        } else {
            self.shed(ShedReason::QueueTimeout, deadline)
        }
    }
}

/// The one VectorIndex method that bypasses admission.
const STATS_PATH: &str = "/vecrig.v1.VectorIndex/Stats";

/// Puts a service behind [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    /// A layer sharing `admission`'s state.
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitting<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admitting {
            inner,
            admission: Arc::clone(&self.admission),
        }
    }
}

/// A service behind admission control.
#[derive(Debug, Clone)]
pub struct Admitting<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S: NamedService> NamedService for Admitting<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Admitting<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the decision to run, wait or shed is made per request in `call`,
        // where the queue can be measured. tonic's generated services are always ready too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = Arc::clone(&self.admission);
        if !admission.config.enabled || request.uri().path() == STATS_PATH {
            // Stats is how operators and the loadgen watch an overloaded server: like health,
            // it must answer while the server sheds, and it costs next to nothing. With
            // admission off (the baseline of the degradation bench) everything runs at once.
            let counted = !admission.config.enabled;
            return Box::pin(async move {
                if counted {
                    admission.in_flight.fetch_add(1, Ordering::AcqRel);
                }
                let response = inner.call(request.map(Body::new)).await;
                if counted {
                    admission.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                response
            });
        }
        Box::pin(async move {
            match admission.admit(request).await {
                Ok((request, grant)) => {
                    let response = inner.call(request).await;
                    drop(grant);
                    response
                }
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vecrig::proto::{SearchRequest, UpsertRequest, Vector, search_request::Query};

    fn framed(message: &impl Message) -> Vec<u8> {
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn search(k: u32, ef: u32, exact: bool) -> Vec<u8> {
        framed(&SearchRequest {
            query: Some(Query::Vector(Vector {
                values: vec![0.0; 8],
            })),
            k,
            ef,
            exact,
            with_payload: false,
        })
    }

    #[test]
    fn costs_grow_with_the_work_a_request_asks_for() {
        let path = "/vecrig.v1.VectorIndex/Search";
        let cheap = Cost::estimate(path, &search(10, 0, false));
        assert_eq!(cheap, Cost::ONE_SLOT);
        let wide = Cost::estimate(path, &search(1000, 0, false));
        assert!(wide.units > cheap.units, "{wide:?}");
        let exact = Cost::estimate(path, &search(10, 0, true));
        assert!(exact.units >= 8 * cheap.units, "{exact:?}");
        let batch = framed(&UpsertRequest {
            points: (0..512)
                .map(|id| vecrig::proto::Point {
                    id,
                    data: Some(vecrig::proto::point::Data::Vector(Vector {
                        values: vec![0.5; 128],
                    })),
                    ..Default::default()
                })
                .collect(),
            wait: false,
        });
        let upsert = Cost::estimate("/vecrig.v1.VectorIndex/Upsert", &batch);
        assert!(upsert.units >= 4 * cheap.units, "{upsert:?}");
        // Unreadable or compressed bodies cost one slot; the service rejects them.
        assert_eq!(Cost::estimate(path, b"\x00\x00\x00\x00\x03abc"), cheap);
        assert_eq!(Cost::estimate(path, b"\x01\x00"), cheap);
        assert_eq!(Cost::estimate(path, b""), cheap);
    }

    #[test]
    fn grpc_timeout_header_becomes_a_deadline() {
        let now = Instant::now();
        let with = |value: &str| {
            let request = http::Request::builder()
                .header("grpc-timeout", value)
                .body(())
                .expect("request");
            deadline_of(&request, now).map(|d| d - now)
        };
        assert_eq!(with("100m"), Some(Duration::from_millis(100)));
        assert_eq!(with("2S"), Some(Duration::from_secs(2)));
        assert_eq!(with("5u"), Some(Duration::from_micros(5)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("x"), None);
        assert_eq!(with(""), None);
        assert_eq!(with("12"), None);
    }

    fn waiter(scheduler: &mut Scheduler, units: u32, heavy: bool) -> oneshot::Receiver<()> {
        let (grant, receiver) = oneshot::channel();
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        scheduler.queued_units += units;
        scheduler.queues[usize::from(heavy)].push_back(Waiter { id, units, grant });
        receiver
    }

    #[test]
    fn cheap_and_expensive_queues_take_turns_by_cost() {
        // Limit 4 slots (16 units), all busy; 4 exact scans (8 units) and 8 searches (4) wait.
        let mut s = Scheduler::new(16);
        s.used_units = 16;
        let mut heavy: Vec<_> = (0..4).map(|_| waiter(&mut s, 8, true)).collect();
        let mut cheap: Vec<_> = (0..8).map(|_| waiter(&mut s, 4, false)).collect();
        // Everything finishes; who got in?
        s.release(16);
        let granted = |v: &mut Vec<oneshot::Receiver<()>>| {
            v.iter_mut()
                .map(|r| r.try_recv())
                .filter(Result::is_ok)
                .count()
        };
        let (h, c) = (granted(&mut heavy), granted(&mut cheap));
        assert_eq!(h * 8 + c * 4, 16, "the limit is filled exactly");
        assert!(
            c >= 2,
            "cheap requests are not starved behind exact scans: {c}"
        );
        assert!(h >= 1, "exact scans are not starved by cheap ones: {h}");
    }

    #[test]
    fn an_idle_class_leaves_the_whole_limit_to_the_other() {
        let mut s = Scheduler::new(16);
        let mut cheap: Vec<_> = (0..6).map(|_| waiter(&mut s, 4, false)).collect();
        s.dispatch();
        let granted = cheap
            .iter_mut()
            .map(|r| r.try_recv())
            .filter(Result::is_ok)
            .count();
        assert_eq!(granted, 4);
        assert_eq!(s.used_units, 16);
        assert_eq!(s.queued_units, 8);
    }

    #[test]
    fn a_standing_queue_holds_arrivals_to_the_target_until_a_whole_interval_fits() {
        let (ms, target, interval) = (
            Duration::from_millis,
            Duration::from_millis(5),
            Duration::from_millis(100),
        );
        let start = Instant::now();
        // Limit 2 slots, 4 ms per slot; 4 searches queued: an arrival would wait 8 ms.
        let mut s = Scheduler::new(8);
        let queued: Vec<_> = (0..4).map(|_| waiter(&mut s, 4, false)).collect();
        s.nonempty_since = Some(start);
        assert!(
            !s.too_long_a_wait(start + ms(50), ms(4), target, interval),
            "a queue younger than the interval is a burst, let in"
        );
        assert!(
            s.too_long_a_wait(start + ms(100), ms(4), target, interval),
            "a queue standing for the interval sheds arrivals past the target"
        );
        // It drains for a moment between bursts; a new burst queues up at once.
        s.nonempty_since = None;
        let at = start + ms(150);
        s.nonempty_since = Some(at);
        assert!(
            s.too_long_a_wait(at, ms(4), target, interval),
            "a drain does not reset the rule within the interval"
        );
        // A short queue fits the target: let in, and the rule is kept while it holds.
        assert!(!s.too_long_a_wait(at + ms(10), ms(1), target, interval));
        // An interval after the last shed, with the queue having drained since, it lets go.
        s.nonempty_since = Some(at + ms(240));
        assert!(
            !s.too_long_a_wait(at + ms(260), ms(4), target, interval),
            "after a whole interval without sheds, bursts are let in again"
        );
        drop(queued);

        // Outside a standing queue, a burst may queue, but not past the interval.
        let mut s = Scheduler::new(8);
        let queued: Vec<_> = (0..4).map(|_| waiter(&mut s, 4, false)).collect();
        s.nonempty_since = Some(start);
        let at = start + ms(10);
        assert!(
            !s.too_long_a_wait(at, ms(40), target, interval),
            "80 ms: a burst"
        );
        assert!(
            s.too_long_a_wait(at, ms(60), target, interval),
            "120 ms: too long"
        );
        drop(queued);
    }

    #[test]
    fn a_cancelled_waiter_leaves_and_its_units_are_not_lost() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        let first = waiter(&mut s, 4, false);
        drop(first); // the client went away while waiting
        let mut second = waiter(&mut s, 4, false);
        s.release(4);
        assert!(second.try_recv().is_ok(), "the next waiter runs");
        assert_eq!(s.used_units, 4, "the cancelled one holds nothing");
        assert!(!s.cancel(999));
    }
}
