//! Brownout (`--brownout`): while a queue stands in front of the index, admitted searches run
//! with a smaller `ef`, trading a little recall for throughput, and get their breadth back as
//! the queue drains. Shedding alone keeps the searches it admits exact to the index's usual
//! recall and refuses the rest; brownout serves more of them, each slightly less thoroughly
//! (the idea of Klein et al., "Brownout: building more robust cloud applications", ICSE 2014,
//! with `ef` as the optional work).
//!
//! The breadth is a factor in `[floor, 1]` that a search's `ef` is multiplied by (never below
//! its `k`, see [`crate::engine::Search::narrowed`]); exact scans are left whole, since their
//! caller asked for the exact answer. Every `tick` the controller looks at the queue:
//!
//! - **standing** (waiters for at least a whole tick, the CoDel notion of a queue that is not
//!   a passing burst): breadth times `decrease` (multiplicative, so it reaches the floor in
//!   about ten ticks from full);
//! - **empty**: breadth plus `increase` (additive, so it comes back over about twenty ticks and
//!   does not swing back to full into the next burst);
//! - **waiters, not yet standing**: unchanged.
//!
//! Additive increase and multiplicative decrease settle, under a steady overload, around the
//! breadth at which the index keeps up with what admission lets in. The floor is the
//! operator's bound on how much recall may be given up; `Stats` (`search_breadth`) and the
//! metrics (`vecrig_search_breadth`) show the breadth of the moment.

use std::sync::Arc;

use super::state::Admission;

pub use super::figures::QueueState;
pub use super::settings::BrownoutConfig;

/// The breadth controller, free of clocks and I/O so its arithmetic can be tested.
#[derive(Debug, Clone)]
pub struct Controller {
    config: BrownoutConfig,
    breadth: f64,
}

impl Controller {
    /// At full breadth.
    pub fn new(config: BrownoutConfig) -> Self {
        Self {
            config,
            breadth: 1.0,
        }
    }

    /// The breadth after a tick that saw `queue`.
    pub fn step(&mut self, queue: QueueState) -> f64 {
        self.breadth = match queue {
            QueueState::Standing => (self.breadth * self.config.decrease).max(self.config.floor),
            // Snapped to full within a rounding error, so that full breadth is exactly 1.
            QueueState::Empty if self.breadth + self.config.increase > 1.0 - 1e-9 => 1.0,
            QueueState::Empty => self.breadth + self.config.increase,
            QueueState::Waiting => self.breadth,
        };
        self.breadth
    }
}

/// Runs the controller on `admission` until the task is dropped.
pub async fn run(admission: Arc<Admission>, config: BrownoutConfig) {
    let mut controller = Controller::new(config);
    let mut ticks = tokio::time::interval(config.tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let state = admission.queue_state(config.tick);
        admission.set_search_breadth(controller.step(state));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(floor: f64) -> Controller {
        Controller::new(BrownoutConfig::with_floor(floor))
    }

    #[test]
    fn a_standing_queue_narrows_searches_down_to_the_floor_and_no_further() {
        let mut c = controller(0.25);
        let mut seen = vec![];
        for _ in 0..20 {
            seen.push(c.step(QueueState::Standing));
        }
        assert!((seen[0] - 0.8).abs() < 1e-9, "first step {}", seen[0]);
        assert!(
            seen.windows(2).all(|w| w[1] <= w[0]),
            "never widens: {seen:?}"
        );
        // 0.8^7 = 0.21 < 0.25: the floor is reached in 7 ticks and held.
        assert_eq!(seen[6], 0.25);
        assert_eq!(*seen.last().expect("steps"), 0.25);
    }

    #[test]
    fn an_empty_queue_restores_full_breadth_gradually() {
        let mut c = controller(0.25);
        for _ in 0..20 {
            c.step(QueueState::Standing);
        }
        let first = c.step(QueueState::Empty);
        assert!((first - 0.30).abs() < 1e-9, "one step up: {first}");
        let mut last = first;
        let mut ticks = 1;
        while last < 1.0 {
            last = c.step(QueueState::Empty);
            ticks += 1;
            assert!(ticks < 100, "never back to full");
        }
        assert_eq!(last, 1.0);
        // Additive: 0.25 -> 1 in 15 steps of 0.05, not at once.
        assert_eq!(ticks, 15);
        assert_eq!(c.step(QueueState::Empty), 1.0, "never above full");
    }

    #[test]
    fn waiters_that_are_not_yet_a_standing_queue_change_nothing() {
        let mut c = controller(0.1);
        assert_eq!(c.step(QueueState::Waiting), 1.0);
        c.step(QueueState::Standing);
        let narrowed = c.step(QueueState::Standing);
        assert_eq!(c.step(QueueState::Waiting), narrowed);
    }

    #[test]
    fn under_alternating_overload_it_settles_between_floor_and_full() {
        // A queue that stands one tick in three (the index nearly keeping up) keeps a
        // breadth well inside the bounds instead of swinging from one end to the other.
        let mut c = controller(0.1);
        let mut tail = vec![];
        for i in 0..300 {
            let state = if i % 3 == 0 {
                QueueState::Standing
            } else {
                QueueState::Empty
            };
            let b = c.step(state);
            if i >= 200 {
                tail.push(b);
            }
        }
        let (lo, hi) = tail
            .iter()
            .fold((1.0f64, 0.0f64), |(lo, hi), &b| (lo.min(b), hi.max(b)));
        assert!(lo > 0.1 && hi < 1.0, "settled within ({lo}, {hi})");
        assert!(hi - lo < 0.2, "swing {lo}..{hi}");
    }
}
