//! The closed model with ramping users: a controller adds or retires users every 100 ms to
//! follow a linear ramp; a retired user finishes its request in flight and stops. Each sender
//! runs its share of the users wanted (users `sender`, `sender + senders`, ...), so together they
//! follow the ramp and user `u` sends the same requests whatever the number of senders.

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use super::senders::Sender;
use crate::measure::recorder::PhaseRecorder;
use crate::plan::scenario::{ramp, share};
use crate::plan::workload::Workload;

/// How often the controller follows the ramp.
const STEP: Duration = Duration::from_millis(100);

/// Users wanted `elapsed` into a ramp from `from` to `to` users over `duration`.
fn users_at(from: u64, to: u64, duration: Duration, elapsed: Duration) -> usize {
    ramp(from as f64, to as f64, duration, elapsed).round() as usize
}

/// Runs this sender's share of the ramp that started at `start`: users `sender.index`,
/// `sender.index + sender.count`, ... of the ramp's user numbers, as many as the sender's share of
/// the users wanted at each step.
pub(crate) async fn run(
    ctx: &Context,
    sender: &Rc<Sender>,
    (from, to): (u64, u64),
    (start, duration): (Instant, Duration),
    think: Duration,
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) {
    let mut active: Vec<Arc<AtomicBool>> = Vec::new();
    let mut tasks = JoinSet::new();
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration || ctx.stop.is_stopped() {
            break;
        }
        let want = share(
            users_at(from, to, duration, elapsed) as u64,
            sender.index,
            sender.count,
        ) as usize;
        while active.len() < want {
            let running = Arc::new(AtomicBool::new(true));
            let user = sender.index + sender.count * active.len() as u64;
            active.push(Arc::clone(&running));
            let (ctx, sender, workload, recorder) = (
                ctx.clone(),
                Rc::clone(sender),
                Arc::clone(workload),
                Arc::clone(recorder),
            );
            tasks.spawn_local(async move {
                let mut requests = workload.generator(user, from.max(to));
                let mut i = 0;
                loop {
                    // One clock read: the end of the stage, and the request's intended time.
                    let intended = Instant::now();
                    if !running.load(Ordering::Acquire)
                        || ctx.stop.is_stopped()
                        || intended.saturating_duration_since(start) >= duration
                    {
                        break;
                    }
                    let op = requests.next(i);
                    ctx.execute(&sender, op, intended, &recorder).await;
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

    #[test]
    fn lanes_share_the_users_wanted() {
        for want in [0u64, 1, 5, 8] {
            let parts: Vec<u64> = (0..3).map(|sender| share(want, sender, 3)).collect();
            assert_eq!(parts.iter().sum::<u64>(), want);
            // Sender l runs users l, l + 3, ...: together, users 0..want, each once.
            let mut users: Vec<u64> = (0..3)
                .flat_map(|l| (0..parts[l as usize]).map(move |j| l + 3 * j))
                .collect();
            users.sort();
            assert_eq!(users, (0..want).collect::<Vec<_>>());
        }
    }
}
