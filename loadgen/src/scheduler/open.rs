//! The open model: requests arrive at a (ramping) rate whether or not earlier ones have
//! answered, up to `max_in_flight` at once; an arrival that finds that many outstanding is
//! counted as *dropped*, never silently skipped. Latency runs from each arrival's intended
//! time, so a scheduler that wakes late sends what is due at once and the delay still shows.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use super::senders::Sender;
use crate::measure::recorder::PhaseRecorder;
use crate::plan::scenario::share;
use crate::plan::workload::{Generator, Workload};

/// A linear ramp of arrivals per second from `from` to `to` over `duration`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrivals {
    /// Rate at the start.
    pub from: f64,
    /// Rate at the end.
    pub to: f64,
    /// How long the stage lasts.
    pub duration: Duration,
}

impl Arrivals {
    /// When the `n`-th arrival (0-based) is due, from the stage's start; `None` once there
    /// are no more (past the end, or a ramp down to zero that has run out).
    ///
    /// Arrivals so far at time t: N(t) = from*t + (to-from)*t^2/(2*duration). The n-th is at
    /// the t where N(t) = n, solved in the form that stays exact when the ramp is flat or
    /// starts at zero: t = 2n / (from + sqrt(from^2 + 2*slope*n)).
    pub fn offset(&self, n: u64) -> Option<Duration> {
        let from = self.from;
        let slope = (self.to - from) / self.duration.as_secs_f64().max(1e-9);
        let discriminant = from * from + 2.0 * slope * n as f64;
        let denominator = from + discriminant.max(0.0).sqrt();
        let offset = if n == 0 && (from > 0.0 || slope > 0.0) {
            Duration::ZERO
        } else if discriminant < 0.0 || denominator <= 0.0 {
            return None;
        } else {
            Duration::from_secs_f64(2.0 * n as f64 / denominator)
        };
        (offset < self.duration).then_some(offset)
    }
}

/// Arrival `n` draws its request from stream `n % STREAMS` (the stream's `n / STREAMS`-th
/// request), and stream `s` is sent by sender `s % senders`: each sender sends every senders-th
/// arrival of the one schedule (so its rate is the senders-th part, timed by the same
/// integral), and which request an arrival is does not depend on the number of senders.
/// 60 divides evenly among 1 to 6 senders.
const STREAMS: u64 = 60;

/// The sender that sends arrival `n` when there are `senders` senders.
fn sender_of(n: u64, senders: u64) -> u64 {
    (n % STREAMS) % senders.max(1)
}

/// Runs this sender's arrivals of the stage that started at `start`, with its share of
/// `max_in_flight`.
pub(crate) async fn run(
    ctx: &Context,
    sender: &Rc<Sender>,
    arrivals: Arrivals,
    (start, max_in_flight): (Instant, u64),
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) {
    let max_in_flight = share(max_in_flight, sender.index, sender.count).max(1);
    let slots = Arc::new(tokio::sync::Semaphore::new(max_in_flight as usize));
    let start = tokio::time::Instant::from_std(start);
    let mut streams: Vec<Option<Generator>> = (0..STREAMS).map(|_| None).collect();
    let mut tasks = JoinSet::new();
    for n in 0u64.. {
        let Some(offset) = arrivals.offset(n) else {
            break;
        };
        if sender_of(n, sender.count) != sender.index {
            continue;
        }
        if ctx.stop.is_stopped() {
            break;
        }
        let intended = start + offset;
        tokio::select! {
            () = tokio::time::sleep_until(intended) => {}
            () = ctx.stop.stopped() => break,
        }
        let stream = n % STREAMS;
        let op = streams[stream as usize]
            .get_or_insert_with(|| workload.generator(stream, STREAMS))
            .next(n / STREAMS);
        match Arc::clone(&slots).try_acquire_owned() {
            Ok(slot) => {
                let (ctx, sender, recorder) =
                    (ctx.clone(), Rc::clone(sender), Arc::clone(recorder));
                let at = intended.into_std();
                tasks.spawn_local(async move {
                    ctx.execute(&sender, op, at, &recorder).await;
                    drop(slot);
                });
            }
            Err(_) => sender.drop_arrival(recorder),
        }
        // Reap finished tasks so the set stays small on long runs.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(arrivals: Arrivals) -> u64 {
        (0u64..)
            .take_while(|&n| arrivals.offset(n).is_some())
            .count() as u64
    }

    #[test]
    fn a_flat_rate_is_evenly_spaced() {
        let flat = Arrivals {
            from: 100.0,
            to: 100.0,
            duration: Duration::from_secs(2),
        };
        assert_eq!(flat.offset(0), Some(Duration::ZERO));
        let gap = |n: u64| flat.offset(n).map(|d| (d.as_secs_f64() * 1e6).round());
        assert_eq!(gap(1), Some(10_000.0));
        assert_eq!(gap(150), Some(1_500_000.0));
        assert_eq!(count(flat), 200);
    }

    #[test]
    fn a_ramp_sends_its_integral_in_order() {
        // 0 -> 100 per second over 10 s: 500 arrivals in all, 125 in the first 5 s.
        let up = Arrivals {
            from: 0.0,
            to: 100.0,
            duration: Duration::from_secs(10),
        };
        assert_eq!(count(up), 500);
        let before_5s = (0u64..)
            .take_while(|&n| up.offset(n).is_some_and(|t| t < Duration::from_secs(5)))
            .count();
        assert!((125..=126).contains(&before_5s), "{before_5s}");
        let times: Vec<Duration> = (0..500).filter_map(|n| up.offset(n)).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]));
        // And down to zero: the same integral, then no more.
        let down = Arrivals {
            from: 100.0,
            to: 0.0,
            duration: Duration::from_secs(10),
        };
        assert!((499..=501).contains(&count(down)), "{}", count(down));
        let none = Arrivals {
            from: 0.0,
            to: 0.0,
            duration: Duration::from_secs(10),
        };
        assert_eq!(count(none), 0);
    }

    #[test]
    fn lanes_take_turns_and_every_arrival_is_sent_once() {
        for senders in 1..=4u64 {
            let mut sent = vec![0u32; 600];
            for sender in 0..senders {
                for (n, times) in sent.iter_mut().enumerate() {
                    *times += u32::from(sender_of(n as u64, senders) == sender);
                }
            }
            assert!(sent.iter().all(|&t| t == 1), "{senders} senders");
        }
        // Two senders alternate: each sends half the rate on the same schedule.
        assert_eq!(
            (0..6).map(|n| sender_of(n, 2)).collect::<Vec<_>>(),
            [0, 1, 0, 1, 0, 1]
        );
    }
}
