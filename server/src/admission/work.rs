//! [`WorkRuntime`]: admitted work runs on a tokio runtime of its own, apart from the request
//! path's.
//!
//! Why: a tokio runtime polls its ready tasks first come, first served. Under a flood the
//! request path's runtime has thousands of ready tasks (every stream being read, priced and
//! refused), and each step of a served request (its grant from the queue, the hand-off to the
//! search thread, the search's completion, the release of its slot) used to wait for a turn
//! behind all of them. The slots then sat idle between steps: measured with a closed-loop
//! 64 x 64 stream flood on a one-CPU server and pacing off, the index got 0.27 s of CPU in
//! 8 s (70 searches a second of a capacity of 3,300) while the request path refused 80,000
//! a second. Nice values cannot help there: the index threads were idle, waiting for the
//! runtime to hand them work.
//!
//! So the request path only decides what can be decided at a glance (queue full, standing
//! queue: [`super::Admission`]'s step 1) and sends everything else to this runtime: the wait
//! for a slot, decoding, the handler (whose searches go to this runtime's blocking pool),
//! and releasing the slot to the next waiter. Its run queue holds admitted and queued work
//! only, so slots turn over at once whatever the flood; the answer goes back to the request
//! path's task, and is sent when that runtime gets to it (the slot is free by then).

use std::future::Future;

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

/// Runs `work` on `handle`'s runtime; dropping the returned future cancels it there (a
/// client that gives up, or a passed deadline, frees its queue place or slot at once). An
/// error means the work did not finish: the runtime dropped it (shutting down), or it
/// panicked.
pub fn run_on<F>(
    handle: &Handle,
    work: F,
) -> impl Future<Output = Result<F::Output, tokio::task::JoinError>> + Send + use<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let task = AbortOnDrop(handle.spawn(work));
    async move {
        let mut task = task;
        (&mut task.0).await
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
