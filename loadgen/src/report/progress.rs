//! The live progress line on a terminal (elapsed, QPS, p99, errors), and progress messages
//! that go to stderr either way, so stdout carries only the report.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::measure::outcomes::Outcomes;

/// Shared handle on the progress display. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    bar: Option<ProgressBar>,
    started: Instant,
    requests: AtomicU64,
    errors: AtomicU64,
    /// Latencies since the last redraw, for a p99 that follows the load as it changes.
    window: Mutex<Histogram<u64>>,
    label: Mutex<String>,
}

impl Progress {
    /// A progress display; the live line is drawn only when `live` and stderr is a terminal.
    pub fn new(live: bool) -> Self {
        let bar = (live && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
                bar.set_style(style);
            }
            bar
        });
        let progress = Self {
            inner: Arc::new(Inner {
                bar,
                started: Instant::now(),
                requests: AtomicU64::new(0),
                errors: AtomicU64::new(0),
                window: Mutex::new(
                    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid bounds"),
                ),
                label: Mutex::new(String::new()),
            }),
        };
        if progress.inner.bar.is_some() {
            let weak = Arc::downgrade(&progress.inner);
            tokio::spawn(async move {
                let mut last = (0u64, Instant::now());
                loop {
                    // Once a second: what it shows is handed over once a second.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let Some(inner) = weak.upgrade() else { break };
                    last = inner.redraw(last);
                }
            });
        }
        progress
    }

    /// Counts what a sending thread recorded since its last hand-over (about a second's
    /// worth): progress reads the merged view, never the request path.
    pub fn add(&self, outcomes: &Outcomes) {
        let requests = outcomes.requests();
        if requests == 0 {
            return;
        }
        self.inner.requests.fetch_add(requests, Ordering::Relaxed);
        let errors = requests - outcomes.successes();
        self.inner.errors.fetch_add(errors, Ordering::Relaxed);
        if self.inner.bar.is_some() {
            let _ = self
                .inner
                .window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&outcomes.latency);
        }
    }

    /// What is running now (`scenario / phase`).
    pub fn set_label(&self, label: String) {
        *self.inner.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
    }

    /// Prints a line above the live line (or to stderr when there is none).
    pub fn println(&self, line: String) {
        match &self.inner.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the live line.
    pub fn finish(&self) {
        if let Some(bar) = &self.inner.bar {
            bar.finish_and_clear();
        }
    }
}

impl Inner {
    fn redraw(&self, last: (u64, Instant)) -> (u64, Instant) {
        let Some(bar) = &self.bar else { return last };
        let requests = self.requests.load(Ordering::Relaxed);
        let qps = (requests - last.0) as f64 / last.1.elapsed().as_secs_f64().max(1e-3);
        let p99 = {
            let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let p99 = window.value_at_quantile(0.99) as f64 / 1000.0;
            window.reset();
            p99
        };
        let label = self.label.lock().unwrap_or_else(|p| p.into_inner()).clone();
        bar.set_message(format!(
            "{label} | {:>5.0}s | {qps:>7.0} req/s | p99 {p99:>8.1} ms | {} requests, {} errors",
            self.started.elapsed().as_secs_f64(),
            requests,
            self.errors.load(Ordering::Relaxed)
        ));
        bar.tick();
        (requests, Instant::now())
    }
}
