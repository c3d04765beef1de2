//! Pacing: a connection that keeps asking for answers that are not admitted work (refusals,
//! health checks, `Stats`, reflection, auth and decode errors) is read slowly, so that a flood
//! of cheap calls costs its sender, not the server.
//!
//! Why: a refusal is cheap, but not free. A closed-loop client gets each refusal back at once
//! and sends the next request at once, so past a point the server's CPU goes to reading,
//! pricing and refusing requests, and the index work that admission protects gets nothing
//! (measured: a 64 x 64 stream flood on a one-CPU server left 1% of its goodput). No answer
//! can be cheap enough against a sender that is not slowed down; not reading is free: the
//! peer's requests then wait in its own buffers, held back by TCP and HTTP/2 flow control.
//!
//! How:
//! - Every answer that is not the result of admitted work is a *cheap answer*, and is charged
//!   to its connection by [`PacingLayer`] (outermost, so refusals from every layer count).
//! - Each connection has an allowance ([`Config::connection_rate`] answers a second, with a
//!   burst): a kubelet probe, the loadgen's monitor, or a polite client refused now and then
//!   never exceeds it and is never paced. A connection that is paced loses its allowance
//!   until it has asked for no more than it for a while, so that the allowances of a flood's
//!   many connections do not add up to a budget that grows with every connection opened.
//! - Beyond its allowance a connection draws on one budget shared by the whole server
//!   ([`Config::excess_rate`]). While that budget lasts nothing is paused, so a moderate
//!   overload (a few times capacity) is shed at full speed. Once it is spent, a connection that
//!   draws on it is not read again until the budget has refilled for its charge (at most
//!   [`Config::max_pause`]), and its reads are then limited ([`SHED_READ_BYTES`] after a
//!   refusal of work, [`PACED_READ_BYTES`] after other cheap answers), so it brings a handful
//!   of requests at a time rather than everything it has buffered. The total
//!   rate of excess answers is so held near `excess_rate`, however many connections flood.
//! - Every answer that is admitted work earns the budget [`Config::shed_per_served`] more
//!   excess refusals of work (RESOURCE_EXHAUSTED; other cheap answers, such as health checks
//!   or wrong tokens, have a budget of the same `excess_rate` that nothing earns into): an
//!   open-model overload of a few times capacity (about 1 + that many times) is refused at
//!   full speed whatever the cost of a search, since what refusing costs then stays a small
//!   fraction of what serving costs. Only beyond it, or under a
//!   flood of calls that do no work at all, are connections paused.
//! - Whatever the rates above allow, excess answers may cost the request path no more than
//!   [`Config::excess_cpu`] (a share of the CPUs, `--pace-cpu-share`): each is priced at what
//!   a cheap answer costs the request path, measured as the server runs ([`crate::cpu`];
//!   the serving CPU less what the requests served meanwhile cost, see [`AnswerPrice`]), and once
//!   that budget is spent too, whoever draws on it is paused the same way. The rates count
//!   answers; the CPU is what index work loses to them, and a refusal's price depends on the
//!   machine, TLS, the size of requests and how the flood reads (measured: at three refusals
//!   per served ef-512 search, a 64 x 64 closed-loop flood left index work 0.64 of its CPU).
//! - When admission has room again (its queue drained below half), it wakes the connection
//!   paused longest ([`Pacer::room`]), so pacing never leaves slots idle while a paced client
//!   has work waiting; it reads [`ROOM_READ_BYTES`] at once. And since a wake-up may bring no
//!   admitted work (so nothing finishes to call for the next), [`Pacer::tend_room`] asks
//!   admission every millisecond while connections wait paused.
//!
//! Admitted work is never charged: a client whose requests are served pays with the work.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use std::net::IpAddr;

use tokio::time::Instant;
use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use crate::caller::{Caller, ClientKey};
use crate::cpu::CpuSplit;
use crate::method::Method;

/// Bytes a paced connection may read per wake-up when its last charge was a cheap answer that
/// is not a refusal of work (health, `Stats`, reflection, errors): a few such calls. Small,
/// because a connection whose debt is deeper than [`Config::max_pause`] is read again after
/// that pause whatever the shared budget says, so the connections of one flood together
/// still get `connections x requests per read / max_pause` answers a second: with 1 KiB reads
/// and 500 ms pauses, 64 connections got 3,400 health checks a second (about 29 in each
/// 1 KiB) against a budget of 2,200.
pub const PACED_READ_BYTES: usize = 256;

/// Bytes a paced connection may read per wake-up when its last charge was a refusal of work
/// (RESOURCE_EXHAUSTED): about ten searches of 64 dimensions. A refusal's cost is mostly per
/// wake-up (the pause's timer, the read, the task wake-ups, a write of its own), not per
/// request, so a paced flood of searches read a few at a time is refused at a fraction of
/// the cost of reading less than one search per wake-up, which [`PACED_READ_BYTES`] did
/// (measured 2026-12-03, `tests/fairness.rs`, 4 runs each interleaved: the 64 x 64 flood
/// kept 0.68-0.73 of capacity with 256-byte reads, 0.75-0.79 with 4 KiB). The floor above is
/// no concern here: searches are large, and refusals of work are also held by admission's
/// room signal.
pub const SHED_READ_BYTES: usize = 4096;

/// Bytes a connection woken for room ([`Pacer::room`]) may read at once: a handful of
/// searches, so that one wake-up refills the queue's room. With [`PACED_READ_BYTES`] (less
/// than one search's frames) a wake-up brought part of a request, and under CoDel settings
/// the queue ran dry between wake-ups: a 128 x 100 flood left the one CPU 70% idle.
pub const ROOM_READ_BYTES: usize = 4096;

