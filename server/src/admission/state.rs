//! [`Admission`]: the shared state (the scheduler, the counts, the figures), and the units a
//! request holds from the moment it is priced until it finishes ([`Queued`], [`Priced`],
//! [`Waiter`], [`Grant`]). They live together because each holds the other: admission's
//! scheduler holds waiters, and what a waiter holds gives its place back to admission.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use super::cost::{Cost, UNITS_PER_SLOT};
use super::figures::{AdmissionStats, ClientLoad, QueueState};
use super::recorder::{Recorder, ShedReason};
use super::room::{RoomSignal, RoomSignalCell};
use super::scheduler::{Scheduler, Window};
use super::settings::Config;
use crate::caller::ClientKey;
use crate::method::Method;

/// Live admission figures, shared between the layer, `Stats` and the metrics endpoint.
#[derive(Debug)]
pub struct Admission {
    pub(super) config: Config,
    pub(super) scheduler: Mutex<Scheduler<Waiter>>,
    pub(super) in_flight: AtomicUsize,
    pub(super) queued: AtomicUsize,
    pub(super) queued_bytes: AtomicUsize,
    pub(super) shed_total: AtomicU64,
    /// High-water marks of `in_flight` and `queued` since the last [`Admission::take_peaks`].
    pub(super) peak_in_flight: AtomicUsize,
    pub(super) peak_queued: AtomicUsize,
    /// Exponentially weighted mean service time of one slot of cost, in nanoseconds.
    pub(super) service_ns_per_slot: AtomicU64,
    pub(super) recorder: Arc<dyn Recorder>,
    /// Told when the queue has room again (see [`Admission::on_room`]).
    pub(super) room: RoomSignalCell,
    /// Requests running now, by client (only clients with some).
    pub(super) running: Mutex<HashMap<ClientKey, u64>>,
    /// The share of its `ef` a search runs with now (an `f64`'s bits; 1 unless browning out,
    /// see `brownout`).
    pub(super) search_breadth: AtomicU64,
}

impl crate::service::LoadFigures for Admission {
    fn load(&self) -> crate::service::RequestLoad {
        let stats = self.stats();
        crate::service::RequestLoad {
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
            room: RoomSignalCell::default(),
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

    pub(super) fn running_by_client(&self) -> MutexGuard<'_, HashMap<ClientKey, u64>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `client` has requests waiting in the queue now: it asks for more than its
    /// share, so its connections are the flood of an overload (`net::seating` seats a new
    /// connection of such a client apart from the old ones).
    pub fn is_waiting(&self, client: &ClientKey) -> bool {
        self.lock().places_of(client) > 0
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

    pub(super) fn room_in(&self, scheduler: &Scheduler<Waiter>, per_slot: Duration) -> bool {
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
    pub(super) fn queued_now(&self) -> usize {
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

    pub(super) fn lock(&self) -> MutexGuard<'_, Scheduler<Waiter>> {
        // The scheduler's state stays consistent across a panic elsewhere (none of its
        // methods panic), so a poisoned lock is still usable.
        self.scheduler.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The expected wait for a request arriving now, from the cost queued and the measured
    /// service time (zero until something has been measured).
    pub(super) fn expected_wait(&self) -> Duration {
        let per_slot = self.service_time_per_slot();
        self.lock().expected_wait(per_slot)
    }

    pub(super) fn record_service_time(&self, cost: Cost, took: Duration) {
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

    pub(super) fn shed(
        &self,
        reason: ShedReason,
        deadline: Option<Instant>,
        client: &ClientKey,
    ) -> Status {
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
    pub(super) fn standing_queue_too_long(&self) -> bool {
        let Some(target) = self.config.queue_target else {
            return false;
        };
        let per_slot = self.service_time_per_slot();
        self.lock()
            .too_long_a_wait(Instant::now(), per_slot, target, self.config.queue_interval)
    }

    /// A priced request whose units were taken, admitted: counted, and given its grant.
    pub(super) fn grant(self: &Arc<Self>, priced: Priced) -> Admitted {
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
    pub(super) fn start(self: &Arc<Self>, granted: Vec<Waiter>) {
        for Waiter { priced, launch } in granted {
            launch(Ok(self.grant(priced)));
        }
    }
}

/// Units held by a running request; released (and the next waiters started) on drop.
pub(super) struct Grant {
    pub(super) admission: Arc<Admission>,
    pub(super) cost: Cost,
    pub(super) started: Instant,
    pub(super) method: Method,
    pub(super) client: ClientKey,
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
/// polite client's granted request would wait behind them all (`docs/overload.md`, "What we
/// tried").
/// Started by the granting thread, the fair queue's order is the order work starts in.
pub(super) type Launch = Box<dyn FnOnce(Result<Admitted, Status>) + Send>;

/// An admitted request: with its whole body, and the grant that holds its units until it is
/// dropped.
pub(super) struct Admitted {
    pub(super) request: http::Request<Body>,
    pub(super) grant: Grant,
}

/// A request read and priced (steps 2 and 3 of the module docs), ready to start.
pub(super) struct Priced {
    pub(super) parts: http::request::Parts,
    pub(super) body: bytes::Bytes,
    pub(super) cost: Cost,
    pub(super) method: Method,
    pub(super) client: ClientKey,
    pub(super) arrived: Instant,
    pub(super) deadline: Option<Instant>,
    /// Its place in the queue's count, given back when it starts or leaves.
    pub(super) queued: Queued,
}

/// What waits in the scheduler: a priced request and how to start it.
pub(super) struct Waiter {
    pub(super) priced: Priced,
    pub(super) launch: Launch,
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

/// Counts one request as queued (and its body's bytes) for as long as it lives.
pub(super) struct Queued {
    pub(super) admission: Arc<Admission>,
    pub(super) bytes: usize,
}

impl Queued {
    pub(super) fn add_bytes(&mut self, n: usize) -> bool {
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
