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
//!    `queue_interval`, arrivals whose expected wait exceeds twice the target are shed at once,
//!    those between one and two times it one for every two requests served (a closed-loop
//!    client's resends would otherwise make a burst of refusals of a queue just past it), and
//!    the queue goes on being held so until a whole interval passes in which every arrival fitted.
//!    A request whose client cancels while it waits leaves the queue and never runs.
//! 4. **Shed answers** carry `grpc-retry-pushback-ms` (gRFC A6): the expected wait, so polite
//!    clients come back when there is room.
//!
//! `Stats` bypasses it: monitoring must see an overloaded server, not be shed by it.
//!
//! It is one tower layer rather than tower's `LoadShed` + `Buffer` + `ConcurrencyLimit`, because
//! those cannot price requests, bound wait time, or report how many requests wait.
//!
//! What lives here: [`settings`] (flags and [`Config`]), [`cost`] (pricing a request),
//! [`scheduler`] (the limit, the two fair queues, the standing-queue rule), this module
//! ([`Admission`]: the shared state and a request's way through steps 1-4), [`layer`] (the
//! tower layer in front of the service), [`work`] (the runtime admitted work runs on, apart
//! from the request path's), [`adaptive`] (the controller that moves the limit)
//! and [`brownout`] (the controller that narrows searches under a standing queue). Admission
//! reports to metrics through the [`Recorder`] trait, so it imports nothing above it.

pub mod adaptive;
pub mod brownout;
pub mod cost;
pub mod fair;
pub mod layer;
pub mod scheduler;
pub mod settings;
pub mod work;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use crate::caller::{Caller, ClientKey};
use crate::method::Method;
use cost::UNITS_PER_SLOT;
use scheduler::Scheduler;

pub use cost::Cost;
pub use scheduler::Window;
pub use settings::{AdaptiveConfig, Args, BrownoutConfig, Config};

/// Where admission reports what it does (the metrics layer implements it). A trait, so that
/// admission, below the layers, never imports them.
pub trait Recorder: Send + Sync + std::fmt::Debug {
    /// One request of `client` refused before it ran.
    fn shed(&self, reason: ShedReason, client: &ClientKey);
    /// One request of `client` admitted (given its slot).
    fn admitted(&self, client: &ClientKey);
    /// How long an admitted request waited for its slot.
    fn queue_wait(&self, method: Method, waited: Duration);
    /// How long an admitted request held its slot.
    fn service_time(&self, method: Method, took: Duration);
}

/// Why a request was refused before it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShedReason {
    /// `queue_depth` requests were already waiting, and its client held the most places.
    QueueFull,
    /// It waited, and gave its place up to a lighter client's request when the queue was
    /// full: its client held the most places.
    Displaced,
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
    pub const ALL: [ShedReason; 6] = [
        ShedReason::QueueFull,
        ShedReason::Displaced,
        ShedReason::QueueBytes,
        ShedReason::QueueTimeout,
        ShedReason::QueueLatency,
        ShedReason::Deadline,
    ];

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::Displaced => "displaced",
            ShedReason::QueueBytes => "queue_bytes",
            ShedReason::QueueTimeout => "queue_timeout",
            ShedReason::QueueLatency => "queue_latency",
            ShedReason::Deadline => "deadline",
        }
    }
}

/// What the queue looked like at a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    /// Nobody waits.
    Empty,
    /// Requests wait, but the queue has not stood for a whole tick yet.
    Waiting,
    /// Requests have waited without a break for at least a tick.
    Standing,
}

