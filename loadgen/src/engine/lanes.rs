//! The sending threads ("lanes"): N OS threads, each running a current-thread tokio runtime,
//! each owning its share of the users, workers or arrivals of every phase and its own record.
//!
//! Why threads of their own rather than one multi-thread runtime: a request's task, its timer
//! and its record then stay on one core for the request's whole life. A work-stealing
//! runtime moves tasks between threads on wake-ups, and everything they share (a histogram,
//! a connection's lock) becomes a contended cache line; the measured cost was up to 3x
//! h2load's CPU per request. Here a lane shares nothing on the request path: it records into
//! its own [`Batch`] and hands it over once a second.
//!
//! Which lane sends what depends only on the user, worker or arrival number, never on
//! timing, so the same seed sends the same requests whatever the number of lanes. Each lane
//! owns its share of the connections ([`Channel`]), at least one.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::LocalSet;

use super::model::share;
use crate::progress::Progress;
use crate::stats::{Batch, Outcome, Recorder};
use crate::wire::{Channel, Target};

/// Work for one lane: called on the lane's thread with the lane.
type Job = Box<dyn FnOnce(Rc<Lane>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// The sending threads. Dropping this ends them once their work is done.
#[derive(Debug)]
pub struct Lanes {
    jobs: Vec<mpsc::UnboundedSender<Job>>,
}

/// One sending thread's own state, reachable only from that thread.
#[derive(Debug)]
pub struct Lane {
    /// This lane's number, `0..count`.
    pub index: u64,
    /// How many lanes there are.
    pub count: u64,
    batch: RefCell<Batch>,
    /// This lane's connections, when the load goes over our own HTTP/2 client.
    channel: Option<Channel>,
}

impl Lanes {
    /// Starts `count` lanes (0: one per CPU); with a `wire` target, each lane opens its
    /// share of `connections` (at least one) to it.
    pub fn start(count: usize, wire: Option<(Arc<Target>, usize)>) -> std::io::Result<Self> {
        let count = match count {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut jobs = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
            let wire = wire.clone();
            std::thread::Builder::new()
                .name(format!("loadgen-lane-{index}"))
                .spawn(move || {
                    let lane = Rc::new(Lane {
                        index: index as u64,
                        count: count as u64,
                        batch: RefCell::default(),
                        channel: wire.map(|(target, connections)| {
                            let share = share(connections as u64, index as u64, count as u64);
                            Channel::new(target, share.max(1) as usize)
                        }),
                    });
                    LocalSet::new().block_on(&runtime, async move {
                        if let Some(channel) = &lane.channel {
                            channel.connect().await;
                        }
                        while let Some(job) = rx.recv().await {
                            job(Rc::clone(&lane)).await;
                        }
                    });
                })?;
            jobs.push(tx);
        }
        Ok(Self { jobs })
    }

    /// How many lanes there are.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Always false: there is at least one lane.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Runs `work` on every lane at once and waits until every lane has finished it.
    pub async fn run<F, Fut>(&self, work: F)
    where
        F: Fn(Rc<Lane>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut done = Vec::with_capacity(self.jobs.len());
        for jobs in &self.jobs {
            let (tx, rx) = oneshot::channel();
            let work = work.clone();
            let job: Job = Box::new(move |lane| {
                Box::pin(async move {
                    work(lane).await;
                    let _ = tx.send(());
                })
            });
            if jobs.send(job).is_ok() {
                done.push(rx);
            }
        }
        for rx in done {
            // An error means the lane's thread is gone (it panicked): nothing more to wait for.
            let _ = rx.await;
        }
    }
}

impl Lane {
    /// This lane's connections, when the load goes over our own HTTP/2 client.
    pub fn channel(&self) -> Option<&Channel> {
        self.channel.as_ref()
    }

    /// Records the outcome of one request, answered `at`, in this lane's batch.
    pub fn record(&self, outcome: &Outcome, recorder: &Recorder, at: std::time::Instant) {
        let timeline = recorder.timeline();
        self.batch.borrow_mut().record(outcome, timeline, at);
    }

    /// Counts an arrival that could not be sent on time.
    pub fn drop_arrival(&self) {
        self.batch.borrow_mut().drop_arrival();
    }

    /// Hands this lane's batch over to the phase's recorder and the progress display.
    pub fn flush(&self, recorder: &Recorder, progress: &Progress) {
        let mut batch = self.batch.borrow_mut();
        progress.add(batch.outcomes());
        recorder.flush(&mut batch);
    }

    /// Hands the batch over every second until the returned guard is dropped, then once more.
    pub fn flush_every_second(
        self: &Rc<Self>,
        recorder: &Arc<Recorder>,
        progress: &Progress,
    ) -> FlushGuard {
        let task = {
            let (lane, recorder, progress) =
                (Rc::clone(self), Arc::clone(recorder), progress.clone());
            tokio::task::spawn_local(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.tick().await;
                loop {
                    every.tick().await;
                    lane.flush(&recorder, &progress);
                }
            })
        };
        FlushGuard {
            task,
            lane: Rc::clone(self),
            recorder: Arc::clone(recorder),
            progress: progress.clone(),
        }
    }
}

/// Stops a lane's periodic hand-over and hands over what is left.
pub struct FlushGuard {
    task: tokio::task::JoinHandle<()>,
    lane: Rc<Lane>,
    recorder: Arc<Recorder>,
    progress: Progress,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.task.abort();
        self.lane.flush(&self.recorder, &self.progress);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn every_lane_runs_the_work_on_its_own_thread() {
        let lanes = Lanes::start(3, None).expect("start");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        lanes
            .run(move |lane| {
                let record = Arc::clone(&record);
                async move {
                    tokio::task::yield_now().await;
                    let name = std::thread::current().name().map(str::to_string);
                    record
                        .lock()
                        .expect("lock")
                        .push((lane.index, lane.count, name));
                }
            })
            .await;
        let mut seen = seen.lock().expect("lock").clone();
        seen.sort();
        assert_eq!(seen.len(), 3);
        for (i, (index, count, name)) in seen.into_iter().enumerate() {
            assert_eq!((index, count), (i as u64, 3));
            assert_eq!(name, Some(format!("loadgen-lane-{i}")));
        }
    }
}
