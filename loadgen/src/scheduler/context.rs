//! The request context: what every request of a run shares ([`Context`]: connections,
//! deadline, metadata, retries under a budget, progress) and how the run is stopped
//! ([`Stop`]). [`Context::execute`] is the one place that owns retries, pushback and
//! latency measured from the intended send time, for every load model.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;
use tonic::Code;
use vecrig::client::{Metadata, Pool, request_with};

use super::senders::{Sender, Senders};
use crate::dynamic::Templates;
use crate::dynamic::check::AnswerCheck;
use crate::dynamic::codec::BytesCodec;
use crate::dynamic::template::GRPC_PREFIX;
use crate::measure::outcomes::Outcome;
use crate::measure::recall::Recall;
use crate::measure::recorder::PhaseRecorder;
use crate::plan::workload::{Call, CallKind, Op};
use crate::report::progress::Progress;
use crate::scheduler::retry::{RetryBudget, RetryPolicy};
use crate::wire::grpc::Pushback;
use crate::wire::{Channel, Rpc};
use vecrig::validation::report::{ANSWER_ERROR, code_name};

/// What a request that the loadgen's own timer ended came with.
const NO_ANSWER_IN_TIME: &str = "no answer within the deadline";

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
    /// tonic's connections to the target, used when the senders have none of their own
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
    pub senders: Arc<Senders>,
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
    /// The template set the requests are rendered from (the phase's workload's): the methods'
    /// paths for tonic's connections, and where a search's answer holds its ids.
    pub templates: Arc<Templates>,
}

