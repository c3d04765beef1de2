//! The closed model with a fixed number of users: each user sends its next request when the
//! previous one answered (plus an optional think time), so throughput is whatever the server
//! allows. Users may be started in groups (`stagger`), as a crowd arriving.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::context::Context;
use crate::stats::Recorder;
use crate::workload::Workload;

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

/// Whether a pause comes before starting `user`: after every `every` users.
fn pause_before(user: u64, stagger: Option<(u64, Duration)>) -> Option<Duration> {
    let (every, pause) = stagger?;
    (user > 0 && user.is_multiple_of(every)).then_some(pause)
}

pub(crate) async fn run(
    ctx: &Context,
    spec: Users,
    workload: &Arc<Workload>,
    recorder: &Arc<Recorder>,
) {
    let Users {
        users,
        iterations,
        duration,
        think,
        stagger,
    } = spec;
    let deadline = duration.map(|d| Instant::now() + d);
    let over = move || deadline.is_some_and(|d| Instant::now() >= d);
    let mut tasks = JoinSet::new();
    for user in 0..users {
        if let Some(pause) = pause_before(user, stagger) {
            tokio::time::sleep(pause).await;
        }
        if ctx.stop.is_stopped() || over() {
            break;
        }
        let (ctx, workload, recorder) = (ctx.clone(), Arc::clone(workload), Arc::clone(recorder));
        tasks.spawn(async move {
            let mut requests = workload.generator(user, users);
            let mut i = 0;
            while iterations.is_none_or(|n| i < n) && !ctx.stop.is_stopped() && !over() {
                let op = requests.next(i);
                ctx.execute(op, Instant::now(), &recorder).await;
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
        let pauses: Vec<u64> = (0..7)
            .filter(|&u| pause_before(u, Some((3, second))).is_some())
            .collect();
        assert_eq!(pauses, [3, 6]);
        assert!((0..7).all(|u| pause_before(u, None).is_none()));
        assert!((0..7).all(|u| pause_before(u, Some((0, second))).is_none()));
    }
}
