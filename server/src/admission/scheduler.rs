//! Who runs next: the limit in cost units, the two queues (cheap and expensive requests) that
//! take turns by cost served, each fair across clients and their connections
//! ([`super::fair`]), the choice of whom to displace when the queue is full, the CoDel-style
//! standing-queue rule, and the adaptive controller's measurement window.

use std::time::{Duration, Instant};

use super::cost::{Cost, UNITS_PER_SLOT};
use super::fair::FairQueue;
use crate::caller::{Caller, ClientKey};

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

/// Arrivals the CoDel-style rule may shed in its gentle band for each request served: one for
/// every two, so a closed-loop client's resends cost at most half a refusal per search, and
/// an open-model excess of up to half of capacity is shed there.
pub(super) const GENTLE_SHEDS_PER_SERVED: f32 = 0.5;

/// The most gentle-band sheds saved up while none were needed.
pub(super) const GENTLE_SHEDS_SAVED: f32 = 4.0;

/// Who runs next: free units, and two queues (cheap and expensive requests) that take turns
/// by cost served, so neither class starves the other; within each, clients share fairly.
/// Work-conserving: when one queue is empty, the other may use the whole limit.
///
/// `T` is what waits: the scheduler only orders it, and hands it back once granted or
/// displaced; starting the work is the caller's, outside the scheduler's lock.
#[derive(Debug)]
pub(super) struct Scheduler<T> {
    pub(super) limit_units: u32,
    pub(super) used_units: u32,
    pub(super) queued_units: u32,
    pub(super) queues: [FairQueue<T>; 2],
    /// Units granted to each class (start-time fair queueing's virtual clocks).
    pub(super) served: [u64; 2],
    pub(super) next_id: u64,
    /// Since when the queue has been non-empty.
    pub(super) nonempty_since: Option<Instant>,
    /// Until when arrivals are held to `queue_target` (the queue stood, and arrivals were
    /// shed for it, within the last interval).
    pub(super) strict_until: Option<Instant>,
    /// Arrivals the CoDel-style rule may still shed in its gentle band (see
    /// [`Scheduler::too_long_a_wait`]), earned by requests served.
    pub(super) gentle_sheds: f32,
    /// The adaptive controller's current window, and when it began.
    pub(super) window: Window,
    pub(super) window_since: Instant,
}

