//! The request context: what every request of a run shares ([`Context`]: connections,
//! deadline, metadata, retries under a budget, progress) and how the run is stopped
//! ([`Stop`]). [`Context::execute`] is the one place that owns retries, pushback and
//! latency measured from the intended send time, for every load model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tonic::Code;
use vecrig::client::{Metadata, Pool, request_with};

use super::lanes::{Lane, Lanes};
use crate::progress::Progress;
use crate::recall::Recall;
use crate::retry::{Pushback, RetryBudget, RetryPolicy};
use crate::stats::{Outcome, Recorder};
use crate::wire::{Channel, Rpc};
use crate::workload::{CallKind, Op};

/// Tells every task to stop sending new requests (Ctrl-C, or a failed threshold with abort).
#[derive(Debug, Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
    /// The same flag for [`is_stopped`](Self::is_stopped), which every user asks before each
    /// request: reading a watch takes its lock, a write to a line that every sending thread
    /// shares, while a load of a flag that is never written until the end leaves the line
    /// in every core's cache.
    stopped: Arc<AtomicBool>,
    /// Why the run was aborted, when a failed threshold (not the user) stopped it.
    aborted: Arc<std::sync::Mutex<Option<String>>>,
}

impl Default for Stop {
    fn default() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
            stopped: Arc::default(),
            aborted: Arc::default(),
        }
    }
}

impl Stop {
    /// Stops the run.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.tx.send_replace(true);
    }

    /// Stops the run because a threshold failed; the first reason given is kept.
    pub fn abort(&self, reason: String) {
        if let Ok(mut aborted) = self.aborted.lock() {
            aborted.get_or_insert(reason);
        }
        self.stop();
    }

    /// Why the run was aborted, if a failed threshold stopped it.
    pub fn abort_reason(&self) -> Option<String> {
        self.aborted.lock().ok().and_then(|a| a.clone())
    }

    /// Whether the run was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once the run is stopped.
    pub async fn stopped(&self) {
        let mut rx = self.tx.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }
}

/// Everything the request tasks share.
#[derive(Debug, Clone)]
pub struct Context {
    /// tonic's connections to the target, used when the lanes have none of their own
    /// (`--transport tonic`).
    pub pool: Pool,
    /// Per-request deadline (sent as `grpc-timeout`, and enforced here too).
    pub timeout: Duration,
    /// Metadata added to every request (e.g. `authorization`).
    pub headers: Metadata,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// Shared retry budget.
    pub budget: Arc<RetryBudget>,
    /// Stop signal.
    pub stop: Stop,
    /// Live progress.
    pub progress: Progress,
    /// The threads that send the load.
    pub lanes: Arc<Lanes>,
    /// Abort the whole run as soon as a threshold fails (k6's `abortOnFail`); upper bounds
    /// are checked every second once this grace has passed in a phase (k6's
    /// `delayAbortEval`), every threshold at the end of the phase it applies to.
    pub abort_on_fail: Option<Duration>,
    /// The server's Prometheus endpoint, scraped at the end of each scenario.
    pub metrics_url: Option<Arc<str>>,
    /// The client this load is sent as, when not the run's own (a side-by-side phase of a
    /// scenario with identities): the run's target with its own source address or headers.
    pub client: Option<Arc<crate::wire::Target>>,
    /// Which searches are sampled for recall, and the current phase's sample.
    pub recall: Recall,
    /// Whether the target answers vecrig's `Stats` (a vecrig server; not a templated target):
    /// else nothing samples it.
    pub server_stats: bool,
}

