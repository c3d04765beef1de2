//! The sending threads ("senders"): N OS threads, each running a current-thread tokio runtime,
//! each owning its share of the users, workers or arrivals of every phase and its own record.
//!
//! Why threads of their own rather than one multi-thread runtime: a request's task, its timer
//! and its record then stay on one core for the request's whole life. A work-stealing
//! runtime moves tasks between threads on wake-ups, and everything they share (a histogram,
//! a connection's lock) becomes a contended cache line, which costs several times the CPU per
//! request (figures in `docs/benchmarks.md`). Here a sender shares nothing on the request path: it records into
//! its own [`Batch`] and hands it over once a second.
//!
//! Which sender sends what depends only on the user, worker or arrival number, never on
//! timing, so the same seed sends the same requests whatever the number of senders. Each sender
//! owns its share of the connections ([`Channel`]), at least one, and as many again for each
//! other client identity a scenario sends as (see [`Sender::channel_for`]).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

use crate::measure::outcomes::Outcome;
use crate::measure::recorder::{Batch, PhaseRecorder};
use crate::plan::scenario::share;
use crate::report::progress::Progress;
use crate::wire::{Channel, Target};

/// Work for one sender: called on the sender's thread with the sender.
type Job = Box<dyn FnOnce(Rc<Sender>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The sending threads. Dropping this ends them once their work is done.
#[derive(Debug)]
pub struct Senders {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
    /// The run's target, when the load goes over our own HTTP/2 client.
    target: Option<Arc<Target>>,
}

/// One sending thread's own state, reachable only from that thread.
#[derive(Debug)]
pub struct Sender {
    /// This sender's number, `0..count`.
    pub index: u64,
    /// How many senders there are.
    pub count: u64,
    /// What this sender recorded since its last hand-over, by the recorder it is for (its
    /// address): one phase at a time, or the phases of a side-by-side scenario at once.
    batches: RefCell<Vec<(usize, Batch)>>,
    /// This sender's connections, when the load goes over our own HTTP/2 client.
    channel: Option<Rc<Channel>>,
    /// Connections as other clients (their own source address or headers), opened when a
    /// scenario first sends as them, by target.
    others: RefCell<Vec<(Arc<Target>, Rc<Channel>)>>,
    /// Connections this sender opens to a target.
    connections: usize,
    /// Searches sent, for sampling one in N for recall.
    searches: std::cell::Cell<u64>,
}

impl Senders {
    /// Starts `count` senders (0: one per CPU); with a `wire` target, each sender opens its
    /// share of `connections` (at least one) to it.
    pub fn start(count: usize, wire: Option<(Arc<Target>, usize)>) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut jobs = Vec::with_capacity(count);
        let target = wire.as_ref().map(|(target, _)| Arc::clone(target));
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let wire = wire.clone();
            std::thread::Builder::new()
                .name(format!("loadgen-sender-{index}"))
                .spawn(move || {
                    let connections = wire.as_ref().map_or(1, |(_, connections)| {
                        share(*connections as u64, index as u64, count as u64).max(1) as usize
                    });
                    let sender = Rc::new(Sender {
                        index: index as u64,
                        count: count as u64,
                        batches: RefCell::default(),
                        channel: wire.map(|(target, _)| Rc::new(Channel::new(target, connections))),
                        others: RefCell::default(),
                        connections,
                        searches: Default::default(),
                    });
                    LocalSet::new().block_on(&runtime, async move {
                        if let Some(channel) = &sender.channel {
                            channel.connect().await;
                        }
                        // Each job is a task of its own, so the phases of a scenario that
                        // runs them side by side (one per client) run at once on every sender.
                        let mut running = tokio::task::JoinSet::new();
                        while let Some(job) = rx.recv().await {
                            running.spawn_local(job(Rc::clone(&sender)));
                            while running.try_join_next().is_some() {}
                        }
                        while running.join_next().await.is_some() {}
                    });
                })?;
            jobs.push(tx);
        }
        Ok(Self { jobs, target })
    }

    /// The run's target, when the load goes over our own HTTP/2 client.
    pub fn target(&self) -> Option<&Arc<Target>> {
        self.target.as_ref()
    }

    /// How many senders there are.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Always false: there is at least one sender.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Runs `work` on every sender at once and waits until every sender has finished it.
    pub async fn run<F, Fut>(&self, work: F)
    where
        F: Fn(Rc<Sender>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut done = Vec::with_capacity(self.jobs.len());
        for jobs in &self.jobs {
            let (tx, rx) = oneshot::channel();
            let work = work.clone();
            let job: Job = Box::new(move |sender| {
                Box::pin(async move {
                    work(sender).await;
                    let _ = tx.send(());
                })
            });
            if jobs.send(job).is_ok() {
                done.push(rx);
            }
        }
        for rx in done {
            // An error means the sender's thread is gone (it panicked): nothing more to wait for.
            let _ = rx.await;
        }
    }
}

