//! The adaptive concurrency limit (`--adaptive-limit`): a controller that moves admission's
//! limit with measured service time, in the manner of Envoy's adaptive-concurrency filter
//! (a gradient controller) rather than Netflix's Gradient2, because Envoy's periodically
//! re-measures the no-load latency instead of trusting a long average that drifts upward
//! under sustained load.
//!
//! Every `window` (100 ms) it takes the mean service time per slot of cost of the requests
//! that started and finished in that window ([`Admission::take_window`]) and sets
//!
//! ```text
//! gradient = clamp(min_rtt * (1 + buffer) / sample, 0.5, 2.0)
//! limit    = limit * gradient + sqrt(limit * gradient)      (the square root is headroom)
//! ```
//!
//! and moves the limit a fifth of the way there (smoothing), so it shrinks when requests take
//! longer than the no-load time plus the buffer (50%) and grows while they do not. On a
//! CPU-bound server with C cores, service time grows as limit / C beyond C, and the limit
//! settles near `(1 + buffer) C + sqrt(limit)`.
//!
//! `min_rtt` is measured at start and then every `min_rtt_interval` (jittered, so a fleet
//! does not measure in step): the limit is held at `min_limit` until `min_rtt_samples`
//! requests that started after the hold began have finished, and their mean is the new
//! no-load time. A lower window mean seen in between lowers it at once.
//!
//! While the server is far from its limit (the busiest moment of a window used less than
//! half of it) the limit does not grow: a limit raised while idle would admit the next burst
//! into the index's threads instead of the queue, where it can be shed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::scheduler::Window;
pub use super::settings::AdaptiveConfig;
use super::state::Admission;

/// What the controller is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Holding the limit at `min_limit` to measure the no-load service time.
    Measuring {
        /// The limit to return to afterwards.
        resume_at: f64,
        /// Samples gathered so far (sum of seconds per slot, count).
        sum: f64,
        count: u64,
        started: Instant,
    },
    /// Following the gradient until the next measurement.
    Tracking { next_measurement: Instant },
}

/// The gradient controller, free of clocks and I/O so its arithmetic can be tested.
#[derive(Debug, Clone)]
pub struct Controller {
    config: AdaptiveConfig,
    limit: f64,
    min_rtt: Option<f64>,
    phase: Phase,
    /// State of a small xorshift generator for the jitter.
    jitter: u64,
}

impl Controller {
    /// Starts by measuring `min_rtt`, then resumes at `initial` slots.
    pub fn new(config: AdaptiveConfig, initial: usize, now: Instant) -> Self {
        let initial = (initial as f64).clamp(config.min_limit as f64, config.max_limit as f64);
        Self {
            config,
            limit: config.min_limit as f64,
            min_rtt: None,
            phase: Phase::Measuring {
                resume_at: initial,
                sum: 0.0,
                count: 0,
                started: now,
            },
            jitter: 0x9E37_79B9_7F4A_7C15,
        }
    }

    /// The limit to apply now, in slots.
    pub fn limit(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    /// The measured no-load service time per slot, once there is one.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.map(Duration::from_secs_f64)
    }

    /// Whether the limit is being held down to measure `min_rtt`.
    pub fn measuring(&self) -> bool {
        matches!(self.phase, Phase::Measuring { .. })
    }

    /// Takes one window's figures and returns the new limit, in slots.
    pub fn on_window(&mut self, window: &Window, now: Instant) -> usize {
        match self.phase {
            Phase::Measuring {
                resume_at,
                sum,
                count,
                started,
            } => {
                let (sum, count) = (sum + window.sum_secs_per_slot, count + window.count);
                // A server with little traffic may take long to gather the samples; after a
                // few seconds whatever has been gathered will do.
                let enough = count >= self.config.min_rtt_samples
                    || (count > 0 && now - started >= Duration::from_secs(5));
                if enough {
                    let measured = sum / count as f64;
                    self.min_rtt = Some(measured);
                    self.limit = resume_at;
                    self.phase = Phase::Tracking {
                        next_measurement: now + self.jittered_interval(),
                    };
                } else {
                    self.phase = Phase::Measuring {
                        resume_at,
                        sum,
                        count,
                        started,
                    };
                }
            }
            Phase::Tracking { next_measurement } => {
                if now >= next_measurement {
                    self.phase = Phase::Measuring {
                        resume_at: self.limit,
                        sum: 0.0,
                        count: 0,
                        started: now,
                    };
                    self.limit = self.config.min_limit as f64;
                } else if window.count >= self.config.min_window_samples
                    && let Some(min_rtt) = self.min_rtt
                {
                    let sample = window.sum_secs_per_slot / window.count as f64;
                    let min_rtt = min_rtt.min(sample);
                    self.min_rtt = Some(min_rtt);
                    let gradient = (min_rtt * (1.0 + self.config.buffer) / sample).clamp(0.5, 2.0);
                    let scaled = self.limit * gradient;
                    let mut next = scaled + scaled.sqrt();
                    if window.peak_used_slots < self.limit / 2.0 {
                        // Application-limited: no evidence that more would be served well.
                        next = next.min(self.limit);
                    }
                    let smoothed =
                        self.limit + (next - self.limit) * self.config.smoothing.clamp(0.0, 1.0);
                    self.limit =
                        smoothed.clamp(self.config.min_limit as f64, self.config.max_limit as f64);
                }
            }
        }
        self.limit()
    }