/// The most any limited read takes (the size of the socket's buffer for them).
pub const MAX_LIMITED_READ_BYTES: usize = max_bytes(
    max_bytes(PACED_READ_BYTES, SHED_READ_BYTES),
    ROOM_READ_BYTES,
);

const fn max_bytes(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// How often, while connections are paused with work waiting, the pacer asks admission
/// whether it has room ([`Pacer::tend_room`]); also how long a wake-up may go unread before
/// the next connection is woken instead.
const ROOM_TICK: Duration = Duration::from_millis(1);

/// How long a connection stays paced (reads limited) after its last charge beyond allowance.
const PACED_FOR: Duration = Duration::from_secs(1);

/// The pause after each limited read of a paced connection. The requests of a read are
/// answered (and charged) by tasks that run after the read; without a gap, the connection's
/// driver would read on, a little at a time, until its socket is drained, before the first
/// charge could pause it.
const PACED_READ_GAP: Duration = Duration::from_millis(1);

/// The pacing flags (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Cheap answers (refusals, health, Stats, reflection, errors) one connection may get per
    /// second before it draws on the server's shared excess budget.
    #[arg(long, env = "VECRIG_PACE_CONNECTION_RATE", default_value_t = 50.0)]
    pub pace_connection_rate: f64,
    /// Cheap answers per second and per CPU, beyond the connections' allowances, that the
    /// server gives before the connections asking for more are read slowly (0: no pacing).
    /// A refusal costs some 30-50 us of CPU here (request path, HTTP/2 and the kernel's
    /// share), so the default spends 2-3% of each CPU on answers that nothing else pays for.
    /// (At 3,000 a second, a 64 x 64 closed-loop flood kept 0.71-0.81 of capacity; at 500,
    /// 0.83-1.0: `tests/collapse.rs`.)
    #[arg(long, env = "VECRIG_PACE_EXCESS_RATE", default_value_t = 500.0)]
    pub pace_excess_rate: f64,
    /// Further cheap answers each served request adds to the shared budget, so that offered
    /// load up to about 1 + this many times capacity is refused at full speed (a refusal
    /// costs a few percent of a search).
    #[arg(long, env = "VECRIG_PACE_SHED_PER_SERVED", default_value_t = 3.0)]
    pub pace_shed_per_served: f64,
    /// Share of the CPUs that excess cheap answers may cost the request path, whatever the
    /// rates above allow (each priced at the measured request-path CPU per cheap answer); beyond
    /// it, connections asking for more are read slowly (0: no ceiling).
    /// (0.15: a closed-loop flood's refusals may then take at most that much, so goodput can
    /// stay above 0.8 of capacity; an open-model overload's refusals, at some 30 us each
    /// unpaced, fit in it up to about 2.5x capacity on one CPU.)
    #[arg(long, env = "VECRIG_PACE_CPU_SHARE", default_value_t = 0.15)]
    pub pace_cpu_share: f64,
    /// Longest a paced connection goes unread at a time (below the keepalive timeout, so that
    /// a paced peer's ping answers are read in time).
    #[arg(long, env = "VECRIG_PACE_MAX_PAUSE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub pace_max_pause: Duration,
}

/// Pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Cheap answers a connection may get per second without being paced (also its burst).
    pub connection_rate: f64,
    /// Cheap answers per second (the whole server's) beyond the allowances before connections
    /// are paused; 0 turns pacing off.
    pub excess_rate: f64,
    /// Excess answers each served request adds to the shared budget.
    pub shed_per_served: f64,
    /// CPU seconds a second (the whole server's) that excess answers may cost the request
    /// path; 0: no ceiling.
    pub excess_cpu: f64,
    /// Longest pause.
    pub max_pause: Duration,
}

impl Config {
    /// Whether pacing is on.
    pub fn enabled(&self) -> bool {
        self.excess_rate > 0.0
    }
}

impl TryFrom<&Args> for Config {
    type Error = String;

    fn try_from(args: &Args) -> Result<Self, String> {
        let finite = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("--{name} must be a non-negative number, got {v}"))
            }
        };
        Ok(Self {
            connection_rate: finite("pace-connection-rate", args.pace_connection_rate)?,
            excess_rate: finite("pace-excess-rate", args.pace_excess_rate)?
                * crate::process::available_cpus() as f64,
            shed_per_served: finite("pace-shed-per-served", args.pace_shed_per_served)?,
            excess_cpu: match finite("pace-cpu-share", args.pace_cpu_share)? {
                share if share <= 1.0 => share * crate::process::available_cpus() as f64,
                share => return Err(format!("--pace-cpu-share must be at most 1, got {share}")),
            },
            max_pause: args.pace_max_pause,
        })
    }
}

/// The server-wide side of pacing: the shared excess budget, the connections paused on it,
/// and the figures.
#[derive(Debug)]
pub struct Pacer {
    config: Config,
    epoch: Instant,
    state: Mutex<Shared>,
    charged: AtomicU64,
    pauses: AtomicU64,
    woken_for_room: AtomicU64,
    /// Requests served so far (with `charged`: the answers the request path gave).
    served: AtomicU64,
    /// Connections opened so far (their ids).
    connections: AtomicU64,
    /// A connection was woken for room and has not read yet.
    room_pending: std::sync::atomic::AtomicBool,
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
    /// fund a flood of probes or wrong tokens from another (measured: the searches' credits
    /// let a 64 x 64 health-check flood take 6,000-7,000 answers a second, and the searches
    /// beside it fell to 0.72-0.86 of their capacity).
    cheap_clock_ns: u64,
    /// The CPU ceiling as a virtual clock: each excess answer of either kind moves it on by
    /// its price (the request path's CPU per answer) over [`Config::excess_cpu`]; nothing
    /// moves it back.
    cpu_clock_ns: u64,
    /// What an answer costs the request path.
    price: AnswerPrice,
    /// Connections paused on the budget, longest paused first.
    paused: VecDeque<Weak<Connection>>,
}

