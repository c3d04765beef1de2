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
//!
//! The request path's threads (the lanes, `crate::net::lanes`) also ask the kernel for a short
//! time slice, `--request-slice` ([`as_request_path`]; Linux 6.12 and later, EEVDF's custom
//! slices; older kernels take the call and keep their default). Why: on a CPU shared by a
//! flood's lane, the runtime of admitted work and a polite client's lane, each thread runs
//! for the default slice (0.75 ms times one plus log2 of the CPUs) before the next one's
//! turn, and the polite client's request waits for up to two of them, once to be read and
//! once for its search. A thread with a short slice is also picked sooner when it wakes, so
//! the polite client's tail latency comes down (figures in `docs/overload.md`). Nothing is
//! reserved: a short slice is a shorter turn, not a larger share of the CPU. But turns cost
//! thread switches, so one client saturating the CPU gets a few percent fewer searches a
//! second, and a server that only ever has one client is better off with
//! `--request-slice 0s`.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

/// The default nice increment of index work.
pub const DEFAULT_INDEX_NICE: i32 = 10;

/// The priority flag (flattened into the server's).
#[derive(Debug, Clone, clap::Args)]
#[group(skip)]
pub struct Args {
    /// Nice increment of index work (searches, embedding, the writer) relative to the request
    /// path, so that a saturated index cannot delay admission and shedding (0: off).
    #[arg(long, env = "VECRIG_INDEX_NICE", default_value_t = DEFAULT_INDEX_NICE)]
    pub index_nice: i32,
    /// Time slice the request path's threads ask the kernel for (Linux 6.12+; 0s: the
    /// kernel's default), so that reading and answering a polite client's request waits less
    /// behind a flood's (0.1 ms to 100 ms).
    #[arg(long, env = "VECRIG_REQUEST_SLICE", default_value = "100us", value_parser = humantime::parse_duration, hide = true)]
    pub request_slice: Duration,
}

/// The request path's slice in force, in nanoseconds (0: the kernel's default).
static REQUEST_SLICE_NS: AtomicU64 = AtomicU64::new(0);

/// The slices the kernel accepts for `SCHED_OTHER` threads.
const SLICE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_millis(100);

/// Sets the slice that request-path threads started from now on ask for (zero: none; others
/// are brought into the range the kernel accepts).
pub fn set_request_slice(slice: Duration) {
    REQUEST_SLICE_NS.store(slice_ns(slice), Ordering::Relaxed);
}

/// `slice` in nanoseconds, brought into [`SLICE_RANGE`] (zero stays zero: none asked for).
fn slice_ns(slice: Duration) -> u64 {
    if slice.is_zero() {
        return 0;
    }
    slice
        .clamp(*SLICE_RANGE.start(), *SLICE_RANGE.end())
        .as_nanos() as u64
}

/// Asks for the request path's slice for the calling thread (see the module docs).
pub fn as_request_path() {
    let slice = REQUEST_SLICE_NS.load(Ordering::Relaxed);
    if slice > 0 {
        ask_for_slice(slice);
    }
}

/// `struct sched_attr` of sched_setattr(2), as far as `SCHED_ATTR_SIZE_VER1`.
#[cfg(target_os = "linux")]
#[repr(C)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    /// For `SCHED_OTHER` (Linux 6.12+): the slice requested, in nanoseconds.
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn ask_for_slice(slice_ns: u64) {
    // sched_setattr sets the nice value too: keep this thread's.
    let nice = rustix::process::getpriority_process(None).unwrap_or(0);
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: 0, // SCHED_OTHER
        flags: 0,
        nice,
        priority: 0,
        runtime: slice_ns,
        deadline: 0,
        period: 0,
        util_min: 0,
        util_max: 0,
    };
    // SAFETY: sched_setattr(2) with pid 0 (the calling thread) only reads `size` bytes of
    // `attr`, a live, initialised `repr(C)` value of the layout the kernel defines for that
    // size; it writes nothing. rustix has no binding for it.
    let result = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0) };
    if result != 0 {
        tracing::debug!(
            error = %std::io::Error::last_os_error(),
            "could not ask for a short time slice for the request path"
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn ask_for_slice(_slice_ns: u64) {
    // Custom slices are Linux's (EEVDF).
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
    fn the_request_path_keeps_its_nice_value_when_it_asks_for_a_short_slice() {
        let nice = std::thread::spawn(|| {
            let before = nice_of_this_thread();
            ask_for_slice(100_000);
            (before, nice_of_this_thread())
        })
        .join()
        .expect("thread");
        assert_eq!(nice.0, nice.1);
    }

    #[test]
    fn request_slices_are_brought_into_the_kernels_range() {
        // A pure function: other tests of this process start servers, which set the slice.
        assert_eq!(slice_ns(Duration::from_micros(10)), 100_000);
        assert_eq!(slice_ns(Duration::from_micros(250)), 250_000);
        assert_eq!(slice_ns(Duration::from_secs(1)), 100_000_000);
        assert_eq!(slice_ns(Duration::ZERO), 0);
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