    /// `min_rtt_interval` +- 15%.
    fn jittered_interval(&mut self) -> Duration {
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let unit = (self.jitter >> 11) as f64 / (1u64 << 53) as f64;
        self.config.min_rtt_interval.mul_f64(0.85 + 0.3 * unit)
    }
}

/// Drives `admission`'s limit until the task is dropped.
pub async fn run(admission: Arc<Admission>, config: AdaptiveConfig, initial: usize) {
    let mut controller = Controller::new(config, initial, Instant::now());
    admission.set_limit(controller.limit());
    let mut ticks = tokio::time::interval(config.window);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let was_measuring = controller.measuring();
        let window = admission.take_window();
        let before = controller.limit();
        let after = controller.on_window(&window, Instant::now());
        if after != before {
            admission.set_limit(after);
        }
        if was_measuring && !controller.measuring() {
            tracing::debug!(min_rtt = ?controller.min_rtt(), limit = after, "no-load service time measured");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(per_slot: Duration, count: u64, peak_used_slots: f64) -> Window {
        Window {
            sum_secs_per_slot: per_slot.as_secs_f64() * count as f64,
            count,
            peak_used_slots,
        }
    }

    /// A CPU-bound server: service time per slot grows as limit / cores past the cores.
    fn cpu_bound(limit: usize, cores: usize) -> Duration {
        let base = Duration::from_millis(2);
        base.mul_f64((limit as f64 / cores as f64).max(1.0))
    }

    fn tracking(limit: usize) -> (Controller, Instant) {
        let start = Instant::now();
        let mut c = Controller::new(AdaptiveConfig::with_max(64), limit, start);
        assert!(c.measuring(), "it measures min_rtt first");
        assert_eq!(c.limit(), 1);
        // The measurement at the minimum limit sees the no-load time.
        let got = c.on_window(&window(Duration::from_millis(2), 50, 1.0), start);
        assert!(!c.measuring());
        assert_eq!(got, limit);
        assert_eq!(c.min_rtt(), Some(Duration::from_millis(2)));
        (c, start)
    }

    #[test]
    fn on_a_cpu_bound_server_the_limit_settles_near_the_cores_plus_headroom() {
        for (initial, cores) in [(64, 2), (1, 2), (4, 8), (60, 8)] {
            let (mut c, start) = tracking(initial);
            let mut limit = c.limit();
            let mut seen = Vec::new();
            for i in 1..200 {
                let now = start + Duration::from_millis(100 * i);
                limit = c.on_window(&window(cpu_bound(limit, cores), 100, limit as f64), now);
                seen.push(limit);
            }
            let settled = &seen[150..];
            let (lo, hi) = (
                *settled.iter().min().expect("some"),
                *settled.iter().max().expect("some"),
            );
            assert!(
                lo >= cores && hi <= 2 * cores + 4,
                "cores {cores} from {initial}: settled in {lo}..={hi}: {seen:?}"
            );
        }
    }

    #[test]
    fn slower_service_shrinks_the_limit_and_it_never_leaves_its_bounds() {
        let (mut c, start) = tracking(32);
        let slow = c.on_window(
            &window(Duration::from_millis(20), 100, 32.0),
            start + Duration::from_millis(100),
        );
        assert!(slow < 32, "ten times the no-load time halves it: {slow}");
        let mut limit = slow;
        for i in 2..100 {
            limit = c.on_window(
                &window(Duration::from_secs(1), 100, limit as f64),
                start + Duration::from_millis(100 * i),
            );
        }
        // Halving plus the square-root headroom settles at 2: x = x/2 + sqrt(x/2).
        assert!(limit <= 2, "held near the bottom: {limit}");
        for i in 100..300 {
            limit = c.on_window(
                &window(Duration::from_millis(1), 100, limit as f64),
                start + Duration::from_millis(100 * i),
            );
        }
        assert_eq!(limit, 64, "and at the maximum");
    }

    #[test]
    fn an_idle_server_does_not_grow_its_limit_and_sparse_windows_do_not_move_it() {
        let (mut c, start) = tracking(8);
        let at = |i: u64| start + Duration::from_millis(100 * i);
        // Fast answers, but only 2 of 8 slots ever used.
        assert_eq!(
            c.on_window(&window(Duration::from_millis(2), 100, 2.0), at(1)),
            8
        );
        // Too few samples to judge.
        assert_eq!(
            c.on_window(&window(Duration::from_secs(5), 2, 8.0), at(2)),
            8
        );
    }

    #[test]
    fn the_no_load_time_is_measured_again_and_can_rise() {
        let (mut c, start) = tracking(8);
        // Past the (jittered) interval, the limit drops to the minimum to measure.
        let later = start + Duration::from_secs(40);
        assert_eq!(
            c.on_window(&window(Duration::from_millis(2), 100, 8.0), later),
            1
        );
        assert!(c.measuring());
        // The index has grown: no-load service is now 3 ms per slot.
        let resumed = c.on_window(
            &window(Duration::from_millis(3), 60, 1.0),
            later + Duration::from_millis(100),
        );
        assert_eq!(resumed, 8, "back to where it was");
        assert_eq!(c.min_rtt(), Some(Duration::from_millis(3)));
    }
}