impl Context {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        request_with(message, self.timeout, &self.headers)
    }

    /// Sends one attempt of `call` and returns its code: over the sender's own connections when
    /// it has them (`frame` is the request framed once), else over tonic's pool. A deadline
    /// passing here counts as DEADLINE_EXCEEDED even when the server never answers (e.g. it
    /// is frozen); this is the request's one timer, set from `sent`, when the attempt was
    /// made. With `keep`, the answer's message is kept there (a sampled search's). Returns
    /// the code, the server's retry advice and the text a failure came with (`grpc-message`,
    /// or what the client saw), empty for OK.
    async fn send(
        &self,
        channel: Option<&Channel>,
        call: &Call,
        frame: Option<&(Rpc, Bytes)>,
        sent: Instant,
        keep: Option<&mut BytesMut>,
    ) -> (Code, Pushback, String) {
        let sent = tokio::time::Instant::from_std(sent);
        let too_late = || {
            (
                Code::DeadlineExceeded,
                Pushback::None,
                NO_ANSWER_IN_TIME.to_string(),
            )
        };
        if let (Some(channel), Some((rpc, frame))) = (channel, frame) {
            // The clock read once for the attempt serves the channel and the timer alike.
            let call = channel.call_keeping(*rpc, frame.clone(), (sent, self.timeout), keep);
            return match tokio::time::timeout_at(sent + self.timeout, call).await {
                Ok(answer) => (answer.code, answer.pushback, answer.message),
                Err(_) => too_late(),
            };
        }
        let templates = &self.templates;
        let method = match (&templates.write, call.is_write()) {
            (Some(write), true) => write,
            _ => &templates.search,
        };
        let answer = async {
            let mut grpc = tonic::client::Grpc::new(self.pool.channel());
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            let request = self.request(call.message_bytes());
            grpc.unary(request, method.path.clone(), BytesCodec).await
        };
        match tokio::time::timeout_at(sent + self.timeout, answer).await {
            Ok(Ok(answer)) => {
                if let Some(keep) = keep {
                    keep.extend_from_slice(answer.get_ref());
                }
                (Code::Ok, Pushback::None, String::new())
            }
            Ok(Err(status)) => (
                status.code(),
                Pushback::of(&status),
                status.message().to_string(),
            ),
            Err(_) => too_late(),
        }
    }

    /// Sends one attempt whose answer is read: a sampled search (its ids kept for the recall
    /// check, with the loadgen's write count when it was sent) or an answer the target's
    /// answer check must pass. Returns what [`send`](Self::send) does, the text being the
    /// check's reason for an OK answer that failed it (then `true`).
    async fn send_read(
        &self,
        channel: Option<&Channel>,
        call: &Call,
        frame: Option<&(Rpc, Bytes)>,
        (sampled, check): (bool, Option<&AnswerCheck>),
    ) -> (Code, Pushback, String, bool) {
        let writes = sampled.then(|| self.recall.quiet_writes()).flatten();
        let mut body = BytesMut::new();
        let (code, pushback, text) = self
            .send(channel, call, frame, Instant::now(), Some(&mut body))
            .await;
        if code != Code::Ok {
            return (code, pushback, text, false);
        }
        // Over our own connections the answer is its gRPC frame: a flag byte, a length,
        // the message; over tonic's, the message.
        let message = if channel.is_some() {
            match body.first() {
                Some(0) => body.get(GRPC_PREFIX..),
                _ => None,
            }
        } else {
            Some(&body[..])
        };
        let failed = check.and_then(|check| match message {
            Some(message) => check.verdict(message).err(),
            None => Some("the answer is compressed or empty: it cannot be checked".into()),
        });
        if sampled
            && failed.is_none()
            && let Some(request) = call.search_request()
        {
            let ids = message.and_then(|message| self.templates.ids_in(message));
            // An answer that does not decode cannot be scored: kept as a search sent while
            // writes were in flight is, counted as skipped.
            let writes = if ids.is_some() { writes } else { None };
            self.recall.keep(&request, ids.unwrap_or_default(), writes);
        }
        match failed {
            Some(reason) => (code, pushback, reason, true),
            None => (code, pushback, String::new(), false),
        }
    }

    /// Sends `op` (retrying as the policy and budget allow) and records its outcome in
    /// `sender`'s batch for `recorder`, with latency measured from `intended`.
    pub async fn execute(
        &self,
        sender: &Sender,
        op: Op,
        intended: Instant,
        recorder: &PhaseRecorder,
    ) {
        let Op::Call(call) = &op else {
            return;
        };
        self.budget.deposit();
        // A sampled search keeps its answer (its ids read after, off the request's timing).
        let sampled = !call.is_write() && sender.sample_search(self.recall.every);
        let check = self.templates.check_for(call.is_write());
        let _write = (call.is_write() && self.recall.is_on()).then(|| self.recall.write_started());
        let channel = sender.channel_for(self.client.as_ref());
        let frame = channel.as_ref().map(|channel| channel.encode(&op));
        let mut attempts = 0u32;
        let mut retries_denied = 0u32;
        let mut first = None;
        loop {
            attempts += 1;
            let sent = Instant::now();
            let (code, pushback, text, answer_failed) = if sampled || check.is_some() {
                let read = (sampled, check);
                self.send_read(channel.as_deref(), call, frame.as_ref(), read)
                    .await
            } else {
                let (code, pushback, text) = self
                    .send(channel.as_deref(), call, frame.as_ref(), sent, None)
                    .await;
                (code, pushback, text, false)
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
                answer_failed,
            };
            sender.record(&outcome, recorder, answered);
            if answer_failed {
                sender.note_reason(recorder, &format!("{ANSWER_ERROR}: {text}"));
                return;
            }
            if code != Code::Ok && !text.is_empty() {
                sender.note_reason(recorder, &format!("{}: {text}", code_name(code)));
            }
            match (code, &call.kind) {
                (
                    Code::Ok,
                    CallKind::Write {
                        acked: Some((acks, ids)),
                    },
                ) => acks.record(ids),
                (Code::Ok, CallKind::Ingest { truth, batch }) => truth.acknowledge(*batch),
                _ => {}
            }
            return;
        }
    }
}
