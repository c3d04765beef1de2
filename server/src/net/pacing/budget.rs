//! The server-wide side of pacing: the shared excess budget, the connections paused on it
//! (woken when admission has room), and the figures.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::charge::Charge;
use super::pause::Pause;
use super::price::AnswerPrice;
use super::settings::Config;
#[cfg(test)]
use crate::cpu::CpuSplit;
use crate::layers::metrics::PacingFigures;

/// How often, while connections are paused with work waiting, the pacer asks admission
/// whether it has room ([`Pacer::tend_room`]); also how long a wake-up may go unread before
/// the next connection is woken instead.
pub(super) const ROOM_TICK: Duration = Duration::from_millis(1);

/// The server-wide side of pacing: the shared excess budget, the connections paused on it,
/// and the figures.
#[derive(Debug)]
pub struct Pacer {
    pub(super) config: Config,
    epoch: Instant,
    state: Mutex<Shared>,
    pub(super) charged: AtomicU64,
    pub(super) pauses: AtomicU64,
    woken_for_room: AtomicU64,
    /// Requests served so far (with `charged`: the answers the request path gave).
    served: AtomicU64,
    /// Connections opened so far (their ids).
    pub(super) connections: AtomicU64,
    /// A connection was woken for room and has not read yet.
    pub(super) room_pending: std::sync::atomic::AtomicBool,
    /// Told when a connection is listed as paused with work waiting.
    listed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Shared {
    /// The excess budget of shed work as a virtual clock (nanoseconds since `epoch`): each
    /// excess answer moves it on by 1 / `excess_rate` from no earlier than now, and each
    /// served request moves it back by `shed_per_served` of those; once it runs more than a
    /// second (the burst) ahead of now, whoever draws on it waits for the difference.
    clock_ns: u64,
    /// The same for every other cheap answer (health, Stats, reflection, auth and validation
    /// errors), which served requests do not pay for: work served for some clients must not
    /// fund a flood of probes or wrong tokens from another, or such a flood would take the
    /// searches' credits and the CPU the searches need.
    cheap_clock_ns: u64,
    /// The CPU ceiling as a virtual clock: each excess answer of either kind moves it on by
    /// its price (the request path's CPU per answer) over [`Config::excess_cpu`]; nothing
    /// moves it back.
    cpu_clock_ns: u64,
    /// What an answer costs the request path.
    price: AnswerPrice,
    /// Connections paused on the budget, longest paused first.
    paused: VecDeque<Weak<Pause>>,
}

impl Pacer {
    /// A pacer with these settings.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            epoch: Instant::now(),
            state: Mutex::new(Shared {
                clock_ns: 0,
                cheap_clock_ns: 0,
                cpu_clock_ns: 0,
                price: AnswerPrice::new(),
                paused: VecDeque::new(),
            }),
            charged: AtomicU64::new(0),
            served: AtomicU64::new(0),
            pauses: AtomicU64::new(0),
            woken_for_room: AtomicU64::new(0),
            room_pending: std::sync::atomic::AtomicBool::new(false),
            listed: tokio::sync::Notify::new(),
            connections: AtomicU64::new(0),
        })
    }

    /// Fixes the price of an answer (tests: the process's real CPU says nothing about a
    /// paused clock).
    #[cfg(test)]
    pub(super) fn fix_price(&self, price: Duration) {
        let mut shared = self.lock();
        shared.price.ns = price.as_nanos() as f64;
        shared.price.fixed = true;
    }

    /// Reads the CPU from `clock` instead of the process, as if on one CPU (tests: CPU they
    /// spend on paper, so that other tests running beside them do not move it).
    #[cfg(test)]
    pub(super) fn fake_cpu(&self, clock: fn() -> CpuSplit) {
        let mut shared = self.lock();
        shared.price.cpu = clock;
        shared.price.cpus = 1.0;
    }

    /// Current figures.
    pub fn stats(&self) -> PacingFigures {
        // The listed connections are taken out of the shared lock before each one's own lock
        // is taken: `Connection::charge` takes them the other way round.
        let (price, listed) = {
            let shared = self.lock();
            let listed: Vec<Arc<Pause>> = shared.paused.iter().filter_map(Weak::upgrade).collect();
            let p = &shared.price;
            let nanos = |ns: f64| Duration::from_nanos(ns.max(0.0) as u64);
            let price = (
                nanos(p.ns),
                nanos(p.served_ns.unwrap_or(0.0)),
                nanos(p.spent_on_cheap_ns),
            );
            (price, listed)
        };
        let (answer_cpu, served_cpu, cheap_cpu_total) = price;
        let paused = listed
            .iter()
            .filter(|c| c.lock().paused_until.is_some())
            .count() as u64;
        PacingFigures {
            charged: self.charged.load(Ordering::Relaxed),
            pauses: self.pauses.load(Ordering::Relaxed),
            woken_for_room: self.woken_for_room.load(Ordering::Relaxed),
            paused,
            answer_cpu,
            served_cpu,
            cheap_cpu_total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cheap answers and served requests since start.
    fn counts(&self) -> (u64, u64) {
        (
            self.charged.load(Ordering::Relaxed),
            self.served.load(Ordering::Relaxed),
        )
    }

    /// Takes one excess answer from the shared budget of its kind: `None` while the budget
    /// lasts, or the moment the budget will have refilled for it.
    pub(super) fn draw_excess(&self, now: Instant, charge: Charge) -> Option<Instant> {
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let step_ns = (1e9 / self.config.excess_rate) as u64;
        // One second of burst: the clock may run that far ahead of now before anyone waits,
        // so a short spike of refusals is answered at full speed.
        let burst_ns = 1_000_000_000u64;
        let (cheap, served) = self.counts();
        let mut shared = self.lock();
        let clock = match charge {
            Charge::Shed => &mut shared.clock_ns,
            Charge::Cheap => &mut shared.cheap_clock_ns,
        };
        *clock = (*clock).max(now_ns) + step_ns;
        let mut ahead = *clock - now_ns;
        if self.config.excess_cpu > 0.0 {
            shared.price.sample(now, cheap, served);
            let cpu_step_ns = (shared.price.ns / self.config.excess_cpu) as u64;
            shared.cpu_clock_ns = shared.cpu_clock_ns.max(now_ns) + cpu_step_ns;
            ahead = ahead.max(shared.cpu_clock_ns - now_ns);
        }
        (ahead > burst_ns).then(|| now + Duration::from_nanos(ahead - burst_ns))
    }

    /// A request was served: the budget earns [`Config::shed_per_served`] excess answers.
    /// Earnings only pay off debt (the clock never goes back past now), so a quiet spell
    /// saves nothing beyond the usual burst.
    /// It also samples the price's served part (see [`AnswerPrice`]).
    pub(super) fn credit_served(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        let step_ns = 1e9 / self.config.excess_rate;
        let credit_ns = (step_ns * self.config.shed_per_served) as u64;
        let priced = self.config.excess_cpu > 0.0;
        if credit_ns == 0 && !priced {
            return;
        }
        let now = Instant::now();
        let now_ns = now.saturating_duration_since(self.epoch).as_nanos() as u64;
        let (cheap, served) = self.counts();
        let mut shared = self.lock();
        if priced {
            shared.price.sample(now, cheap, served);
        }
        shared.clock_ns = shared.clock_ns.saturating_sub(credit_ns).max(now_ns);
    }

    /// Lists a connection paused with work waiting, for [`Pacer::room`]; each connection is
    /// listed once at most, so the list is no longer than the connections open.
    pub(super) fn list_for_room(&self, pause: &Arc<Pause>) {
        let mut shared = self.lock();
        shared.paused.push_back(Arc::downgrade(pause));
        drop(shared);
        self.listed.notify_one();
    }

    /// Keeps admission fed while connections are paused with work waiting: every
    /// [`ROOM_TICK`], if `has_room` says admission has room, wakes the connection paused
    /// longest. Runs until the server stops (spawn it).
    ///
    /// Why: [`Pacer::room`] is called as admitted requests finish. If a wake-up brings no
    /// admitted work (its connection closed, it brought part of a request, or only requests
    /// that were refused), nothing finishes, nobody calls it again, and the slots stay idle
    /// until the pauses run out (under CoDel settings, most of the CPU). A wake-up not read
    /// within a tick does not hold the next one back.
    pub async fn tend_room(self: Arc<Self>, has_room: impl Fn() -> bool) {
        loop {
            let waiting = !self.lock().paused.is_empty();
            if !waiting {
                self.listed.notified().await;
                continue;
            }
            tokio::time::sleep(ROOM_TICK).await;
            if has_room() {
                self.room_pending.store(false, Ordering::Release);
                self.room();
            }
        }
    }

    /// Admission has room: wakes the connection paused longest, if any, so that its waiting
    /// requests can fill the room. Called as admitted requests finish.
    ///
    /// One at a time: until the woken connection has read, the room may already be spoken
    /// for, and waking more would only bring requests to refuse.
    pub fn room(&self) {
        if self.room_pending.load(Ordering::Acquire) {
            return;
        }
        loop {
            let next = self.lock().paused.pop_front();
            let Some(next) = next else { return };
            let Some(pause) = next.upgrade() else {
                continue;
            };
            if pause.resume_for_room() {
                self.room_pending.store(true, Ordering::Release);
                self.woken_for_room.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}