impl<T> Scheduler<T> {
    pub(super) fn new(limit_units: u32) -> Self {
        Self {
            limit_units,
            used_units: 0,
            queued_units: 0,
            queues: [FairQueue::default(), FairQueue::default()],
            served: [0; 2],
            next_id: 0,
            nonempty_since: None,
            strict_until: None,
            gentle_sheds: 0.0,
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
    ///
    /// Between one and two times the target (the gentle band, as in RED's gentle mode) an
    /// arrival is shed only while sheds earned by served requests are left
    /// ([`GENTLE_SHEDS_PER_SERVED`]); beyond twice the target, every arrival is. Why: a
    /// closed-loop client sends each refused request again at once, so shedding every
    /// arrival of a queue just past the target does not shorten it, it only turns into a
    /// burst of refusals; under pacing those bursts get the connections paused, and the CPU
    /// idles while they are (see `docs/overload.md`). An open-model overload of up to 1.5x capacity is held in the band; beyond, the queue
    /// passes twice the target and everything past it is shed as before.
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
        let wait = self.expected_wait(per_slot);
        let shed = if !standing {
            wait > interval
        } else if wait <= target {
            false
        } else if wait <= 2 * target {
            let earned = self.gentle_sheds >= 1.0;
            if earned {
                self.gentle_sheds -= 1.0;
            }
            earned
        } else {
            true
        };
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

    /// Queues request `id` of `caller`, costing `units`, in its class's queue.
    pub(super) fn push(&mut self, id: u64, caller: &Caller, units: u32, heavy: bool, waiter: T) {
        self.queued_units += units;
        self.queues[usize::from(heavy)].push(id, caller, units, waiter);
    }

    /// Places held by each client with requests waiting, in both queues.
    pub(super) fn queued_by_client(&self) -> Vec<(ClientKey, usize)> {
        let mut out: Vec<(ClientKey, usize)> = Vec::new();
        for queue in &self.queues {
            for (client, n) in queue.queued_by_client() {
                match out.iter_mut().find(|(c, _)| c == client) {
                    Some((_, total)) => *total += n,
                    None => out.push((client.clone(), n)),
                }
            }
        }
        out
    }

    /// Requests waiting in both queues.
    pub(super) fn waiting(&self) -> usize {
        self.queues[0].len() + self.queues[1].len()
    }

    /// Places `client` holds in both queues.
    pub(super) fn places_of(&self, client: &ClientKey) -> usize {
        self.queues[0].queued_of(client) + self.queues[1].queued_of(client)
    }

    /// Places held by each of `client`'s connections, in both queues.
    fn places_by_connection(&self, client: &ClientKey) -> Vec<(u64, usize)> {
        let mut out: Vec<(u64, usize)> = Vec::new();
        for queue in &self.queues {
            for (connection, n) in queue.connections_of(client) {
                match out.iter_mut().find(|(c, _)| *c == connection) {
                    Some((_, total)) => *total += n,
                    None => out.push((connection, n)),
                }
            }
        }
        out
    }

    /// The queue is full and a request of `caller` arrives. If another client holds more
    /// places than the caller's, that client's newest request gives its place up (is
    /// returned, to be shed) and the arrival may queue. If the caller's client is the
    /// heaviest (or as heavy as any), the same rule holds one level down, between its
    /// connections: if another of its connections holds more places than the arrival's, that
    /// connection's newest request gives its place up. Otherwise the arrival is the one
    /// refused (`None`).
    pub(super) fn displace_for(&mut self, caller: &Caller) -> Option<T> {
        let client = &caller.client;
        let heaviest = [&self.queues[0], &self.queues[1]]
            .into_iter()
            .filter_map(|q| q.heaviest().map(|(key, _)| key.clone()))
            .max_by_key(|key| self.places_of(key));
        let heaviest = heaviest?;
        // Its newest request, whichever queue it is in (ids grow with arrival).
        let newest = if self.places_of(&heaviest) > self.places_of(client) {
            (0..2)
                .filter_map(|class| Some((self.queues[class].newest_of(&heaviest)?, class)))
                .max()
        } else {
            let connections = self.places_by_connection(client);
            let own = connections
                .iter()
                .find(|(c, _)| *c == caller.connection)
                .map_or(0, |&(_, n)| n);
            let (heaviest_connection, places) = connections
                .iter()
                .copied()
                .max_by_key(|&(connection, n)| (n, std::cmp::Reverse(connection)))?;
            if places <= own {
                return None;
            }
            (0..2)
                .filter_map(|class| {
                    let id =
                        self.queues[class].newest_of_connection(client, heaviest_connection)?;
                    Some((id, class))
                })
                .max()
        };
        let (id, class) = newest?;
        let (units, waiter) = self.queues[class].remove(id)?;
        self.queued_units -= units;
        Some(waiter)
    }

    /// Grants units to waiting requests while they fit, in fair order: returns them, their
    /// units taken, for the caller to start.
    #[must_use = "granted requests hold units until they are started and finish"]
    pub(super) fn dispatch(&mut self) -> Vec<T> {
        let mut granted = Vec::new();
        loop {
            let class = match (self.queues[0].front(), self.queues[1].front()) {
                (None, None) => break,
                (Some(_), None) => 0,
                (None, Some(_)) => 1,
                (Some(_), Some(_)) => usize::from(self.served[1] < self.served[0]),
            };
            let Some((_, units)) = self.queues[class].front() else {
                break;
            };
            // The class whose turn it is waits for room rather than being overtaken, so a
            // large request is not starved by a stream of small ones.
            if self.used_units + units > self.limit_units && self.used_units > 0 {
                break;
            }
            let Some((_, units, waiter)) = self.queues[class].pop_front() else {
                break;
            };
            self.queued_units -= units;
            self.take(units);
            self.served[class] += u64::from(units);
            granted.push(waiter);
        }
        // A class that was idle must not bank credit for the time it had nothing to send.
        for class in 0..2 {
            if self.queues[class].is_empty() {
                self.served[class] = self.served[class].max(self.served[1 - class]);
            }
        }
        if self.queues.iter().all(FairQueue::is_empty) {
            self.nonempty_since = None;
        }
        granted
    }

    /// A request was served: the gentle band earns [`GENTLE_SHEDS_PER_SERVED`] sheds (up to
    /// [`GENTLE_SHEDS_SAVED`]).
    pub(super) fn served_one(&mut self) {
        self.gentle_sheds = (self.gentle_sheds + GENTLE_SHEDS_PER_SERVED).min(GENTLE_SHEDS_SAVED);
    }

    /// Gives `units` back; returns the requests granted in their place (see `dispatch`).
    #[must_use = "granted requests hold units until they are started and finish"]
    pub(super) fn release(&mut self, units: u32) -> Vec<T> {
        self.used_units = self.used_units.saturating_sub(units);
        self.dispatch()
    }

    /// Takes request `id` out of the queue, if it still waits (its client went away, or it
    /// waited too long); returns it, and the requests its leaving lets start.
    #[must_use = "granted requests hold units until they are started and finish"]
    pub(super) fn cancel(&mut self, id: u64) -> (Option<T>, Vec<T>) {
        for class in 0..2 {
            if let Some((units, waiter)) = self.queues[class].remove(id) {
                self.queued_units -= units;
                return (Some(waiter), self.dispatch());
            }
        }
        (None, Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ip: u8) -> Caller {
        Caller {
            client: ClientKey::Address(std::net::IpAddr::from([127, 0, 0, ip])),
            weight: 1,
            connection: u64::from(ip),
        }
    }

    /// Queues a request of `who`; what waits is its id.
    fn waiter_of(scheduler: &mut Scheduler<u64>, who: &Caller, units: u32, heavy: bool) -> u64 {
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        scheduler.push(id, who, units, heavy, id);
        id
    }

    fn waiter(scheduler: &mut Scheduler<u64>, units: u32, heavy: bool) -> u64 {
        waiter_of(scheduler, &caller(1), units, heavy)
    }

    /// Limit 2 slots with 4 searches queued since `since`: an arrival waits 2 x `per_slot`.
    fn four_queued_on_two_slots(since: Instant) -> Scheduler<u64> {
        let mut s = Scheduler::new(8);
        for _ in 0..4 {
            waiter(&mut s, 4, false);
        }
        s.nonempty_since = Some(since);
        s
    }

    #[test]
    fn a_full_queue_displaces_the_heaviest_clients_newest_never_a_light_ones() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        let flood: Vec<_> = (0..10)
            .map(|_| waiter_of(&mut s, &caller(1), 4, false))
            .collect();
        let polite = waiter_of(&mut s, &caller(2), 4, false);
        // The queue is full; another polite request arrives: the flooder's newest goes, and
        // the rest still wait.
        assert_eq!(s.displace_for(&caller(2)), Some(flood[9]));
        assert_eq!(s.waiting(), 10);
        // The flooder itself gains nothing by arriving: it is the heaviest.
        assert_eq!(s.displace_for(&caller(1)), None);
        // The polite client is served within the next two (the flooder's oldest came first,
        // and clients alternate from there).
        let mut granted = s.release(4);
        granted.extend(s.release(4));
        assert_eq!(granted, vec![flood[0], polite]);
        assert_eq!(s.waiting(), 8);
    }

    fn on_connection(ip: u8, connection: u64) -> Caller {
        Caller {
            connection,
            ..caller(ip)
        }
    }

    #[test]
    fn inside_one_client_a_light_connection_displaces_the_heaviest_connections_newest() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        // One client (one address, or one tenant): a greedy connection and a polite one.
        let greedy: Vec<_> = (0..8)
            .map(|_| waiter_of(&mut s, &on_connection(1, 10), 4, false))
            .collect();
        let polite = waiter_of(&mut s, &on_connection(1, 20), 4, false);
        // The queue is full and the polite connection (1 place) sends again: the greedy
        // connection's newest goes, as a lighter client's arrival displaces across clients.
        assert_eq!(s.displace_for(&on_connection(1, 20)), Some(greedy[7]));
        // So does a new connection's first request.
        assert_eq!(s.displace_for(&on_connection(1, 30)), Some(greedy[6]));
        // The greedy connection gains nothing by arriving: it is the heaviest.
        assert_eq!(s.displace_for(&on_connection(1, 10)), None);
        assert_eq!(s.waiting(), 7);
        // Its oldest are still there, and the polite one is served within the next two.
        let mut granted = s.release(4);
        granted.extend(s.release(4));
        granted.sort();
        assert_eq!(granted, vec![greedy[0], polite]);
    }

    #[test]
    fn connections_with_equal_places_displace_nobody() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        for connection in [1, 2] {
            for _ in 0..3 {
                waiter_of(&mut s, &on_connection(1, connection), 4, false);
            }
        }
        assert_eq!(s.displace_for(&on_connection(1, 1)), None);
        assert_eq!(s.displace_for(&on_connection(1, 2)), None);
        assert_eq!(s.waiting(), 6);
    }

