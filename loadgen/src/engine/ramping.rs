//! The closed model with ramping users: a controller adds or retires users every 100 ms to
//! follow a linear ramp; a retired user finishes its request in flight and stops.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use super::model::ramp;
use crate::stats::Recorder;
use crate::workload::Workload;

/// How often the controller follows the ramp.
const STEP: Duration = Duration::from_millis(100);

/// Users wanted `elapsed` into a ramp from `from` to `to` users over `duration`.
fn users_at(from: u64, to: u64, duration: Duration, elapsed: Duration) -> usize {
    ramp(from as f64, to as f64, duration, elapsed).round() as usize
}

pub(crate) async fn run(
    ctx: &Context,
    (from, to): (u64, u64),
    duration: Duration,
    think: Duration,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let start = Instant::now();
    let mut active: Vec<Arc<AtomicBool>> = Vec::new();
    let mut tasks = JoinSet::new();
    let mut next_user = 0u64;
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration || ctx.stop.is_stopped() {
            break;
        }
        let want = users_at(from, to, duration, elapsed);
        while active.len() < want {
            let running = Arc::new(AtomicBool::new(true));
            active.push(Arc::clone(&running));
            let (ctx, workload, recorder) =
                (ctx.clone(), Arc::clone(workload), Arc::clone(recorder));
            let user = next_user;
            next_user += 1;
            tasks.spawn(async move {
                let mut requests = workload.generator(user, from.max(to));
                let mut i = 0;
                while running.load(Ordering::Acquire)
                    && !ctx.stop.is_stopped()
                    && start.elapsed() < duration
                {
                    ctx.execute(requests.next(i), Instant::now(), &recorder)
                        .await;
                    i += 1;
                    if !think.is_zero() {
                        tokio::time::sleep(think).await;
                    }
                }
            });
        }
        while active.len() > want {
            if let Some(user) = active.pop() {
                user.store(false, Ordering::Release);
            }
        }
        tokio::time::sleep(STEP).await;
    }
    for user in &active {
        user.store(false, Ordering::Release);
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_follow_the_ramp_up_and_down() {
        let ten = Duration::from_secs(10);
        let at = |s: u64| users_at(0, 100, ten, Duration::from_secs(s));
        assert_eq!((at(0), at(5), at(10), at(11)), (0, 50, 100, 100));
        let down = |ms: u64| users_at(10, 0, ten, Duration::from_millis(ms));
        assert_eq!((down(0), down(2_500), down(10_000)), (10, 8, 0));
    }
}
