//! Who runs next: the limit in cost units, the two queues (cheap and expensive requests) that
//! take turns by cost served, the CoDel-style standing-queue rule, and the adaptive
//! controller's measurement window.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::cost::{Cost, UNITS_PER_SLOT};

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
pub(super) struct Scheduler {
    pub(super) limit_units: u32,
    pub(super) used_units: u32,
    pub(super) queued_units: u32,
    pub(super) queues: [VecDeque<Waiter>; 2],
    /// Units granted to each class (start-time fair queueing's virtual clocks).
    pub(super) served: [u64; 2],
    pub(super) next_id: u64,
    /// Since when the queue has been non-empty.
    pub(super) nonempty_since: Option<Instant>,
    /// Until when arrivals are held to `queue_target` (the queue stood, and arrivals were
    /// shed for it, within the last interval).
    pub(super) strict_until: Option<Instant>,
    /// The adaptive controller's current window, and when it began.
    pub(super) window: Window,
    pub(super) window_since: Instant,
}

/// A request waiting in a queue, and the sender that grants it its units.
#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: u64,
    pub(super) units: u32,
    pub(super) grant: oneshot::Sender<()>,
}

impl Scheduler {
    pub(super) fn new(limit_units: u32) -> Self {
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
    pub(super) fn too_long_a_wait(
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
    pub(super) fn expected_wait(&self, per_slot: Duration) -> Duration {
        per_slot.mul_f64(f64::from(self.queued_units) / f64::from(self.limit_units.max(1)))
    }

    pub(super) fn used_slots(&self) -> f64 {
        f64::from(self.used_units) / f64::from(UNITS_PER_SLOT)
    }

    /// Takes `units` of the limit for a request that starts now.
    pub(super) fn take(&mut self, units: u32) {
        self.used_units += units;
        self.window.peak_used_slots = self.window.peak_used_slots.max(self.used_slots());
    }

    /// A finished request's service time, counted if it started within this window (one
    /// that started before a limit change would describe the old limit).
    pub(super) fn sample(&mut self, started: Instant, took: Duration, cost: Cost) {
        if started >= self.window_since {
            self.window.sum_secs_per_slot += took.as_secs_f64() / cost.slots().max(0.25);
            self.window.count += 1;
        }
    }

    /// Grants units to waiting requests while they fit, in fair order.
    pub(super) fn dispatch(&mut self) {
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

    pub(super) fn release(&mut self, units: u32) {
        self.used_units = self.used_units.saturating_sub(units);
        self.dispatch();
    }

    pub(super) fn cancel(&mut self, id: u64) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
