//! [`WorkRuntime`]: admitted work runs on a tokio runtime of its own, apart from the request
//! path's.
//!
//! Why: a tokio runtime polls its ready tasks first come, first served. Under a flood the
//! request path's runtime has thousands of ready tasks (every stream being read, priced and
//! refused), and each step of a served request (its grant from the queue, the hand-off to the
//! search thread, the search's completion, the release of its slot) would wait for a turn
//! behind all of them, and the slots would sit idle between steps while the request path
//! refused (figures in `docs/overload.md`). Nice values cannot help there: the index threads are
//! idle, waiting for the runtime to hand them work.
//!
//! So the request path only decides what can be decided at once (queue full, standing queue,
//! the price of the request and its place in the fair queue: [`super::Admission::enter`] and
//! [`super::Admission::admit`]), and this runtime runs admitted requests: decoding, the
//! handler (whose approximate searches its workers run in place, one worker per CPU:
//! [`crate::engine::run_searches_inline_on_this_thread`]), and releasing the slot, which
//! starts the next waiter here at once (`super::Launch`). Its run queue holds admitted work
//! only, so slots turn over at once whatever the flood, and in the fair queue's order; the
//! answer goes back to the request path's task, and is sent when that runtime gets to it (the
//! slot is free by then).

use tokio::runtime::{Handle, Runtime};

/// The runtime of admitted work; shut down (without waiting) when dropped.
#[derive(Debug)]
pub struct WorkRuntime {
    runtime: Option<Runtime>,
}

impl WorkRuntime {
    /// A multi-thread runtime with one worker per CPU this process may run on.
    pub fn new() -> std::io::Result<Self> {
        let workers = std::thread::available_parallelism().map_or(1, usize::from);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name("vecrig-work")
            // Its workers run approximate searches in place (the engine's reasons); its blocking
            // pool, the exact scans.
            .on_thread_start(crate::engine::run_searches_inline_on_this_thread)
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Where admitted work is spawned.
    pub fn handle(&self) -> Handle {
        match &self.runtime {
            Some(runtime) => runtime.handle().clone(),
            None => unreachable!("the runtime lives until drop"),
        }
    }
}

impl Drop for WorkRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its tasks stop, which tokio forbids inside another
        // runtime (where the server is dropped); whatever still runs here is abandoned work
        // whose answers nobody waits for any more.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