    #[test]
    fn across_clients_comes_first_and_a_connection_counts_both_queues() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        // Client 1: connection 11 holds one place, then connection 10 three (two searches,
        // then a scan).
        waiter_of(&mut s, &on_connection(1, 11), 4, false);
        let cheap: Vec<_> = (0..2)
            .map(|_| waiter_of(&mut s, &on_connection(1, 10), 4, false))
            .collect();
        let scan = waiter_of(&mut s, &on_connection(1, 10), 32, true);
        // Client 2 holds 2 places on one connection.
        let other: Vec<_> = (0..2)
            .map(|_| waiter_of(&mut s, &on_connection(2, 20), 4, false))
            .collect();
        // A lighter client's arrival: the heaviest client (1) loses its newest, the scan.
        assert_eq!(s.displace_for(&on_connection(3, 30)), Some(scan));
        // Client 1's light connection: client 1 is heaviest (3 vs 2), so its own heaviest
        // connection (10, two left) gives up its newest.
        assert_eq!(s.displace_for(&on_connection(1, 11)), Some(cheap[1]));
        // Now 2 against 2: client 2's arrival displaces nobody across clients, and its only
        // connection is its heaviest.
        assert_eq!(s.displace_for(&on_connection(2, 20)), None);
        assert_eq!(s.waiting(), 4);
        assert!(other.iter().all(|&id| id > scan));
    }

    #[test]
    fn cheap_and_expensive_queues_take_turns_by_cost() {
        // Limit 4 slots (16 units), all busy; 4 exact scans (8 units) and 8 searches (4) wait.
        let mut s = Scheduler::new(16);
        s.used_units = 16;
        let heavy: Vec<_> = (0..4).map(|_| waiter(&mut s, 8, true)).collect();
        let cheap: Vec<_> = (0..8).map(|_| waiter(&mut s, 4, false)).collect();
        // Everything finishes; who got in?
        let granted = s.release(16);
        let of = |class: &[u64]| granted.iter().filter(|id| class.contains(id)).count();
        let (h, c) = (of(&heavy), of(&cheap));
        assert_eq!(h * 8 + c * 4, 16, "the limit is filled exactly");
        assert_eq!(s.used_units, 16);
        assert!(
            c >= 2,
            "cheap requests are not starved behind exact scans: {c}"
        );
        assert!(h >= 1, "exact scans are not starved by cheap ones: {h}");
    }

    #[test]
    fn an_idle_class_leaves_the_whole_limit_to_the_other() {
        let mut s = Scheduler::new(16);
        let cheap: Vec<_> = (0..6).map(|_| waiter(&mut s, 4, false)).collect();
        assert_eq!(s.dispatch(), cheap[..4].to_vec());
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
        // At 4 ms per slot an arrival would wait 8 ms (at 6 ms per slot, 12 ms: past twice
        // the target, where every arrival is shed).
        let mut s = four_queued_on_two_slots(start);
        assert!(
            !s.too_long_a_wait(start + ms(50), ms(4), target, interval),
            "a queue younger than the interval is a burst, let in"
        );
        assert!(
            s.too_long_a_wait(start + ms(100), ms(6), target, interval),
            "a queue standing for the interval sheds arrivals past the target"
        );
        // It drains for a moment between bursts; a new burst queues up at once.
        s.nonempty_since = None;
        let at = start + ms(150);
        s.nonempty_since = Some(at);
        assert!(
            s.too_long_a_wait(at, ms(6), target, interval),
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

        // Outside a standing queue, a burst may queue, but not past the interval.
        let mut s = four_queued_on_two_slots(start);
        let at = start + ms(10);
        assert!(
            !s.too_long_a_wait(at, ms(40), target, interval),
            "80 ms: a burst"
        );
        assert!(
            s.too_long_a_wait(at, ms(60), target, interval),
            "120 ms: too long"
        );
    }

    #[test]
    fn between_one_and_two_targets_only_what_served_requests_earned_is_shed() {
        let (ms, target, interval) = (
            Duration::from_millis,
            Duration::from_millis(5),
            Duration::from_millis(100),
        );
        let start = Instant::now();
        // A standing queue whose arrivals would wait 8 ms: in the gentle band.
        let mut s = four_queued_on_two_slots(start);
        let at = start + interval;
        assert!(
            !s.too_long_a_wait(at, ms(4), target, interval),
            "nothing served yet: nothing earned, let in"
        );
        // Six requests served earn three sheds: of twenty arrivals, three are shed.
        for _ in 0..6 {
            s.served_one();
        }
        let shed = (0..20)
            .filter(|_| s.too_long_a_wait(at, ms(4), target, interval))
            .count();
        assert_eq!(shed, 3);
        // What is not needed is saved, but only a little.
        for _ in 0..100 {
            s.served_one();
        }
        let shed = (0..20)
            .filter(|_| s.too_long_a_wait(at, ms(4), target, interval))
            .count();
        assert_eq!(shed, GENTLE_SHEDS_SAVED as usize);
        // Past twice the target (12 ms), every arrival is shed, earned or not.
        assert!((0..20).all(|_| s.too_long_a_wait(at, ms(6), target, interval)));
    }

    #[test]
    fn a_cancelled_waiter_leaves_and_its_units_are_not_lost() {
        let mut s = Scheduler::new(4);
        s.used_units = 4;
        let first = waiter(&mut s, 4, false);
        // The client went away while waiting: it leaves, and nothing can start yet.
        assert_eq!(s.cancel(first), (Some(first), vec![]));
        let second = waiter(&mut s, 4, false);
        assert_eq!(s.release(4), vec![second], "the next waiter runs");
        assert_eq!(s.used_units, 4, "the cancelled one holds nothing");
        assert_eq!(s.cancel(999), (None, vec![]));
        assert_eq!(s.cancel(second), (None, vec![]), "granted: no longer waits");
    }
}
