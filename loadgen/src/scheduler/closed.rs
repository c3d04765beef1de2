//! The closed model with a fixed number of users: each user sends its next request when the
//! previous one answered (plus an optional think time), so throughput is whatever the server
//! allows. Users may be started in groups (`stagger`), as a crowd arriving. User `u` is sent
//! by sender `u % senders`, with its own request generator, so the requests do not depend on the
//! number of senders.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use super::senders::Sender;
use crate::measure::recorder::PhaseRecorder;
use crate::plan::workload::Workload;

/// The users and how long they run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Users {
    /// Concurrent users.
    pub users: u64,
    /// Requests per user; `None`: until `duration` ends.
    pub iterations: Option<u64>,
    /// How long the phase lasts.
    pub duration: Option<Duration>,
    /// Pause after each answer.
    pub think: Duration,
    /// After every `.0` users, pause `.1` before starting the next.
    pub stagger: Option<(u64, Duration)>,
}

/// When `user` starts, from the phase's start: after every `every` users, a pause.
fn start_of(user: u64, stagger: Option<(u64, Duration)>) -> Duration {
    match stagger {
        Some((every, pause)) if every > 0 => pause.saturating_mul((user / every) as u32),
        _ => Duration::ZERO,
    }
}

/// Runs this sender's users (`sender.index`, `sender.index + sender.count`, ...) of the phase that
/// started at `start`.
pub(crate) async fn run(
    ctx: &Context,
    sender: &Rc<Sender>,
    spec: Users,
    start: Instant,
    workload: &Arc<Workload>,
    recorder: &Arc<PhaseRecorder>,
) {
    let Users {
        users,
        iterations,
        duration,
        think,
        stagger,
    } = spec;
    let deadline = duration.map(|d| start + d);
    let mut tasks = JoinSet::new();
    for user in (sender.index..users).step_by(sender.count.max(1) as usize) {
        let (ctx, sender, workload, recorder) = (
            ctx.clone(),
            Rc::clone(sender),
            Arc::clone(workload),
            Arc::clone(recorder),
        );
        tasks.spawn_local(async move {
            let starts = start + start_of(user, stagger);
            tokio::select! {
                () = tokio::time::sleep_until(starts.into()) => {}
                () = ctx.stop.stopped() => return,
            }
            let mut requests = workload.generator(user, users);
            let mut i = 0;
            while iterations.is_none_or(|n| i < n) && !ctx.stop.is_stopped() {
                // One clock read: the end of the phase, and the request's intended time.
                let intended = Instant::now();
                if deadline.is_some_and(|d| intended >= d) {
                    break;
                }
                let op = requests.next(i);
                if matches!(op, crate::plan::workload::Op::Done) {
                    break;
                }
                ctx.execute(&sender, op, intended, &recorder).await;
                i += 1;
                if !think.is_zero() {
                    tokio::time::sleep(think).await;
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staggered_users_start_in_groups() {
        let second = Duration::from_secs(1);
        let starts: Vec<u64> = (0..7)
            .map(|u| start_of(u, Some((3, second))).as_secs())
            .collect();
        assert_eq!(starts, [0, 0, 0, 1, 1, 1, 2]);
        assert!((0..7).all(|u| start_of(u, None).is_zero()));
        assert!((0..7).all(|u| start_of(u, Some((0, second))).is_zero()));
    }
}