impl Context {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        request_with(message, self.timeout, &self.headers)
    }

    /// Sends one attempt and returns its code: over the lane's own connections when it has
    /// them (`frame` is the request encoded once), else over tonic's pool. A deadline passing
    /// here counts as DEADLINE_EXCEEDED even when the server never answers (e.g. it is
    /// frozen); this is the request's one timer, set from `sent`, when the attempt was made.
    async fn send(
        &self,
        channel: Option<&Channel>,
        op: &Op,
        frame: Option<&(Rpc, Bytes)>,
        sent: Instant,
    ) -> (Code, Pushback) {
        if let (Some(channel), Some((rpc, frame))) = (channel, frame) {
            // The clock read once for the attempt serves the channel and the timer alike.
            let sent = tokio::time::Instant::from_std(sent);
            let call = channel.call_keeping(*rpc, frame.clone(), (sent, self.timeout), None);
            return match tokio::time::timeout_at(sent + self.timeout, call).await {
                Ok(answer) => (answer.code, answer.pushback),
                Err(_) => (Code::DeadlineExceeded, Pushback::None),
            };
        }
        let mut client = self.pool.client();
        let call = async {
            match op {
                Op::Search(r) => client.search(self.request(r.clone())).await.map(drop),
                Op::Upsert(r) | Op::Durable(r, _) => {
                    client.upsert(self.request(r.clone())).await.map(drop)
                }
                // A templated target is refused with `--transport tonic` before the run.
                Op::Call(_) | Op::Done => Err(tonic::Status::unimplemented(
                    "templated requests go over --transport h2",
                )),
            }
        };
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(())) => (Code::Ok, Pushback::None),
            Ok(Err(status)) => (status.code(), Pushback::of(&status)),
            Err(_) => (Code::DeadlineExceeded, Pushback::None),
        }
    }

    /// Sends one attempt of a sampled search over tonic and keeps its answer's ids for the
    /// recall check, with the loadgen's write count when it was sent.
    async fn send_sampled(&self, request: &vecrig::proto::SearchRequest) -> (Code, Pushback) {
        let writes = self.recall.quiet_writes();
        let mut client = self.pool.client();
        let call = client.search(self.request(request.clone()));
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(answer)) => {
                let ids = answer.into_inner().hits.iter().map(|h| h.id).collect();
                self.recall.keep(request, ids, writes);
                (Code::Ok, Pushback::None)
            }
            Ok(Err(status)) => (status.code(), Pushback::of(&status)),
            Err(_) => (Code::DeadlineExceeded, Pushback::None),
        }
    }

    /// Sends one attempt of a sampled templated search over the lane's channel, keeping the
    /// answer, and keeps its ids for the recall check (the loadgen's own exact answer).
    async fn send_sampled_call(
        &self,
        channel: Option<&Channel>,
        frame: Option<&(Rpc, Bytes)>,
        query: &[f32],
        k: u32,
        templates: &crate::dynamic::Templates,
    ) -> (Code, Pushback) {
        let (Some(channel), Some((rpc, frame))) = (channel, frame) else {
            return (Code::Unimplemented, Pushback::None);
        };
        let writes = self.recall.quiet_writes();
        let mut body = bytes::BytesMut::new();
        let sent = tokio::time::Instant::now();
        let call = channel.call_keeping(*rpc, frame.clone(), (sent, self.timeout), Some(&mut body));
        let answer = match tokio::time::timeout_at(sent + self.timeout, call).await {
            Ok(answer) => answer,
            Err(_) => return (Code::DeadlineExceeded, Pushback::None),
        };
        if answer.code == Code::Ok {
            // One uncompressed frame: a flag byte, a length, the message.
            let ids = body.get(5..).and_then(|message| templates.ids_in(message));
            let request = vecrig::proto::SearchRequest {
                query: Some(vecrig::proto::search_request::Query::Vector(
                    vecrig::proto::Vector {
                        values: query.to_vec(),
                    },
                )),
                k,
                ..Default::default()
            };
            // An answer that does not decode cannot be scored: kept as a search sent while
            // writes were in flight is, counted as skipped.
            let writes = if ids.is_some() { writes } else { None };
            self.recall.keep(&request, ids.unwrap_or_default(), writes);
        }
        (answer.code, answer.pushback)
    }

    /// Sends `op` (retrying as the policy and budget allow) and records its outcome in
    /// `lane`'s batch for `recorder`, with latency measured from `intended`.
    pub async fn execute(&self, lane: &Lane, op: Op, intended: Instant, recorder: &Recorder) {
        if matches!(op, Op::Done) {
            return;
        }
        self.budget.deposit();
        // A sampled search goes over tonic, whose answer is decoded: its ids are needed.
        let sampled = match &op {
            Op::Search(request) if lane.sample_search(self.recall.every) => Some(request),
            _ => None,
        };
        // A sampled templated search keeps its answer (read after, off the request's timing).
        let sampled_call = match &op {
            Op::Call(call) if !call.is_write() && lane.sample_search(self.recall.every) => {
                match &call.kind {
                    CallKind::Search {
                        query,
                        k,
                        templates,
                    } => Some((query, *k, templates)),
                    CallKind::Ingest { .. } => None,
                }
            }
            _ => None,
        };
        let _write = match &op {
            Op::Upsert(_) | Op::Durable(..) if self.recall.is_on() => {
                Some(self.recall.write_started())
            }
            Op::Call(call) if call.is_write() && self.recall.is_on() => {
                Some(self.recall.write_started())
            }
            _ => None,
        };
        let channel = lane.channel_for(self.client.as_ref());
        let frame = channel.as_ref().map(|channel| channel.encode(&op));
        let mut attempts = 0u32;
        let mut retries_denied = 0u32;
        let mut first = None;
        loop {
            attempts += 1;
            let sent = Instant::now();
            let (code, pushback) = match (sampled, sampled_call) {
                (Some(request), _) => self.send_sampled(request).await,
                (None, Some((query, k, templates))) => {
                    self.send_sampled_call(channel.as_deref(), frame.as_ref(), query, k, templates)
                        .await
                }
                (None, None) => {
                    self.send(channel.as_deref(), &op, frame.as_ref(), sent)
                        .await
                }
            };
            let answered = Instant::now();
            let first_code = *first.get_or_insert(code);
            // The backoff is drawn only for an answer that may be retried: drawing it for
            // every answer cost a random number generator's refill on the request path.
            if RetryPolicy::retryable(code)
                && attempts < self.retry.max_attempts
                && !self.stop.is_stopped()
                && let Some(wait) = pushback.wait(self.retry.backoff(attempts, &mut rand::rng()))
            {
                if self.budget.try_withdraw() {
                    tokio::time::sleep(wait).await;
                    continue;
                }
                retries_denied += 1;
            }
            let outcome = Outcome {
                first: first_code,
                last: code,
                attempts,
                retries_denied,
                latency: answered.saturating_duration_since(intended),
                service_time: answered - sent,
            };
            lane.record(&outcome, recorder, answered);
            match (code, &op) {
                (Code::Ok, Op::Durable(request, acks)) => acks.record(request),
                (Code::Ok, Op::Call(call)) => {
                    if let CallKind::Ingest { truth, batch } = &call.kind {
                        truth.acknowledge(*batch);
                    }
                }
                _ => {}
            }
            return;
        }
    }
}
