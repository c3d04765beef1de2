//! Samples the server's `Stats` while load runs: its queue, in-flight, shed counter and memory.
//!
//! It uses its own connection, so its samples are not queued behind the load's streams, and
//! the server exempts `Stats` from admission, so sampling works while the server sheds.
//! A target that is not a vecrig server (a templated target) has no `Stats`: its monitor is
//! [`Monitor::off`], with no samples, and the report's server figures stay empty.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use vecrig::client::{Metadata, request_with};
use vecrig::proto::StatsRequest;
use vecrig::proto::vector_index_client::VectorIndexClient;
use vecrig::validation::report::ServerFigures;

/// One `Stats` sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatsSample {
    /// Seconds since the monitor started.
    pub at_s: f64,
    /// Index of the phase running when it was taken.
    pub phase: usize,
    /// Requests being served.
    pub in_flight: u64,
    /// Requests waiting.
    pub queued: u64,
    /// Requests shed since the server started.
    pub shed_total: u64,
    /// Server resident memory.
    pub rss_bytes: u64,
    /// Points in the index.
    pub points: u64,
    /// The server's uptime (a restart shows as a value going back).
    pub uptime_ms: u64,
    /// Most requests served at once since the previous `Stats` call (the server's
    /// high-water mark; `in_flight` from servers that keep none).
    pub peak_in_flight: u64,
    /// Most requests waiting at once since the previous `Stats` call.
    pub peak_queued: u64,
    /// The share of their `ef` searches ran with (below 1: browning out; 0: not reported).
    pub search_breadth: f64,
}

/// The sampler: a background task plus explicit samples at phase boundaries.
#[derive(Debug)]
pub struct Monitor {
    /// `None`: the target has no `Stats` to sample.
    client: Option<VectorIndexClient<Channel>>,
    metadata: Metadata,
    started: Instant,
    phase: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<StatsSample>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Monitor {
    /// Starts sampling every `interval` over `client`, sending `metadata` (auth) with each call.
    pub fn start(
        client: VectorIndexClient<Channel>,
        metadata: Metadata,
        interval: Duration,
    ) -> Self {
        let started = Instant::now();
        let phase = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let (client, metadata, phase, samples) = (
                client.clone(),
                Arc::clone(&metadata),
                Arc::clone(&phase),
                Arc::clone(&samples),
            );
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(interval);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticker.tick().await;
                    take(&client, &metadata, started, &phase, &samples).await;
                }
            })
        };
        Self {
            client: Some(client),
            metadata,
            started,
            phase,
            samples,
            task: Some(task),
        }
    }

    /// A monitor of a target without `Stats`: it takes no samples.
    pub fn off(metadata: Metadata) -> Self {
        Self {
            client: None,
            metadata,
            started: Instant::now(),
            phase: Arc::default(),
            samples: Arc::default(),
            task: None,
        }
    }

    /// Takes a sample now, tagged with the current phase.
    pub async fn sample_now(&self) {
        let Some(client) = &self.client else {
            return;
        };
        take(
            client,
            &self.metadata,
            self.started,
            &self.phase,
            &self.samples,
        )
        .await;
    }

    /// Tags later samples with phase `index`.
    pub fn set_phase(&self, index: usize) {
        self.phase.store(index, Ordering::Release);
    }

    /// All samples so far.
    pub fn samples(&self) -> Vec<StatsSample> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Figures over the samples of one phase (`None`: all phases).
    pub fn figures(&self, phase: Option<usize>) -> ServerFigures {
        let samples: Vec<StatsSample> = self
            .samples()
            .into_iter()
            .filter(|s| phase.is_none_or(|p| s.phase == p))
            .collect();
        figures(&samples)
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn take(
    client: &VectorIndexClient<Channel>,
    metadata: &Metadata,
    started: Instant,
    phase: &AtomicUsize,
    samples: &Mutex<Vec<StatsSample>>,
) {
    let mut client = client.clone();
    let Ok(Ok(response)) = tokio::time::timeout(
        Duration::from_secs(2),
        client.stats(request_with(
            StatsRequest {},
            Duration::from_secs(2),
            metadata,
        )),
    )
    .await
    else {
        return; // A missed sample is just a gap; the load's own outcomes tell the story.
    };
    let s = response.into_inner();
    samples
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(StatsSample {
            at_s: started.elapsed().as_secs_f64(),
            phase: phase.load(Ordering::Acquire),
            in_flight: s.in_flight,
            queued: s.queued,
            shed_total: s.shed_total,
            rss_bytes: s.rss_bytes,
            points: s.points,
            uptime_ms: s.uptime_ms,
            peak_in_flight: s.peak_in_flight.max(s.in_flight),
            peak_queued: s.peak_queued.max(s.queued),
            search_breadth: s.search_breadth,
        });
}

/// The largest figure seen: the samples' own, and the server's high-water marks between
/// them. The first sample's mark covers the time before the samples (the previous phase's
/// end), so it is left out.
fn most(
    samples: &[StatsSample],
    now: impl Fn(&StatsSample) -> u64,
    peak: impl Fn(&StatsSample) -> u64,
) -> u64 {
    let seen = samples.iter().map(&now).max().unwrap_or(0);
    let between = samples.iter().skip(1).map(peak).max().unwrap_or(0);
    seen.max(between)
}

/// Figures over a run of samples, in time order.
pub fn figures(samples: &[StatsSample]) -> ServerFigures {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
        return ServerFigures::default();
    };
    ServerFigures {
        samples: samples.len() as u64,
        shed: last.shed_total.saturating_sub(first.shed_total),
        max_queued: most(samples, |s| s.queued, |s| s.peak_queued),
        max_in_flight: most(samples, |s| s.in_flight, |s| s.peak_in_flight),
        rss_start_bytes: first.rss_bytes,
        rss_max_bytes: samples.iter().map(|s| s.rss_bytes).max().unwrap_or(0),
        rss_end_bytes: last.rss_bytes,
        points_start: first.points,
        points_end: last.points,
        min_search_breadth: samples
            .iter()
            .map(|s| s.search_breadth)
            .filter(|&b| b > 0.0 && b < 1.0)
            .reduce(f64::min),
    }
}
