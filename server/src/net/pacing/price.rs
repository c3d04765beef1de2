//! What a cheap answer costs the request path, measured as the server runs.

use std::time::Duration;

use tokio::time::Instant;

use crate::cpu::CpuSplit;

/// What a cheap answer (a refusal, a health check) costs the request path, measured: the CPU
/// that is not index work, less what the requests served meanwhile cost it, over the cheap
/// answers given meanwhile.
///
/// Why two parts: a served request's request path (HTTP/2, decoding, the hand-off to the
/// work threads and back, the answer) costs several times a refusal's. Pricing every answer
/// alike would charge each refusal under a flood at
/// about a served request's cost, so the CPU ceiling would pause connections at a fraction
/// of the refusals it is set to allow. The served part is learned where few
/// answers are cheap and the server is busy (at capacity, before a flood), and taken out where
/// many are cheap.
///
/// Why busy: on a server that is mostly idle, the serving CPU of a sample is mostly what the
/// process spends whatever it serves (timers, wake-ups from idle, scrapes), shared out over
/// the few requests of the sample. A light load would so price the served part several
/// times too high, and under a flood that followed, the refusals' share of the serving CPU
/// would come out negative: each refusal priced at the floor ([`MIN_PRICE`]), and the CPU
/// ceiling letting through several times what it is set to (see `docs/overload.md`).
#[derive(Debug)]
pub(super) struct AnswerPrice {
    /// The last sample: when (`None` until the first charge or served request), the process's
    /// CPU then, and the cheap answers and served requests counted then.
    pub(super) at: Option<Instant>,
    pub(super) cpu_then: CpuSplit,
    pub(super) cheap: u64,
    pub(super) served: u64,
    /// Request-path nanoseconds per served request, smoothed; `None` until a sample with few
    /// cheap answers has measured it (until then, cheap answers are priced at the blend of
    /// both, which errs high: more pacing, never less).
    pub(super) served_ns: Option<f64>,
    /// Nanoseconds per cheap answer, smoothed.
    pub(super) ns: f64,
    /// Estimated CPU spent on cheap answers since start (price x answers, sample by sample).
    pub(super) spent_on_cheap_ns: f64,
    /// Where the process's CPU is read from (tests: clocks they move themselves).
    pub(super) cpu: fn() -> CpuSplit,
    /// The CPUs the process may run on (what "busy" is a share of).
    pub(super) cpus: f64,
    /// Set by tests: never re-measured.
    pub(super) fixed: bool,
}

/// The price assumed before anything is measured: a refusal's on this machine, rounded up.
pub(super) const FIRST_PRICE: Duration = Duration::from_micros(50);

/// How often the price is re-measured while connections draw on the budget.
pub(super) const PRICE_EVERY: Duration = Duration::from_millis(250);

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
    pub(super) fn new() -> Self {
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
    pub(super) fn sample(&mut self, now: Instant, cheap: u64, served: u64) {
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
