//! Admission control for the VectorIndex service: a concurrency limit, a bounded wait queue
//! in front of it, and load shedding beyond the queue.
//!
//! A request that finds a free slot runs at once. One that does not waits in a FIFO queue (a
//! burst waits briefly instead of failing); once `queue_depth` requests are already waiting, the
//! next one is answered `RESOURCE_EXHAUSTED` at once, before its body is even read, so an
//! overloaded server spends almost nothing on the work it refuses. A request whose client gives
//! up (cancels, or its `grpc-timeout` expires) while it waits leaves the queue without running.
//!
//! `Stats` bypasses it: monitoring must see an overloaded server, not be shed by it.
//!
//! It is one tower layer rather than tower's `LoadShed` + `Buffer` + `ConcurrencyLimit`, because
//! those cannot report how many requests wait (`Stats.queued`), and the queue is where later
//! policy (bounded wait time, request cost) belongs.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use crate::config::AdmissionConfig;

/// Live admission figures, shared between the layer and `Stats`.
#[derive(Debug)]
pub struct Admission {
    config: AdmissionConfig,
    slots: Arc<Semaphore>,
    in_flight: AtomicUsize,
    queued: AtomicUsize,
    shed_total: AtomicU64,
}

/// A snapshot of the admission figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionStats {
    /// Requests being served now.
    pub in_flight: u64,
    /// Requests waiting for a slot now.
    pub queued: u64,
    /// Requests refused since start.
    pub shed_total: u64,
    /// The concurrency limit.
    pub limit: u64,
}

impl Admission {
    /// Admission state for these sizes.
    pub fn new(config: AdmissionConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            slots: Arc::new(Semaphore::new(config.concurrency_limit.max(1))),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            shed_total: AtomicU64::new(0),
        })
    }

    /// Current figures.
    pub fn stats(&self) -> AdmissionStats {
        AdmissionStats {
            in_flight: self.in_flight.load(Ordering::Relaxed) as u64,
            queued: self.queued.load(Ordering::Relaxed) as u64,
            shed_total: self.shed_total.load(Ordering::Relaxed),
            limit: self.config.concurrency_limit as u64,
        }
    }

    /// Takes a slot, waiting in the queue if needed; `None` means: shed this request.
    async fn admit(self: Arc<Self>) -> Option<Admitted> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = self.queued.fetch_add(1, Ordering::AcqRel);
                let in_queue = QueueSlot(Arc::clone(&self));
                if waiting >= self.config.queue_depth {
                    drop(in_queue);
                    self.shed_total.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                // Dropping this future (client cancelled, deadline passed) leaves the queue.
                let permit = Arc::clone(&self.slots).acquire_owned().await.ok()?;
                drop(in_queue);
                permit
            }
        };
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(Admitted {
            admission: self,
            _permit: permit,
        })
    }

    fn overloaded(&self) -> Status {
        let stats = self.stats();
        Status::resource_exhausted(format!(
            "server overloaded: {} requests in flight (limit {}), {} queued (limit {}); retry with backoff",
            stats.in_flight, stats.limit, stats.queued, self.config.queue_depth
        ))
    }
}

/// Counts one request as queued for as long as it lives.
struct QueueSlot(Arc<Admission>);

impl Drop for QueueSlot {
    fn drop(&mut self) {
        self.0.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A slot held by a running request; released when the response is ready.
struct Admitted {
    admission: Arc<Admission>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.admission.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The one VectorIndex method that bypasses admission.
const STATS_PATH: &str = "/vecrig.v1.VectorIndex/Stats";

/// Puts a service behind [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
}

impl AdmissionLayer {
    /// A layer sharing `admission`'s state.
    pub fn new(admission: Arc<Admission>) -> Self {
        Self { admission }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitting<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admitting {
            inner,
            admission: Arc::clone(&self.admission),
        }
    }
}

/// A service behind admission control.
#[derive(Debug, Clone)]
pub struct Admitting<S> {
    inner: S,
    admission: Arc<Admission>,
}

impl<S: NamedService> NamedService for Admitting<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Admitting<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the decision to run, wait or shed is made per request in `call`,
        // where the queue can be measured. tonic's generated services are always ready too.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was polled ready is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let admission = Arc::clone(&self.admission);
        if request.uri().path() == STATS_PATH {
            // Stats is how operators and the loadgen watch an overloaded server: like health,
            // it must answer while the server sheds, and it costs next to nothing.
            return Box::pin(inner.call(request));
        }
        Box::pin(async move {
            match Arc::clone(&admission).admit().await {
                Some(admitted) => {
                    let response = inner.call(request).await;
                    drop(admitted);
                    response
                }
                None => Ok(admission.overloaded().into_http()),
            }
        })
    }
}
