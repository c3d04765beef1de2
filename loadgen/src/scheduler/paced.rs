//! The paced model (wrk2's): `workers` senders at a fixed total rate on a fixed schedule,
//! each waiting for its answer before the next; latency runs from each request's intended
//! time, so a stall shows in full instead of being hidden by senders waiting. Worker `w` is
//! sent by sender `w % senders`.
//!
//! A worker still behind its schedule when the phase's time is up sends nothing more: the
//! requests it had not sent yet are counted as *dropped*, as the open model counts arrivals
//! it could not send on time. Else a server that stops answering (frozen, or a partition
//! that keeps the sockets open) would make each worker wait out one deadline per request
//! still due, and the phase would run on for `requests x deadline` past its end.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use super::senders::Sender;
use crate::measure::recorder::PhaseRecorder;
use crate::plan::workload::Workload;

/// Workers sending `rate` requests per second in total for `duration`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacing {
    /// Concurrent workers.
    pub workers: u64,
    /// Total requests per second.
    pub rate: f64,
    /// How long the phase lasts.
    pub duration: Duration,
}

impl Pacing {
    /// When `worker`'s `n`-th request is due, from the phase's start; `None` past the end.
    /// Each worker sends every `workers / rate`; workers are offset evenly within one gap.
    pub fn offset(&self, worker: u64, n: u64) -> Option<Duration> {
        let workers = self.workers.max(1);
        let gap = Duration::from_secs_f64(workers as f64 / self.rate.max(1e-6));
        let offset = gap.mul_f64(worker as f64 / workers as f64) + gap.mul_f64(n as f64);
        (offset < self.duration).then_some(offset)
    }
}

/// Runs this sender's workers (`sender.index`, `sender.index + sender.count`, ...) of the phase that
/// started at `start`.
pub(crate) async fn run(
    ctx: &Context,
    sender: &Rc<Sender>,
    pacing: Pacing,
    start: Instant,
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) {
    let workers = pacing.workers.max(1);
    let start = tokio::time::Instant::from_std(start);
    let end = start + pacing.duration;
    let mut tasks = JoinSet::new();
    for worker in (sender.index..workers).step_by(sender.count.max(1) as usize) {
        let (ctx, sender, workload, recorder) = (
            ctx.clone(),
            Rc::clone(sender),
            Arc::clone(workload),
            Arc::clone(recorder),
        );
        tasks.spawn_local(async move {
            let mut requests = workload.generator(worker, workers);
            for n in 0u64.. {
                let Some(offset) = pacing.offset(worker, n) else {
                    break;
                };
                if ctx.stop.is_stopped() {
                    break;
                }
                if tokio::time::Instant::now() >= end {
                    // Bounded by the schedule: at most rate x duration / workers.
                    let left = (n..).map_while(|m| pacing.offset(worker, m)).count();
                    (0..left).for_each(|_| sender.drop_arrival(&recorder));
                    break;
                }
                let intended = start + offset;
                tokio::select! {
                    () = tokio::time::sleep_until(intended) => {}
                    () = ctx.stop.stopped() => break,
                }
                let op = requests.next(n);
                ctx.execute(&sender, op, intended.into_std(), &recorder)
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_interleave_at_the_total_rate() {
        let pacing = Pacing {
            workers: 4,
            rate: 100.0,
            duration: Duration::from_secs(1),
        };
        let mut all: Vec<Duration> = (0..4)
            .flat_map(|w| (0u64..).map_while(move |n| pacing.offset(w, n)))
            .collect();
        assert_eq!(all.len(), 100);
        all.sort();
        // Evenly spread: every 10 ms, across the workers.
        for (i, t) in all.iter().enumerate() {
            assert!(
                (t.as_secs_f64() - i as f64 * 0.01).abs() < 1e-6,
                "{i}: {t:?}"
            );
        }
        assert_eq!(pacing.offset(1, 0), Some(Duration::from_millis(10)));
        assert_eq!(pacing.offset(1, 1), Some(Duration::from_millis(50)));
    }
}