/// What a cheap answer (a refusal, a health check) costs the request path, measured: the CPU
/// that is not index work, less what the requests served meanwhile cost it, over the cheap
/// answers given meanwhile.
///
/// Why two parts: a served request's request path (HTTP/2, decoding, the hand-off to the
/// work threads and back, the answer) costs several times a refusal's (measured on one CPU:
/// about 130 us against 30-80 us). Pricing every answer alike, as a first version did,
/// charged each refusal under a flood at about 100 us, so the CPU ceiling paused connections
/// at a fraction of the refusals it was set to allow. The served part is learned where few
/// answers are cheap and the server is busy (at capacity, before a flood), and taken out where
/// many are cheap.
///
/// Why busy: on a server that is mostly idle, the serving CPU of a sample is mostly what the
/// process spends whatever it serves (timers, wake-ups from idle, scrapes), shared out over
/// the few requests of the sample. A polite client's 90 searches a second priced the served
/// part at some 300 us against 100-120 us at capacity, and under the flood that followed, the
/// refusals' share of the serving CPU came out negative: each refusal was priced at the 5 us
/// floor where it cost about 22 us, and the CPU ceiling let through four times what it was
/// set to (measured 2026-12-03, `tests/fairness.rs`: `vecrig_answer_cpu_seconds` 5-17 us,
/// about 6,000 refusals a second at `--pace-cpu-share 0.05`).
#[derive(Debug)]
struct AnswerPrice {
    /// The last sample: when (`None` until the first charge or served request), the process's
    /// CPU then, and the cheap answers and served requests counted then.
    at: Option<Instant>,
    cpu_then: CpuSplit,
    cheap: u64,
    served: u64,
    /// Request-path nanoseconds per served request, smoothed; `None` until a sample with few
    /// cheap answers has measured it (until then, cheap answers are priced at the blend of
    /// both, which errs high: more pacing, never less).
    served_ns: Option<f64>,
    /// Nanoseconds per cheap answer, smoothed.
    ns: f64,
    /// Estimated CPU spent on cheap answers since start (price x answers, sample by sample).
    spent_on_cheap_ns: f64,
    /// Where the process's CPU is read from (tests: clocks they move themselves).
    cpu: fn() -> CpuSplit,
    /// The CPUs the process may run on (what "busy" is a share of).
    cpus: f64,
    /// Set by tests: never re-measured.
    fixed: bool,
}

/// The price assumed before anything is measured: a refusal's on this machine, rounded up.
const FIRST_PRICE: Duration = Duration::from_micros(50);

/// How often the price is re-measured while connections draw on the budget.
const PRICE_EVERY: Duration = Duration::from_millis(250);

/// The highest price believed: beyond it, a sample measured something else the process did
/// (a snapshot, start-up), not answers.
const MAX_PRICE: Duration = Duration::from_millis(1);

/// The lowest price believed for a cheap answer: below it, the served part was over-estimated
/// in that sample (a refusal costs at least its HTTP/2 frames, a few microseconds).
const MIN_PRICE: Duration = Duration::from_micros(5);

/// Fewest answers a sample must span to re-price (fewer say more about idle CPU than answers).
const PRICE_MIN_ANSWERS: u64 = 32;

/// A sample measures the served part when at most this share of its answers were cheap.
const SERVED_SAMPLE_CHEAP_SHARE: f64 = 0.1;

/// ...and when the process was busy for at least this share of its CPUs (see [`AnswerPrice`]).
const SERVED_SAMPLE_BUSY_SHARE: f64 = 0.5;

impl AnswerPrice {
    fn new() -> Self {
        Self {
            at: None,
            cpu_then: CpuSplit {
                index_s: 0.0,
                serving_s: 0.0,
            },
            cheap: 0,
            served: 0,
            served_ns: None,
            ns: FIRST_PRICE.as_nanos() as f64,
            spent_on_cheap_ns: 0.0,
            cpu: crate::cpu::split,
            cpus: crate::process::available_cpus() as f64,
            fixed: false,
        }
    }

    /// Re-measures the price if the last sample is old enough and spans enough answers;
    /// `cheap` and `served` are the counts since start.
    fn sample(&mut self, now: Instant, cheap: u64, served: u64) {
        if self.fixed {
            return;
        }
        let Some(at) = self.at else {
            self.restart(now, (self.cpu)(), cheap, served);
            return;
        };
        let elapsed = now.saturating_duration_since(at);
        if elapsed < PRICE_EVERY {
            return;
        }
        let new_cheap = cheap.saturating_sub(self.cheap);
        let new_served = served.saturating_sub(self.served);
        if new_cheap + new_served < PRICE_MIN_ANSWERS {
            return;
        }
        let cpu = (self.cpu)();
        let then = self.cpu_then;
        // Whole nanoseconds, as the clocks count them.
        let spent = ((cpu.serving_s - then.serving_s).max(0.0) * 1e9).round();
        let busy = (cpu.serving_s + cpu.index_s - then.serving_s - then.index_s).max(0.0)
            / (elapsed.as_secs_f64() * self.cpus);
        let (c, s) = (new_cheap as f64, new_served as f64);
        let max = MAX_PRICE.as_nanos() as f64;
        if spent > max * (c + s) {
            // More CPU than any answer costs: the window measured something else the process
            // did (start-up's preload, a snapshot), so it prices nothing.
            self.restart(now, cpu, cheap, served);
            return;
        }
        // Half the weight to the newest sample: a flood's price settles within a second.
        let smooth = |old: f64, new: f64| 0.5 * old + 0.5 * new;
        if c <= SERVED_SAMPLE_CHEAP_SHARE * (c + s) && busy >= SERVED_SAMPLE_BUSY_SHARE {
            // Mostly served, on a busy server: what a served request costs, less the few
            // cheap answers.
            let sampled = ((spent - c * self.ns).max(0.0) / s).min(max);
            self.served_ns = Some(self.served_ns.map_or(sampled, |old| smooth(old, sampled)));
        }
        if new_cheap >= PRICE_MIN_ANSWERS {
            // Never above the blend of all answers: a refusal costs the request path less
            // than a served request does, so a residue beyond the blend says the served
            // part's estimate was low (the served path can cost more under load than at
            // capacity), not that refusals got dearer.
            let blend = spent / (c + s);
            let sampled = match self.served_ns {
                Some(served_ns) => ((spent - s * served_ns) / c).min(blend),
                None => blend,
            }
            .clamp(MIN_PRICE.as_nanos() as f64, max);
            self.ns = smooth(self.ns, sampled);
        }
        self.spent_on_cheap_ns += c * self.ns;
        self.restart(now, cpu, cheap, served);
    }