impl Sender {
    /// This sender's connections, when the load goes over our own HTTP/2 client.
    pub fn channel(&self) -> Option<&Channel> {
        self.channel.as_deref()
    }

    /// This sender's connections as the client `target` (derived from the run's with
    /// [`Target::as_client`]), opened on first use; `None`: the run's own. None at all when
    /// the load goes over tonic.
    pub fn channel_for(&self, target: Option<&Arc<Target>>) -> Option<Rc<Channel>> {
        let (Some(target), Some(_)) = (target, &self.channel) else {
            return self.channel.clone();
        };
        let mut others = self.others.borrow_mut();
        if let Some((_, channel)) = others.iter().find(|(t, _)| Arc::ptr_eq(t, target)) {
            return Some(Rc::clone(channel));
        }
        let channel = Rc::new(Channel::new(Arc::clone(target), self.connections));
        others.push((Arc::clone(target), Rc::clone(&channel)));
        Some(channel)
    }

    /// Runs `f` on this sender's batch for `recorder`. A linear search: a sender holds one batch,
    /// or one per client of a side-by-side scenario.
    fn with_batch<T>(&self, recorder: &PhaseRecorder, f: impl FnOnce(&mut Batch) -> T) -> T {
        let key = std::ptr::from_ref(recorder) as usize;
        let mut batches = self.batches.borrow_mut();
        let at = match batches.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                batches.push((key, Batch::default()));
                batches.len() - 1
            }
        };
        f(&mut batches[at].1)
    }

    /// Whether this search is one to sample: one in `every` of this sender's (0: none).
    pub fn sample_search(&self, every: u64) -> bool {
        if every == 0 {
            return false;
        }
        let n = self.searches.get() + 1;
        self.searches.set(n);
        n.is_multiple_of(every)
    }

    /// Records the outcome of one request, answered `at`, in this sender's batch for `recorder`.
    pub fn record(&self, outcome: &Outcome, recorder: &PhaseRecorder, at: std::time::Instant) {
        let timeline = recorder.timeline();
        self.with_batch(recorder, |batch| batch.record(outcome, timeline, at));
    }

    /// Counts, for `recorder`, the reason an answer failed its check.
    pub fn note_reason(&self, recorder: &PhaseRecorder, reason: &str) {
        self.with_batch(recorder, |batch| batch.note_reason(reason));
    }

    /// Counts an arrival for `recorder` that could not be sent on time.
    pub fn drop_arrival(&self, recorder: &PhaseRecorder) {
        self.with_batch(recorder, Batch::drop_arrival);
    }

    /// Hands this sender's batch for `recorder` over to it and to the progress display.
    pub fn flush(&self, recorder: &PhaseRecorder, progress: &Progress) {
        self.with_batch(recorder, |batch| {
            progress.add(batch.outcomes());
            recorder.flush(batch);
        });
    }

    /// The last hand-over to `recorder`: its batch is then forgotten.
    fn flush_last(&self, recorder: &PhaseRecorder, progress: &Progress) {
        self.flush(recorder, progress);
        let key = std::ptr::from_ref(recorder) as usize;
        self.batches.borrow_mut().retain(|(k, _)| *k != key);
    }

    /// Hands the batch over every second until the returned guard is dropped, then once more.
    pub fn flush_every_second(
        self: &Rc<Self>,
        recorder: &Arc<PhaseRecorder>,
        progress: &Progress,
    ) -> FlushGuard {
        let task = {
            let (sender, recorder, progress) =
                (Rc::clone(self), Arc::clone(recorder), progress.clone());
            tokio::task::spawn_local(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.tick().await;
                loop {
                    every.tick().await;
                    sender.flush(&recorder, &progress);
                }
            })
        };
        FlushGuard {
            task,
            sender: Rc::clone(self),
            recorder: Arc::clone(recorder),
            progress: progress.clone(),
        }
    }
}

/// Stops a sender's periodic hand-over and hands over what is left.
pub struct FlushGuard {
    task: tokio::task::JoinHandle<()>,
    sender: Rc<Sender>,
    recorder: Arc<PhaseRecorder>,
    progress: Progress,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.sender.flush_last(&self.recorder, &self.progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn every_lane_runs_the_work_on_its_own_thread() {
        let senders = Senders::start(3, None).expect("start");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        senders
            .run(move |sender| {
                let record = Arc::clone(&record);
                async move {
                    tokio::task::yield_now().await;
                    let name = std::thread::current().name().map(str::to_string);
                    record
                        .lock()
                        .expect("lock")
                        .push((sender.index, sender.count, name));
                }
            })
            .await;
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(seen.len(), 3);
        for (i, (index, count, name)) in seen.into_iter().enumerate() {
            assert_eq!((index, count), (i as u64, 3));
            assert_eq!(name, Some(format!("loadgen-sender-{i}")));
        }
    }
}
