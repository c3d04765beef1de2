//! Index work runs at a lower CPU priority than the request path.
//!
//! When searches saturate the CPU, the threads that accept connections, decode requests,
//! admit them and shed the excess must still get the CPU at once: a shed answer that waits
//! behind searches for its turn on a core is no longer cheap or fast, and the queue that
//! admission measures is no longer the queue that requests actually wait in (they would wait
//! unread in socket buffers instead). So every thread that runs index work (searches and
//! text embedding on the blocking pool, the single writer that logs and applies upserts)
//! lowers its own priority once, by `--index-nice` (Linux per-thread nice values; CFS then
//! gives a woken request-path thread the core within its wake-up granularity). When the
//! request path is idle, index work still gets every core: nice weighs shares, it reserves
//! nothing.
//!
//! One exception: an approximate search that the runtime of admitted work runs in place runs
//! at that runtime's priority (`crate::engine::run_searches_inline_on_this_thread` says why).
//!
//! Only ever lowered: raising it back needs privileges a server should not have, so a thread
//! of the blocking pool that ran index work once stays lowered (the pool runs little else:
//! opening and closing the storage).

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};

/// The default nice increment of index work.
pub const DEFAULT_INDEX_NICE: i32 = 10;

/// The priority flag (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Nice increment of index work (searches, embedding, the writer) relative to the request
    /// path, so that a saturated index cannot delay admission and shedding (0: off).
    #[arg(long, env = "VECRIG_INDEX_NICE", default_value_t = DEFAULT_INDEX_NICE)]
    pub index_nice: i32,
}

/// The increment in force (one per process: thread priority is a process-wide resource).
static INDEX_NICE: AtomicI32 = AtomicI32::new(DEFAULT_INDEX_NICE);

/// Sets the nice increment of index work for threads that have not lowered theirs yet
/// (0 turns it off; at most 19).
pub fn set_index_nice(increment: i32) {
    INDEX_NICE.store(increment.clamp(0, 19), Ordering::Relaxed);
}

/// Lowers the calling thread's priority by the index-work increment, once per thread.
pub fn as_index_work() {
    thread_local! {
        static LOWERED: Cell<bool> = const { Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            lower_this_thread(INDEX_NICE.load(Ordering::Relaxed));
        }
    });
}

#[cfg(target_os = "linux")]
fn lower_this_thread(increment: i32) {
    if increment <= 0 {
        return;
    }
    // On Linux, PRIO_PROCESS with `who = 0` names the calling thread, not the whole process
    // (nice values are per thread there; see setpriority(2), BUGS).
    let lowered = rustix::process::getpriority_process(None).and_then(|current| {
        rustix::process::setpriority_process(None, (current + increment).min(19))
    });
    if let Err(error) = lowered {
        tracing::debug!(%error, "could not lower the priority of index work");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_thread(_increment: i32) {
    // Elsewhere PRIO_PROCESS would lower the whole process, request path included.
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice_of_this_thread() -> i32 {
        rustix::process::getpriority_process(None).expect("getpriority")
    }

    #[test]
    fn index_work_lowers_only_its_own_thread_and_only_once() {
        let main = nice_of_this_thread();
        let (first, second) = std::thread::spawn(|| {
            let before = nice_of_this_thread();
            as_index_work();
            let first = nice_of_this_thread() - before;
            as_index_work();
            (first, nice_of_this_thread() - before)
        })
        .join()
        .expect("thread");
        // Already at 19 (a build run with `nice -n 19`), there is nothing lower to go.
        if main + DEFAULT_INDEX_NICE <= 19 {
            assert_eq!(first, DEFAULT_INDEX_NICE);
        }
        assert_eq!(second, first, "lowered once, not twice");
        assert_eq!(
            nice_of_this_thread(),
            main,
            "other threads keep their priority"
        );
    }
}