    /// The next sample starts here.
    fn restart(&mut self, now: Instant, cpu: CpuSplit, cheap: u64, served: u64) {
        self.at = Some(now);
        self.cpu_then = cpu;
        self.cheap = cheap;
        self.served = served;
    }
}

/// Pacing figures since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacerStats {
    /// Cheap answers charged to connections.
    pub charged: u64,
    /// Times a connection was paused.
    pub pauses: u64,
    /// Paused connections woken early because admission had room.
    pub woken_for_room: u64,
    /// Connections paused now with work that room would let in.
    pub paused: u64,
    /// The request path's CPU per cheap answer, as last measured (what the CPU ceiling
    /// prices an excess answer at).
    pub answer_cpu: Duration,
    /// The request path's CPU per served request, as last measured where few answers were
    /// cheap (zero until then).
    pub served_cpu: Duration,
    /// Estimated CPU spent on cheap answers since start (each sample's answers at its price).
    pub cheap_cpu_total: Duration,
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

    /// Pacing state for a new connection.
    pub fn connection(self: &Arc<Self>) -> Arc<Connection> {
        Arc::new(Connection {
            id: self.connections.fetch_add(1, Ordering::Relaxed) + 1,
            pacer: Arc::clone(self),
            state: Mutex::new(ConnectionState {
                // A new connection starts with a small allowance, not a whole second's: a
                // client that reconnects to refill it gains little.
                tokens: self.config.connection_rate.min(4.0),
                refilled: Instant::now(),
                paused_until: None,
                paced_until: None,
                waker: None,
                wants_room: false,
                listed: false,
                woken_for_room: false,
            }),
        })
    }

    /// Fixes the price of an answer (tests: the process's real CPU says nothing about a
    /// paused clock).
    #[cfg(test)]
    fn fix_price(&self, price: Duration) {
        let mut shared = self.lock();
        shared.price.ns = price.as_nanos() as f64;
        shared.price.fixed = true;
    }

    /// Reads the CPU from `clock` instead of the process, as if on one CPU (tests: CPU they
    /// spend on paper, so that other tests running beside them do not move it).
    #[cfg(test)]
    fn fake_cpu(&self, clock: fn() -> CpuSplit) {
        let mut shared = self.lock();
        shared.price.cpu = clock;
        shared.price.cpus = 1.0;
    }

    /// Current figures.
    pub fn stats(&self) -> PacerStats {
        // The listed connections are taken out of the shared lock before each one's own lock
        // is taken: `Connection::charge` takes them the other way round.
        let (price, listed) = {
            let shared = self.lock();
            let listed: Vec<Arc<Connection>> =
                shared.paused.iter().filter_map(Weak::upgrade).collect();
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
        PacerStats {
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
    fn draw_excess(&self, now: Instant, charge: Charge) -> Option<Instant> {
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
    fn credit_served(&self) {
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
    fn list_for_room(&self, connection: &Arc<Connection>) {
        let mut shared = self.lock();
        shared.paused.push_back(Arc::downgrade(connection));
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
    /// until the pauses run out (measured: with CoDel settings, a 128 x 100 flood kept the
    /// one CPU 70% idle). A wake-up not read within a tick no longer holds the next one back.
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
            let Some(connection) = next.upgrade() else {
                continue;
            };
            if connection.resume_for_room() {
                self.room_pending.store(true, Ordering::Release);
                self.woken_for_room.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// What a charged answer was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// Work refused by admission for lack of room (RESOURCE_EXHAUSTED): the connection has
    /// work waiting that room would let in, so [`Pacer::room`] may resume it early.
    Shed,
    /// Any other cheap answer: health, Stats, reflection, auth and validation errors. Room in
    /// the queue does not help these, so they wait out their pause.
    Cheap,
}

/// One connection's pacing state, shared by its socket (which stops reading while paused)
/// and its requests (whose cheap answers are charged to it).
#[derive(Debug)]
pub struct Connection {
    /// Unique while the server runs: tells a client's connections apart.
    pub id: u64,
    pacer: Arc<Pacer>,
    state: Mutex<ConnectionState>,
}

#[derive(Debug)]
struct ConnectionState {
    /// The allowance left, refilled at `connection_rate` up to one second's worth.
    tokens: f64,
    refilled: Instant,
    /// Not read until then.
    paused_until: Option<Instant>,
    /// Reads limited ([`PACED_READ_BYTES`] or [`SHED_READ_BYTES`]) until then.
    paced_until: Option<Instant>,
    /// The socket's reader, woken when the pause is lifted early.
    waker: Option<Waker>,
    /// Whether its last charge was a shed (see [`Charge`]).
    wants_room: bool,
    /// In the pacer's list of connections waiting for room.
    listed: bool,
    /// Resumed for room and not read since: the pacer wakes one such connection at a time.
    woken_for_room: bool,
}

/// What the socket may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    /// Read as much as fits.
    Open,
    /// Read at most this many bytes.
    Limited(usize),
    /// Do not read until this moment (or an earlier wake-up).
    PausedUntil(Instant),
}

impl Connection {
    fn lock(&self) -> MutexGuard<'_, ConnectionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Charges one cheap answer to this connection; pauses it when it is beyond its allowance
    /// and the shared budget is spent.
    pub fn charge(self: &Arc<Self>, charge: Charge) {
        let config = self.pacer.config;
        if !config.enabled() {
            return;
        }
        self.pacer.charged.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut state = self.lock();
        state.wants_room = charge == Charge::Shed;
        let elapsed = now.saturating_duration_since(state.refilled).as_secs_f64();
        state.refilled = now;
        // A paced connection forfeits its allowance: the allowances are for connections that
        // ask for a few cheap answers (probes, monitors), and summed over the many connections
        // of one flood they would be a budget of their own that grows with every connection
        // opened (measured: 64 flooding connections drew 3,200 refusals a second from them,
        // a tenth of a CPU, on top of the shared budget). It gets it back once it has gone
        // `PACED_FOR` without exceeding it.
        let paced = state.paced_until.is_some_and(|until| until > now);
        state.tokens = if paced {
            0.0
        } else {
            (state.tokens + elapsed * config.connection_rate).min(config.connection_rate)
        };
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            return;
        }
        // Beyond its allowance, but while the shared budget lasts it is read as before: a
        // moderate overload is shed at full speed. Only once the budget is spent is it
        // paused, and then read a little at a time.
        let Some(ready) = self.pacer.draw_excess(now, charge) else {
            return;
        };
        let until = ready.min(now + config.max_pause);
        if state.paused_until.is_none_or(|u| u <= now) {
            self.pacer.pauses.fetch_add(1, Ordering::Relaxed);
        }
        state.paused_until = Some(state.paused_until.map_or(until, |u| u.max(until)));
        // Still limited for a while after the pause, or it would read all it buffered then.
        state.paced_until = Some(until + PACED_FOR);
        let list = state.wants_room && !state.listed;
        state.listed |= list;
        drop(state);
        if list {
            self.pacer.list_for_room(self);
        }
    }

    /// One of this connection's requests was served (see [`Pacer::credit_served`]).
    pub fn served(&self) {
        if self.pacer.config.enabled() {
            self.pacer.credit_served();
        }
    }

    /// Whether the socket may read now. While paused, the caller's waker is kept so that
    /// [`Pacer::room`] can resume the read early; the caller also sets a timer for the end
    /// of the pause.
    pub fn gate(&self, waker: &Waker) -> ReadGate {
        let mut state = self.lock();
        let now = Instant::now();
        let woken_for_room = std::mem::take(&mut state.woken_for_room);
        if woken_for_room {
            // Read once since it was woken for room: the next one may be woken.
            self.pacer.room_pending.store(false, Ordering::Release);
        }
        if let Some(until) = state.paused_until {
            if until > now {
                match &state.waker {
                    Some(w) if w.will_wake(waker) => {}
                    _ => state.waker = Some(waker.clone()),
                }
                return ReadGate::PausedUntil(until);
            }
            state.paused_until = None;
        }
        match state.paced_until {
            Some(_) if woken_for_room => ReadGate::Limited(ROOM_READ_BYTES),
            Some(until) if until > now && state.wants_room => ReadGate::Limited(SHED_READ_BYTES),
            Some(until) if until > now => ReadGate::Limited(PACED_READ_BYTES),
            Some(_) => {
                state.paced_until = None;
                ReadGate::Open
            }
            None => ReadGate::Open,
        }
    }

    /// Called after a limited read: a short gap before the next one (see [`PACED_READ_GAP`]).
    pub fn after_limited_read(&self) {
        let mut state = self.lock();
        let gap = Instant::now() + PACED_READ_GAP;
        state.paused_until = Some(state.paused_until.map_or(gap, |u| u.max(gap)));
    }

    /// Lifts a pause early, for room; false if it was not paused, or room would not help it.
    fn resume_for_room(&self) -> bool {
        let mut state = self.lock();
        state.listed = false;
        if !state.wants_room || state.paused_until.take().is_none() {
            return false;
        }
        state.woken_for_room = true;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
        true
    }
}

/// Finds a request's connection pacing state, and its peer's address, in its extensions.
pub type Lookup = fn(&http::Request<Body>) -> Option<(Arc<Connection>, Option<IpAddr>)>;

/// Charges every cheap answer to its connection (see the module docs for what is cheap), and
/// tells the layers below who each request is from (a [`Caller`] in its extensions).
#[derive(Clone)]
pub struct PacingLayer {
    lookup: Lookup,
}

impl PacingLayer {
    /// Charges answers outside VectorIndex (health, reflection), `Stats`, and every refusal
    /// (a trailers-only answer with a non-OK status) to the connection `lookup` finds.
    pub fn new(lookup: Lookup) -> Self {
        Self { lookup }
    }
}

impl<S> Layer<S> for PacingLayer {
    type Service = PacingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PacingService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PacingLayer`].
#[derive(Clone)]
pub struct PacingService<S> {
    inner: S,
    layer: PacingLayer,
}

/// What a response to a work call is charged as, if anything: an error status in its
/// headers (a trailers-only answer, which is how every status returned before or instead of
/// work is sent) is a refusal, a shed if RESOURCE_EXHAUSTED (code 8).
fn refusal(response: &http::Response<Body>) -> Option<Charge> {
    match response.headers().get("grpc-status")?.as_bytes() {
        b"0" => None,
        b"8" => Some(Charge::Shed),
        _ => Some(Charge::Cheap),
    }
}

impl<S> Service<http::Request<Body>> for PacingService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let connection = (self.layer.lookup)(&request).map(|(connection, address)| {
            request.extensions_mut().insert(Caller {
                client: address.map_or(ClientKey::Anonymous, ClientKey::Address),
                weight: 1,
                connection: connection.id,
            });
            connection
        });
        let path = request.uri().path();
        // Health, reflection and Stats are answered without admission: cheap, but not free.
        let cheap_call = !Method::is_vector_index(path) || Method::of(path) == Method::Stats;
        Box::pin(async move {
            let response = inner.call(request).await?;
            let charge = if cheap_call {
                Some(Charge::Cheap)
            } else {
                refusal(&response)
            };
            match (connection, charge) {
                (Some(connection), Some(charge)) => connection.charge(charge),
                (Some(connection), None) => connection.served(),
                (None, _) => {}
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(connection_rate: f64, excess_rate: f64) -> Arc<Pacer> {
        Pacer::new(Config {
            connection_rate,
            excess_rate,
            shed_per_served: 0.0,
            excess_cpu: 0.0,
            max_pause: Duration::from_secs(2),
        })
    }

    fn noop_waker() -> Waker {
        Waker::noop().clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_within_its_allowance_is_never_paced() {
        let pacer = pacer(10.0, 1.0);
        let polite = pacer.connection();
        for _ in 0..30 {
            polite.charge(Charge::Cheap);
            assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
            tokio::time::advance(Duration::from_millis(200)).await;
        }
        assert_eq!(pacer.stats().pauses, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_excess_budget_is_shared_and_then_pauses_whoever_draws_on_it() {
        // 100 excess answers a second, one second of burst.
        let pacer = pacer(1.0, 100.0);
        let flooder = pacer.connection();
        for _ in 0..101 {
            flooder.charge(Charge::Shed);
        }
        // Allowance (a few) plus the burst (100) were answered without pause...
        assert!(matches!(
            flooder.gate(&noop_waker()),
            ReadGate::Open | ReadGate::Limited(_)
        ));
        for _ in 0..50 {
            flooder.charge(Charge::Shed);
        }
        // ...the next 50 put it half a second into the future.
        let ReadGate::PausedUntil(until) = flooder.gate(&noop_waker()) else {
            panic!("paused");
        };
        let pause = until - Instant::now();
        assert!(
            pause > Duration::from_millis(400) && pause < Duration::from_millis(600),
            "{pause:?}"
        );
        // A polite connection is not held by the flooder's debt.
        let polite = pacer.connection();
        polite.charge(Charge::Cheap);
        assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
        // After the pause it reads again, a little at a time.
        tokio::time::advance(pause + Duration::from_millis(1)).await;
        assert_eq!(
            flooder.gate(&noop_waker()),
            ReadGate::Limited(SHED_READ_BYTES)
        );
        // And once it stops asking, fully.
        tokio::time::advance(PACED_FOR).await;
        assert_eq!(flooder.gate(&noop_waker()), ReadGate::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_connection_draws_on_the_budget_not_on_its_allowance() {
        // 50 free answers a second per connection, 10 a second shared.
        let pacer = pacer(50.0, 10.0);
        let flooder = pacer.connection();
        // Its first few, the budget's burst (10), then 16 more: paused about 1.6 s.
        for _ in 0..30 {
            flooder.charge(Charge::Shed);
        }
        assert!(matches!(
            flooder.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        // After the pause, and still paced: its allowance would have refilled to 50, but a
        // paced connection draws on the shared budget, which is spent again at once.
        tokio::time::advance(Duration::from_millis(1_700)).await;
        assert_eq!(
            flooder.gate(&noop_waker()),
            ReadGate::Limited(SHED_READ_BYTES)
        );
        for _ in 0..3 {
            flooder.charge(Charge::Shed);
        }
        assert!(matches!(
            flooder.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        // A connection that is not paced keeps its allowance meanwhile.
        let polite = pacer.connection();
        for _ in 0..3 {
            polite.charge(Charge::Cheap);
        }
        assert_eq!(polite.gate(&noop_waker()), ReadGate::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_flood_of_refused_searches_is_read_in_larger_pieces_than_other_calls() {
        // 50 free answers a second per connection, 10 a second shared.
        let pacer = pacer(50.0, 10.0);
        let searches = pacer.connection();
        let probes = pacer.connection();
        for _ in 0..70 {
            searches.charge(Charge::Shed);
            probes.charge(Charge::Cheap);
        }
        // Both paused on the spent budgets; after the longest pause (2 s), both still paced.
        tokio::time::advance(Duration::from_millis(2_100)).await;
        // Refused searches are large and their cost is per wake-up: several per read.
        assert_eq!(
            searches.gate(&noop_waker()),
            ReadGate::Limited(SHED_READ_BYTES)
        );
        // Health checks and the like are tiny: a few per read, or the pause's floor would
        // let a flood of them through.
        assert_eq!(
            probes.gate(&noop_waker()),
            ReadGate::Limited(PACED_READ_BYTES)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pauses_are_bounded_and_room_lifts_them() {
        let pacer = pacer(1.0, 10.0);
        let flooder = pacer.connection();
        for _ in 0..1_000 {
            flooder.charge(Charge::Shed);
        }
        let ReadGate::PausedUntil(until) = flooder.gate(&noop_waker()) else {
            panic!("paused");
        };
        assert!(until - Instant::now() <= Duration::from_secs(2));
        assert_eq!(pacer.stats().paused, 1);
        // A connection paused for cheap calls is not woken: room does not help it.
        let prober = pacer.connection();
        for _ in 0..20 {
            prober.charge(Charge::Cheap);
        }
        assert!(matches!(
            prober.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        pacer.room();
        assert_eq!(
            flooder.gate(&noop_waker()),
            ReadGate::Limited(ROOM_READ_BYTES)
        );
        assert_eq!(pacer.stats().woken_for_room, 1);
        assert!(matches!(
            prober.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        // One at a time: the next wake waits for the woken connection to have read (above).
        let second = pacer.connection();
        for _ in 0..5 {
            second.charge(Charge::Shed);
        }
        pacer.room();
        assert_eq!(
            second.gate(&noop_waker()),
            ReadGate::Limited(ROOM_READ_BYTES)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn served_requests_pay_off_the_budget_for_several_refusals_each() {
        // 10 excess answers a second (a burst of 10), and 4 more per served request.
        let pacer = Pacer::new(Config {
            connection_rate: 1.0,
            excess_rate: 10.0,
            shed_per_served: 4.0,
            excess_cpu: 0.0,
            max_pause: Duration::from_secs(2),
        });
        let overloaded = pacer.connection();
        // Each second: 5 served, 20 refused. The served earn 20, so it is never paused,
        // however long it goes on.
        for _ in 0..10 {
            for _ in 0..5 {
                overloaded.served();
                for _ in 0..4 {
                    overloaded.charge(Charge::Shed);
                }
            }
            assert!(matches!(overloaded.gate(&noop_waker()), ReadGate::Open));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(pacer.stats().pauses, 0);
        // Credit is not saved up: served requests in a quiet spell buy no flood later.
        for _ in 0..1_000 {
            overloaded.served();
        }
        for _ in 0..40 {
            overloaded.charge(Charge::Shed);
        }
        assert!(matches!(
            overloaded.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn served_requests_do_not_pay_for_other_cheap_answers() {
        // The same budget as above; one client is served, another floods health checks.
        let pacer = Pacer::new(Config {
            connection_rate: 1.0,
            excess_rate: 10.0,
            shed_per_served: 4.0,
            excess_cpu: 0.0,
            max_pause: Duration::from_secs(2),
        });
        let served = pacer.connection();
        let prober = pacer.connection();
        // Each second: 5 served on one connection, 20 health checks on the other. The 20
        // credits are for refusals of work only: the checks have the 10 a second (and the
        // burst) to themselves, so within two seconds the prober is paused.
        for _ in 0..2 {
            for _ in 0..5 {
                served.served();
                for _ in 0..4 {
                    prober.charge(Charge::Cheap);
                }
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert!(matches!(
            prober.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        // The credits still pay for refusals of work.
        let shed = pacer.connection();
        for _ in 0..5 {
            served.served();
            for _ in 0..4 {
                shed.charge(Charge::Shed);
            }
        }
        assert!(matches!(shed.gate(&noop_waker()), ReadGate::Open));
    }

    #[tokio::test(start_paused = true)]
    async fn excess_answers_cost_no_more_cpu_than_the_ceiling_whatever_the_rates_allow() {
        // The rates allow a million excess answers a second, but at 1 ms of CPU per answer
        // and a ceiling of a tenth of a CPU, 100 a second is all the CPU allows (after one
        // second's burst).
        let pacer = Pacer::new(Config {
            connection_rate: 1.0,
            excess_rate: 1e6,
            shed_per_served: 0.0,
            excess_cpu: 0.1,
            max_pause: Duration::from_secs(2),
        });
        pacer.fix_price(Duration::from_millis(1));
        let overloaded = pacer.connection();
        // The burst: 100 answers, a few from its own allowance.
        for _ in 0..100 {
            overloaded.charge(Charge::Shed);
        }
        assert!(matches!(overloaded.gate(&noop_waker()), ReadGate::Open));
        // 50 more: half a second of the ceiling's refill.
        for _ in 0..50 {
            overloaded.charge(Charge::Shed);
        }
        let ReadGate::PausedUntil(until) = overloaded.gate(&noop_waker()) else {
            panic!("paused by the CPU ceiling");
        };
        let pause = until - Instant::now();
        assert!(
            pause > Duration::from_millis(400) && pause < Duration::from_millis(600),
            "{pause:?}"
        );
        assert_eq!(pacer.stats().answer_cpu, Duration::from_millis(1));
        // The ceiling is shared by every kind of cheap answer: health checks find it spent.
        let prober = pacer.connection();
        for _ in 0..5 {
            prober.charge(Charge::Cheap);
        }
        assert!(matches!(
            prober.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
    }

    #[tokio::test]
    async fn the_answer_price_is_the_request_path_cpu_per_answer() {
        let pacer = Pacer::new(Config {
            connection_rate: 0.0,
            excess_rate: 1e9,
            shed_per_served: 0.0,
            excess_cpu: 1.0,
            max_pause: Duration::from_secs(2),
        });
        let flooder = pacer.connection();
        // Answers that each burn 200 us of this (serving) thread's CPU, for long enough to
        // be re-priced a few times.
        let started = Instant::now();
        while started.elapsed() < 4 * PRICE_EVERY {
            let spin = crate::cpu::tests_support::spin;
            spin(Duration::from_micros(200));
            flooder.charge(Charge::Shed);
        }
        let price = pacer.stats().answer_cpu;
        // Other tests run beside this one and add to the process's serving CPU: a lower bound
        // and a loose upper one.
        assert!(
            price >= Duration::from_micros(120) && price < Duration::from_millis(5),
            "{price:?}"
        );
    }

    /// Serving and index CPU spent on paper, for [`Pacer::fake_cpu`].
    static PAPER_SERVING_NS: AtomicU64 = AtomicU64::new(0);
    static PAPER_INDEX_NS: AtomicU64 = AtomicU64::new(0);

    fn spend_on_paper(micros: u64) {
        PAPER_SERVING_NS.fetch_add(micros * 1_000, Ordering::Relaxed);
    }

    fn paper_cpu() -> CpuSplit {
        let seconds = |ns: &AtomicU64| ns.load(Ordering::Relaxed) as f64 / 1e9;
        CpuSplit {
            index_s: seconds(&PAPER_INDEX_NS),
            serving_s: seconds(&PAPER_SERVING_NS),
        }
    }

    /// Index CPU of each search served on paper: 100 of them fill most of a pricing window.
    const PAPER_SEARCH_US: u64 = 2_000;

    /// One pricing window on `connection`: `served` requests at `served_us` of request path
    /// each, and `refused` refusals at `refused_us` each. (The order within a window does not
    /// move the price: a window is priced by its totals.)
    async fn paper_window(
        connection: &Arc<Connection>,
        (served, served_us): (u64, u64),
        (refused, refused_us): (u64, u64),
    ) {
        for _ in 0..served {
            spend_on_paper(served_us);
            PAPER_INDEX_NS.fetch_add(PAPER_SEARCH_US * 1_000, Ordering::Relaxed);
            connection.served();
        }
        for _ in 0..refused {
            spend_on_paper(refused_us);
            connection.charge(Charge::Shed);
        }
        tokio::time::sleep(PRICE_EVERY).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_priced_at_its_own_cost_not_at_a_served_requests() {
        let pacer = Pacer::new(Config {
            connection_rate: 0.0,
            excess_rate: 1e9,
            shed_per_served: 3.0,
            excess_cpu: 1.0,
            max_pause: Duration::from_secs(2),
        });
        pacer.fake_cpu(paper_cpu);
        let connection = pacer.connection();
        // Start-up: seconds of CPU (a preload) while clients are told UNAVAILABLE. No answer
        // costs that much, so the window prices nothing.
        connection.served();
        spend_on_paper(5_000_000);
        for _ in 0..40 {
            connection.charge(Charge::Cheap);
        }
        tokio::time::sleep(PRICE_EVERY).await;
        connection.served();
        assert_eq!(pacer.stats().answer_cpu, FIRST_PRICE);
        assert_eq!(pacer.stats().cheap_cpu_total, Duration::ZERO);
        // At capacity: served requests whose request path costs 130 us each, nothing refused.
        for _ in 0..8 {
            paper_window(&connection, (100, 130), (0, 0)).await;
        }
        assert_eq!(pacer.stats().served_cpu, Duration::from_micros(130));
        // A light load: 40 searches in a window, the server busy for a third of it. Their
        // share of what the process spends whatever it serves (timers, wake-ups) makes each
        // look like 330 us of request path; not learned, or a flood after it would find its
        // refusals' share of the serving CPU below nothing.
        // (A window is closed by the first answer after it, whose CPU it counts: the last
        // window at capacity by the first light one, at 330 us, hence about 130 us.)
        paper_window(&connection, (40, 330), (0, 0)).await;
        connection.served();
        let served = pacer.stats().served_cpu.as_secs_f64() * 1e6;
        assert!((129.0..133.0).contains(&served), "{served} us");
        // A flood: each served request comes with four refusals at 30 us each. Priced as a
        // blend of all answers, a refusal would be (130 + 4 x 30) / 5 = 50 us.
        for _ in 0..8 {
            paper_window(&connection, (100, 130), (400, 30)).await;
        }
        let stats = pacer.stats();
        let price = stats.answer_cpu.as_secs_f64() * 1e6;
        assert!((29.0..32.0).contains(&price), "{price} us");
        // And the CPU spent refusing is counted at that price: about 3,200 x 30 us.
        let spent = stats.cheap_cpu_total.as_secs_f64();
        assert!((0.080..0.100).contains(&spent), "{spent} s");
        // The served path grows dearer under load (250 us) than it was at capacity: what is
        // left over the old estimate (330 us a refusal) is not believed beyond the blend of
        // all answers, (100 x 250 + 40 x 30) / 140 = 187 us.
        for _ in 0..8 {
            paper_window(&connection, (100, 250), (40, 30)).await;
        }
        let price = pacer.stats().answer_cpu.as_secs_f64() * 1e6;
        assert!((180.0..188.0).contains(&price), "{price} us");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_work_is_woken_while_admission_has_room_even_if_nothing_finishes() {
        let pacer = pacer(1.0, 10.0);
        let has_room = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tender = tokio::spawn(Arc::clone(&pacer).tend_room({
            let has_room = Arc::clone(&has_room);
            move || has_room.load(Ordering::Relaxed)
        }));
        let first = pacer.connection();
        let second = pacer.connection();
        for flooder in [&first, &second] {
            for _ in 0..100 {
                flooder.charge(Charge::Shed);
            }
        }
        // No room: both stay paused.
        tokio::time::sleep(10 * ROOM_TICK).await;
        assert!(matches!(
            first.gate(&noop_waker()),
            ReadGate::PausedUntil(_)
        ));
        // Room, and no request finishes to say so: the tender wakes the first...
        has_room.store(true, Ordering::Relaxed);
        tokio::time::sleep(2 * ROOM_TICK).await;
        assert_eq!(
            first.gate(&noop_waker()),
            ReadGate::Limited(ROOM_READ_BYTES)
        );
        // ...and, as the room lasts, the next.
        tokio::time::sleep(2 * ROOM_TICK).await;
        assert_eq!(
            second.gate(&noop_waker()),
            ReadGate::Limited(ROOM_READ_BYTES)
        );
        tender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn zero_excess_rate_turns_pacing_off() {
        let pacer = pacer(1.0, 0.0);
        let flooder = pacer.connection();
        for _ in 0..10_000 {
            flooder.charge(Charge::Shed);
        }
        assert_eq!(flooder.gate(&noop_waker()), ReadGate::Open);
    }
}
