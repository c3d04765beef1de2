//! Where the server's CPU goes: index work (searches, text embedding, applying and indexing
//! writes) against everything else, which is the request path above all (accepting
//! connections, TLS, HTTP/2, admission, refusals, health, `Stats`, metrics).
//!
//! The no-collapse promise is about this split: under a flood, the request path must not eat
//! the CPU that index work needs. Index work is timed with the thread's own CPU clock around
//! each piece of it ([`IndexWork`]), so it is exact whatever the threads do in between; the
//! rest is the process's CPU time less that. Both are counters, exposed as
//! `vecrig_cpu_seconds_total{part="index"|"serving"}`: the serving CPU over the answers given
//! in the same interval is the CPU an answer costs the request path, and under a flood, where
//! almost every answer is a refusal, the CPU a refusal costs.
//!
//! Each piece of index work reads the thread CPU clock twice (a system call each, well under a
//! microsecond): nothing next to a search or an applied write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// CPU time spent in index work since start, in nanoseconds.
static INDEX_NS: AtomicU64 = AtomicU64::new(0);

/// A piece of index work: lowers the thread's priority (`crate::priority`), and adds the
/// thread's CPU time from its start to its drop to the index's share.
#[derive(Debug)]
pub struct IndexWork {
    started: Duration,
}

impl IndexWork {
    /// Starts timing index work on this thread (and lowers its priority, once per thread).
    pub fn begin() -> Self {
        crate::priority::as_index_work();
        Self::timed()
    }

    /// Starts timing index work on this thread at the thread's own priority: for work that
    /// runs in place on a thread that must keep its priority for the rest of what it does
    /// (see `crate::engine::run_searches_inline_on_this_thread`).
    pub fn in_place() -> Self {
        Self::timed()
    }

    fn timed() -> Self {
        Self {
            started: thread_cpu(),
        }
    }
}

impl Drop for IndexWork {
    fn drop(&mut self) {
        let spent = thread_cpu().saturating_sub(self.started);
        INDEX_NS.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// The process's CPU time, split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSplit {
    /// Seconds of index work since start.
    pub index_s: f64,
    /// Seconds of everything else since start (the request path above all).
    pub serving_s: f64,
}

/// The split since start.
pub fn split() -> CpuSplit {
    // Read the index's share first: work finishing between the two reads then counts in the
    // process's total, never the other way round (which could make the rest negative).
    let index = Duration::from_nanos(INDEX_NS.load(Ordering::Relaxed));
    let process = process_cpu();
    CpuSplit {
        index_s: index.as_secs_f64(),
        serving_s: process.saturating_sub(index).as_secs_f64(),
    }
}

fn thread_cpu() -> Duration {
    clock(rustix::time::ClockId::ThreadCPUTime)
}

fn process_cpu() -> Duration {
    clock(rustix::time::ClockId::ProcessCPUTime)
}

fn clock(id: rustix::time::ClockId) -> Duration {
    let t = rustix::time::clock_gettime(id);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Burning CPU on purpose, for tests that measure it.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// Spins on this thread for at least this much of its CPU time.
    pub fn spin(for_at_least: Duration) {
        let started = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - started < for_at_least {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::spin;
    use super::*;

    #[test]
    fn index_work_is_counted_in_the_index_share_and_the_rest_is_not() {
        let before = split();
        std::thread::spawn(|| {
            let _work = IndexWork::begin();
            spin(Duration::from_millis(30));
        })
        .join()
        .expect("thread");
        // Outside any piece of index work: the serving share.
        spin(Duration::from_millis(30));
        let after = split();
        let index = after.index_s - before.index_s;
        let serving = after.serving_s - before.serving_s;
        assert!(index >= 0.030, "index share grew by the work: {index}");
        // Other tests may run index work at the same time, so only a lower bound holds for
        // the rest too.
        assert!(
            serving >= 0.020,
            "the rest grew by the spin outside: {serving}"
        );
    }
}