/// Live admission figures, shared between the layer, `Stats` and the metrics endpoint.
#[derive(Debug)]
pub struct Admission {
    config: Config,
    scheduler: Mutex<Scheduler<Waiter>>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    queued_bytes: AtomicUsize,
    shed_total: AtomicU64,
    /// High-water marks of `in_flight` and `queued` since the last [`Admission::take_peaks`].
    peak_in_flight: AtomicUsize,
    peak_queued: AtomicUsize,
    /// Exponentially weighted mean service time of one slot of cost, in nanoseconds.
    service_ns_per_slot: AtomicU64,
    recorder: Arc<dyn Recorder>,
    /// Told when the queue has room again (see [`Admission::on_room`]).
    room: RoomSlot,
    /// Requests running now, by client (only clients with some).
    running: Mutex<HashMap<ClientKey, u64>>,
    /// The share of its `ef` a search runs with now (an `f64`'s bits; 1 unless browning out,
    /// see `brownout`).
    search_breadth: AtomicU64,
}

/// One client's load now, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLoad {
    /// The client's label (`127.0.0.1`, `tenant:analytics`, or `other` for the rest).
    pub client: String,
    /// Its requests waiting for a slot.
    pub queued: u64,
    /// Its requests running.
    pub in_flight: u64,
}

/// Called, as admitted requests finish, while the queue has room for more work: the request
/// path uses it to resume reading connections it paused (`crate::net::pacing`).
pub type RoomSignal = Arc<dyn Fn() + Send + Sync>;

/// Holds the [`RoomSignal`], once set (a closure has no `Debug`).
#[derive(Default)]
struct RoomSlot(std::sync::OnceLock<RoomSignal>);

impl std::fmt::Debug for RoomSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "RoomSlot(set)"
        } else {
            "RoomSlot(unset)"
        })
    }
}

impl crate::service::LoadFigures for Admission {
    fn load(&self) -> crate::service::Load {
        let stats = self.stats();
        crate::service::Load {
            in_flight: stats.in_flight,
            queued: stats.queued,
            shed_total: stats.shed_total,
        }
    }

    fn take_peaks(&self) -> crate::service::Peaks {
        let (in_flight, queued) = Admission::take_peaks(self);
        crate::service::Peaks { in_flight, queued }
    }

    fn search_breadth(&self) -> f64 {
        Admission::search_breadth(self)
    }
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
    /// Admission state for these sizes, reporting to `recorder`.
    pub fn new(config: Config, recorder: Arc<dyn Recorder>) -> Arc<Self> {
        let limit_units = (config.concurrency_limit.max(1) as u32).saturating_mul(UNITS_PER_SLOT);
        Arc::new(Self {
            config,
            scheduler: Mutex::new(Scheduler::new(limit_units)),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            queued_bytes: AtomicUsize::new(0),
            shed_total: AtomicU64::new(0),
            peak_in_flight: AtomicUsize::new(0),
            peak_queued: AtomicUsize::new(0),
            service_ns_per_slot: AtomicU64::new(0),
            recorder,
            room: RoomSlot::default(),
            running: Mutex::new(HashMap::new()),
            search_breadth: AtomicU64::new(1.0f64.to_bits()),
        })
    }

    /// The share of its `ef` an admitted search runs with now (1: full breadth).
    pub fn search_breadth(&self) -> f64 {
        f64::from_bits(self.search_breadth.load(Ordering::Relaxed))
    }

    /// Sets the share of `ef` searches run with (the brownout controller).
    pub fn set_search_breadth(&self, breadth: f64) {
        self.search_breadth
            .store(breadth.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    /// Whether requests wait now, and whether they have without a break for `standing`.
    pub fn queue_state(&self, standing: Duration) -> QueueState {
        match self.lock().nonempty_since {
            None => QueueState::Empty,
            Some(since) if since.elapsed() >= standing => QueueState::Standing,
            Some(_) => QueueState::Waiting,
        }
    }

    fn running_by_client(&self) -> MutexGuard<'_, HashMap<ClientKey, u64>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `top` clients by places held (queued and running), and the rest as `other`: a
    /// bounded set of metric labels, however many clients there are.
    pub fn client_loads(&self, top: usize) -> Vec<ClientLoad> {
        let mut by_client: HashMap<ClientKey, (u64, u64)> = HashMap::new();
        for (client, n) in self.lock().queued_by_client() {
            by_client.entry(client).or_default().0 += n as u64;
        }
        for (client, n) in self.running_by_client().iter() {
            by_client.entry(client.clone()).or_default().1 += n;
        }
        let mut loads: Vec<_> = by_client.into_iter().collect();
        loads.sort_by_key(|(client, (q, r))| (std::cmp::Reverse(q + r), client.clone()));
        let mut out: Vec<ClientLoad> = loads
            .iter()
            .take(top)
            .map(|(client, (queued, in_flight))| ClientLoad {
                client: client.label(),
                queued: *queued,
                in_flight: *in_flight,
            })
            .collect();
        if loads.len() > top {
            let (queued, in_flight) = loads[top..]
                .iter()
                .fold((0, 0), |(q, r), (_, (dq, dr))| (q + dq, r + dr));
            out.push(ClientLoad {
                client: "other".to_string(),
                queued,
                in_flight,
            });
        }
        out
    }

    /// Sets who is told when the queue has room: less than half of `queue_depth` waiting,
    /// and, with a `queue_target`, less than half of it expected. (Once; later calls are
    /// ignored.)
    pub fn on_room(&self, signal: RoomSignal) {
        let _ = self.room.0.set(signal);
    }

    /// Whether the queue has room now, as [`Admission::on_room`] means it.
    pub fn has_room(&self) -> bool {
        let per_slot = self.service_time_per_slot();
        let scheduler = self.lock();
        self.room_in(&scheduler, per_slot)
    }

    fn room_in(&self, scheduler: &Scheduler<Waiter>, per_slot: Duration) -> bool {
        self.queued.load(Ordering::Relaxed) < self.config.queue_depth / 2
            && self
                .config
                .queue_target
                .is_none_or(|target| scheduler.expected_wait(per_slot) < target / 2)
    }

    /// The most requests in flight and queued at once since the previous call, `(in_flight,
    /// queued)`; the next period starts at the figures of the moment.
    pub fn take_peaks(&self) -> (u64, u64) {
        let take =
            |peak: &AtomicUsize, now: usize| peak.swap(now, Ordering::Relaxed).max(now) as u64;
        (
            take(&self.peak_in_flight, self.in_flight.load(Ordering::Relaxed)),
            take(&self.peak_queued, self.queued_now()),
        )
    }

    /// Requests holding a place in the queue. A displaced waiter gives its place back before
    /// the arrival that displaced it takes one, but a concurrent arrival may take it first
    /// for a moment: hence the clamp.
    fn queued_now(&self) -> usize {
        self.queued
            .load(Ordering::Relaxed)
            .min(self.config.queue_depth)
    }

    /// Current figures.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            queued: self.queued_now() as u64,
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
    pub fn set_limit(self: &Arc<Self>, slots: usize) {
        let granted = {
            let mut scheduler = self.lock();
            scheduler.limit_units = (slots.max(1) as u32).saturating_mul(UNITS_PER_SLOT);
            scheduler.dispatch()
        };
        self.start(granted);
    }

    /// The measured mean service time of one slot of cost.
    pub fn service_time_per_slot(&self) -> Duration {
        Duration::from_nanos(self.service_ns_per_slot.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Scheduler<Waiter>> {
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

    fn shed(&self, reason: ShedReason, deadline: Option<Instant>, client: &ClientKey) -> Status {
        self.shed_total.fetch_add(1, Ordering::Relaxed);
        self.recorder.shed(reason, client);
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

/// Units held by a running request; released (and the next waiters started) on drop.
struct Grant {
    admission: Arc<Admission>,
    cost: Cost,
    started: Instant,
    method: Method,
    client: ClientKey,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
        {
            let mut running = self.admission.running_by_client();
            if let Some(n) = running.get_mut(&self.client) {
                *n -= 1;
                if *n == 0 {
                    running.remove(&self.client);
                }
            }
        }
        let took = self.started.elapsed();
        self.admission.record_service_time(self.cost, took);
        self.admission.recorder.service_time(self.method, took);
        let per_slot = self.admission.service_time_per_slot();
        let mut scheduler = self.admission.lock();
        scheduler.sample(self.started, took, self.cost);
        scheduler.served_one();
        let granted = scheduler.release(self.cost.units);
        let room = self.admission.room_in(&scheduler, per_slot);
        drop(scheduler);
        self.admission.start(granted);
        if room && let Some(signal) = self.admission.room.0.get() {
            signal();
        }
    }
}

/// What the caller of [`Admission::admit`] does with its request once admission decides: run
/// it (`Ok`: its units are granted) or answer it with the status (`Err`: a lighter client's
/// request took its place). Called exactly once, never under admission's lock, on whichever
/// thread decided: the request path when there is room at once, otherwise the thread that
/// freed the units (the work runtime's, as a request finishes) or displaced it.
///
/// Why a callback rather than a task that waits for its turn: a waiting task must be polled
/// to learn of its grant, and the runtime polls tasks in the order they became ready, not in
/// the fair queue's. Under an open-model flood thousands of tasks wait to be polled, and a
/// polite client's granted request waited behind them all (measured in the two-tenant bench
/// with searches run in place on the work runtime: the polite client's p99 went from 6.5-113
/// ms to 5.8-12.4 s; `docs/degradation.md`). Started by the granting thread, the fair queue's
/// order is the order work starts in.
type Launch = Box<dyn FnOnce(Result<Admitted, Status>) + Send>;

/// An admitted request: with its whole body, and the grant that holds its units until it is
/// dropped.
struct Admitted {
    request: http::Request<Body>,
    grant: Grant,
}

/// A request read and priced (steps 2 and 3 of the module docs), ready to start.
struct Priced {
    parts: http::request::Parts,
    body: bytes::Bytes,
    cost: Cost,
    method: Method,
    client: ClientKey,
    arrived: Instant,
    deadline: Option<Instant>,
    /// Its place in the queue's count, given back when it starts or leaves.
    queued: Queued,
}

/// What waits in the scheduler: a priced request and how to start it.
struct Waiter {
    priced: Priced,
    launch: Launch,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("method", &self.priced.method)
            .field("cost", &self.priced.cost)
            .field("client", &self.priced.client)
            .finish_non_exhaustive()
    }
}

/// A request's place in the queue, from [`Admission::admit`] until its answer: dropped early
/// (its client went away), it takes the request out of the queue. Once the request runs, its
/// launch decides what dropping the answer's receiver means.
struct Place {
    admission: Arc<Admission>,
    /// Its id in the scheduler while it may still wait there.
    waiting: Option<u64>,
    give_up: Instant,
    deadline: Option<Instant>,
    client: ClientKey,
}

/// What a request is answered with.
type Answer = http::Response<Body>;

impl Place {
    /// The answer the request's launch sends on `answered`: its handler's, or its refusal.
    /// A request still waiting when its wait runs out (`max_queue_wait`, or its deadline)
    /// leaves the queue and is refused; one granted meanwhile runs, and its answer is
    /// awaited.
    async fn answer(mut self, mut answered: oneshot::Receiver<Answer>) -> Answer {
        if let Some(id) = self.waiting {
            let waited = tokio::time::timeout_at(self.give_up.into(), &mut answered).await;
            self.waiting = None;
            match waited {
                Ok(answer) => return answer_or_gone(answer),
                Err(_) if self.admission.leave(id) => {
                    return self
                        .admission
                        .timed_out(self.deadline, &self.client)
                        .into_http();
                }
                Err(_) => {} // started just as its wait ran out: its answer follows
            }
        }
        answer_or_gone(answered.await)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(id) = self.waiting.take() {
            self.admission.leave(id);
        }
    }
}

/// A launch that dropped its answer's sender without sending: the work runtime dropped the
/// request's work, which it does only when shutting down.
fn answer_or_gone(answer: Result<Answer, oneshot::error::RecvError>) -> Answer {
    answer.unwrap_or_else(|_| Status::unavailable("server is shutting down").into_http())
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

/// A request that passed step 1 and holds a place in the queue (see [`Admission::enter`]).
struct Entered<B> {
    request: http::Request<B>,
    arrived: Instant,
    deadline: Option<Instant>,
    caller: Caller,
    queued: Queued,
}

impl Admission {
    /// Step 1 of the module docs, and the standing-queue rule: the refusals that need nothing
    /// but a look at the queue, decided at once on the thread that read the request. A
    /// request that passes holds a place in the queue until it starts or is answered.
    fn enter<B>(self: &Arc<Self>, request: http::Request<B>) -> Result<Entered<B>, Status> {
        let arrived = Instant::now();
        let deadline = deadline_of(&request, arrived);
        let caller = if self.config.fair {
            Caller::of(&request)
        } else {
            Caller::unknown()
        };
        // A place is taken only while there is one: a refused arrival never counts as queued,
        // not even for the moment its refusal takes, so `Stats` and the peaks never read more
        // than `queue_depth` waiting (a transient 17 of 16 failed the degradation test).
        let depth = self.config.queue_depth;
        let took_place = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < depth).then_some(waiting + 1)
            });
        let waiting = match took_place {
            Ok(waiting) => waiting,
            // Full: a lighter client's arrival takes the place of the heaviest client's newest
            // waiter, which is answered at once; the heaviest client's own arrival is refused.
            // Either way before the body is priced. (A concurrent arrival may take the place
            // first for a moment: hence the clamps in `stats` and `take_peaks`.)
            Err(_) => {
                let displaced = self.lock().displace_for(&caller.client);
                let Some(Waiter { priced, launch }) = displaced else {
                    return Err(self.shed(ShedReason::QueueFull, deadline, &caller.client));
                };
                let status = self.shed(ShedReason::Displaced, priced.deadline, &priced.client);
                drop(priced);
                launch(Err(status));
                self.queued.fetch_add(1, Ordering::AcqRel)
            }
        };
        let queued = Queued {
            admission: Arc::clone(self),
            bytes: 0,
        };
        self.peak_queued
            .fetch_max((waiting + 1).min(depth), Ordering::Relaxed);
        if self.standing_queue_too_long() {
            return Err(self.shed(ShedReason::QueueLatency, deadline, &caller.client));
        }
        Ok(Entered {
            request,
            arrived,
            deadline,
            caller,
            queued,
        })
    }

    /// Steps 2-3 of the module docs for a request that [`Admission::enter`]ed: reads and
    /// prices it, then starts it through `launch` at once if its units are free, or queues it
    /// to be started (or displaced) through `launch` later. Returns its place, whose
    /// [`Place::answer`] waits for what `launch` answers; or the status to answer instead.
    ///
    /// The body is whole by now (`crate::net` reads it first), so this finishes without
    /// waiting, on the request path: a request enters the fair queue as it arrives.
    async fn admit<B>(
        self: &Arc<Self>,
        entered: Entered<B>,
        launch: Launch,
    ) -> Result<Place, Status>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Entered {
            request,
            arrived,
            deadline,
            caller,
            mut queued,
        } = entered;
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
                Err(_) => return Err(self.timed_out(deadline, &caller.client)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    return Err(Status::cancelled(format!("request body: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !queued.add_bytes(data.len()) {
                    return Err(self.shed(ShedReason::QueueBytes, deadline, &caller.client));
                }
                chunks.push(data);
            }
        }
        let bytes = match chunks.len() {
            0 => bytes::Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        let method = Method::of(parts.uri.path());
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
                return Err(self.shed(ShedReason::Deadline, Some(deadline), &caller.client));
            }
        }

        let priced = Priced {
            parts,
            body: bytes,
            cost,
            method,
            client: caller.client.clone(),
            arrived,
            deadline,
            queued,
        };
        let mut place = Place {
            admission: Arc::clone(self),
            waiting: None,
            give_up,
            deadline,
            client: caller.client.clone(),
        };
        // Start at once, or wait for units.
        let mut scheduler = self.lock();
        if scheduler.waiting() == 0 && scheduler.used_units + cost.units <= scheduler.limit_units {
            scheduler.take(cost.units);
            drop(scheduler);
            launch(Ok(self.grant(priced)));
            return Ok(place);
        }
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        scheduler.push(
            id,
            &caller,
            cost.units,
            cost.is_heavy(),
            Waiter { priced, launch },
        );
        scheduler.nonempty_since.get_or_insert(arrived);
        drop(scheduler);
        place.waiting = Some(id);
        Ok(place)
    }

    /// A priced request whose units were taken, admitted: counted, and given its grant.
    fn grant(self: &Arc<Self>, priced: Priced) -> Admitted {
        let Priced {
            parts,
            body,
            cost,
            method,
            client,
            arrived,
            deadline: _,
            queued,
        } = priced;
        drop(queued);
        let now = Instant::now();
        self.recorder.queue_wait(method, now - arrived);
        let serving = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.peak_in_flight.fetch_max(serving, Ordering::Relaxed);
        self.recorder.admitted(&client);
        *self.running_by_client().entry(client.clone()).or_default() += 1;
        let grant = Grant {
            admission: Arc::clone(self),
            cost,
            started: now,
            method,
            client,
        };
        let request = http::Request::from_parts(parts, Body::new(http_body_util::Full::new(body)));
        Admitted { request, grant }
    }

    /// Starts what the scheduler granted (outside its lock: starting spawns work).
    fn start(self: &Arc<Self>, granted: Vec<Waiter>) {
        for Waiter { priced, launch } in granted {
            launch(Ok(self.grant(priced)));
        }
    }

    /// Takes request `id` out of the queue if it still waits there (true), and starts what
    /// its leaving lets start.
    fn leave(self: &Arc<Self>, id: u64) -> bool {
        let (left, granted) = self.lock().cancel(id);
        self.start(granted);
        left.is_some()
    }

    fn timed_out(&self, deadline: Option<Instant>, client: &ClientKey) -> Status {
        let deadline_first = deadline.is_some_and(|d| d <= Instant::now());
        if deadline_first {
            self.shed(ShedReason::Deadline, deadline, client)
        } else {
            self.shed(ShedReason::QueueTimeout, deadline, client)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads the queue count at the moment of each refusal.
    #[derive(Debug, Default)]
    struct QueuedAtRefusal {
        admission: std::sync::OnceLock<std::sync::Weak<Admission>>,
        seen: Mutex<Vec<usize>>,
    }

    impl Recorder for QueuedAtRefusal {
        fn shed(&self, _: ShedReason, _: &ClientKey) {
            if let Some(admission) = self.admission.get().and_then(std::sync::Weak::upgrade) {
                let queued = admission.queued.load(Ordering::Relaxed);
                self.seen.lock().expect("lock").push(queued);
            }
        }
        fn admitted(&self, _: &ClientKey) {}
        fn queue_wait(&self, _: Method, _: Duration) {}
        fn service_time(&self, _: Method, _: Duration) {}
    }

    #[test]
    fn a_refused_arrival_never_counts_as_queued() {
        let recorder = Arc::new(QueuedAtRefusal::default());
        let admission = Admission::new(
            Config {
                queue_depth: 2,
                ..Config::default()
            },
            recorder.clone(),
        );
        recorder
            .admission
            .set(Arc::downgrade(&admission))
            .expect("set once");
        let request = || http::Request::builder().body(()).expect("request");
        let first = admission.enter(request()).expect("room for the first");
        let second = admission.enter(request()).expect("room for the second");
        assert!(
            admission.enter(request()).is_err(),
            "the third finds the queue full"
        );
        // Stats and the peaks, read while a refusal is made (as a Stats call during a flood
        // does), never see more than the depth: the refused request never took a place.
        assert_eq!(*recorder.seen.lock().expect("lock"), vec![2]);
        assert_eq!(admission.stats().queued, 2);
        drop((first, second));
        assert_eq!(admission.queued.load(Ordering::Relaxed), 0);
        assert_eq!(admission.take_peaks().1, 2);
    }

    /// A search request from `ip` on its own connection.
    fn search_from(ip: u8) -> http::Request<Body> {
        let mut request = http::Request::builder()
            .uri("/vecrig.v1.VectorIndex/Search")
            .body(Body::empty())
            .expect("request");
        request.extensions_mut().insert(Caller {
            client: ClientKey::Address(std::net::Ipv4Addr::new(127, 0, 0, ip).into()),
            weight: 1,
            connection: u64::from(ip),
        });
        request
    }

    /// One slot and two places, all held by 127.0.0.1; then 127.0.0.2 arrives. What became of
    /// the newcomer, and of the heavy client's two waiters.
    async fn a_light_client_arrives_at_a_full_queue(fair: bool) -> (bool, Vec<ShedReason>) {
        #[derive(Debug, Default)]
        struct Reasons(Mutex<Vec<ShedReason>>);
        impl Recorder for Reasons {
            fn shed(&self, reason: ShedReason, _: &ClientKey) {
                self.0.lock().expect("lock").push(reason);
            }
            fn admitted(&self, _: &ClientKey) {}
            fn queue_wait(&self, _: Method, _: Duration) {}
            fn service_time(&self, _: Method, _: Duration) {}
        }
        let reasons = Arc::new(Reasons::default());
        let admission = Admission::new(
            Config {
                concurrency_limit: 1,
                queue_depth: 2,
                fair,
                ..Config::default()
            },
            reasons.clone(),
        );
        // Enters and prices a request; its launch tells the receiver what became of it.
        let enter_and_admit = |request| {
            let (decided, decision) = oneshot::channel();
            let launch: Launch = Box::new(move |outcome| drop(decided.send(outcome)));
            let place = admission
                .enter(request)
                .map(|entered| admission.admit(entered, launch));
            async move { Ok::<_, Status>((place?.await?, decision)) }
        };
        let (_first, running) = enter_and_admit(search_from(1)).await.expect("entered");
        let _running = running
            .await
            .expect("decided at once")
            .map_err(|_| "refused")
            .expect("the slot");
        let mut waiters = Vec::new();
        for _ in 0..2 {
            waiters.push(enter_and_admit(search_from(1)).await.expect("a place"));
        }
        assert_eq!(
            admission.lock().waiting(),
            2,
            "both wait, in the fair queue"
        );
        // A displaced waiter is answered at once; the others wait for the slot.
        let newcomer = admission.enter(search_from(2)).is_ok();
        let reasons = reasons.0.lock().expect("lock").clone();
        let answered = waiters
            .iter_mut()
            .filter_map(|(_, decision)| decision.try_recv().ok())
            .filter(Result::is_err)
            .count();
        let displaced = reasons.iter().filter(|r| **r == ShedReason::Displaced);
        assert_eq!(
            answered,
            displaced.count(),
            "each displaced waiter is told so"
        );
        (newcomer, reasons)
    }

    #[tokio::test]
    async fn fair_admission_lets_a_light_client_displace_the_heavy_clients_newest_waiter() {
        let (newcomer, reasons) = a_light_client_arrives_at_a_full_queue(true).await;
        assert!(newcomer, "the light client takes a place");
        assert_eq!(reasons, vec![ShedReason::Displaced]);
    }

    #[tokio::test]
    async fn fifo_admission_refuses_whoever_finds_the_queue_full() {
        let (newcomer, reasons) = a_light_client_arrives_at_a_full_queue(false).await;
        assert!(
            !newcomer,
            "first come, first served: the newcomer is refused"
        );
        assert_eq!(reasons, vec![ShedReason::QueueFull]);
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
}
