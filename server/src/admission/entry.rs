//! A request's way in (steps 1-3 of the module docs): entering the queue, being read and
//! priced, starting at once or waiting for its units; and its [`Place`] until it is answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::oneshot;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::http;

use super::cost::{Cost, UNITS_PER_SLOT};
use super::recorder::ShedReason;
use super::state::{Admission, Launch, Priced, Queued, Waiter};
use crate::caller::{Caller, ClientKey};
use crate::method::Method;

/// A request's place in the queue, from [`Admission::admit`] until its answer: dropped early
/// (its client went away), it takes the request out of the queue. Once the request runs, its
/// launch decides what dropping the answer's receiver means.
pub(super) struct Place {
    admission: Arc<Admission>,
    /// Its id in the scheduler while it may still wait there.
    waiting: Option<u64>,
    give_up: Instant,
    deadline: Option<Instant>,
    client: ClientKey,
}

/// What a request is answered with.
pub(super) type HttpResponse = http::Response<Body>;

impl Place {
    /// The answer the request's launch sends on `answered`: its handler's, or its refusal.
    /// A request still waiting when its wait runs out (`max_queue_wait`, or its deadline)
    /// leaves the queue and is refused; one granted meanwhile runs, and its answer is
    /// awaited.
    pub(super) async fn answer(
        mut self,
        mut answered: oneshot::Receiver<HttpResponse>,
    ) -> HttpResponse {
        if let Some(id) = self.waiting {
            let waited = tokio::time::timeout_at(self.give_up.into(), &mut answered).await;
            self.waiting = None;
            match waited {
                Ok(answer) => return answer_or_gone(answer),
                Err(_) if self.admission.leave(id) => {
                    return self
                        .admission
                        .timed_out(self.deadline, &self.client)
                        .into_http();
                }
                Err(_) => {} // started just as its wait ran out: its answer follows
            }
        }
        answer_or_gone(answered.await)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(id) = self.waiting.take() {
            self.admission.leave(id);
        }
    }
}

/// A launch that dropped its answer's sender without sending: the work runtime dropped the
/// request's work, which it does only when shutting down.
fn answer_or_gone(answer: Result<HttpResponse, oneshot::error::RecvError>) -> HttpResponse {
    answer.unwrap_or_else(|_| Status::unavailable("server is shutting down").into_http())
}

/// The `grpc-timeout` header as a deadline (`None` when absent or unreadable).
pub(super) fn deadline_of<B>(request: &http::Request<B>, arrived: Instant) -> Option<Instant> {
    let value = request.headers().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    arrived.checked_add(timeout)
}

/// A request that passed step 1 and holds a place in the queue (see [`Admission::enter`]).
pub(super) struct Entered<B> {
    pub(super) request: http::Request<B>,
    pub(super) arrived: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) caller: Caller,
    pub(super) queued: Queued,
}

impl Admission {
    /// Step 1 of the module docs, and the standing-queue rule: the refusals that need nothing
    /// but a look at the queue, decided at once on the thread that read the request. A
    /// request that passes holds a place in the queue until it starts or is answered.
    pub(super) fn enter<B>(
        self: &Arc<Self>,
        request: http::Request<B>,
    ) -> Result<Entered<B>, Status> {
        let arrived = Instant::now();
        let deadline = deadline_of(&request, arrived);
        let caller = if self.config.fair {
            Caller::of(&request)
        } else {
            Caller::unknown()
        };
        // A place is taken only while there is one: a refused arrival never counts as queued,
        // not even for the moment its refusal takes, so `Stats` and the peaks never read more
        // than `queue_depth` waiting, not even for a moment.
        let depth = self.config.queue_depth;
        let took_place = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < depth).then_some(waiting + 1)
            });
        let waiting = match took_place {
            Ok(waiting) => waiting,
            // Full: a lighter client's arrival takes the place of the heaviest client's newest
            // waiter, which is answered at once; inside the heaviest client, a lighter
            // connection's arrival takes that of its heaviest connection's newest waiter; the
            // heaviest connection's own arrival is refused.
            // Either way before the body is priced. (A concurrent arrival may take the place
            // first for a moment: hence the clamps in `stats` and `take_peaks`.)
            Err(_) => {
                let displaced = self.lock().displace_for(&caller);
                let Some(Waiter { priced, launch }) = displaced else {
                    return Err(self.shed(ShedReason::QueueFull, deadline, &caller.client));
                };
                let status = self.shed(ShedReason::Displaced, priced.deadline, &priced.client);
                drop(priced);
                launch(Err(status));
                self.queued.fetch_add(1, Ordering::AcqRel)
            }
        };
        let queued = Queued {
            admission: Arc::clone(self),
            bytes: 0,
        };
        self.peak_queued
            .fetch_max((waiting + 1).min(depth), Ordering::Relaxed);
        if self.standing_queue_too_long() {
            return Err(self.shed(ShedReason::QueueLatency, deadline, &caller.client));
        }
        Ok(Entered {
            request,
            arrived,
            deadline,
            caller,
            queued,
        })
    }

    /// Steps 2-3 of the module docs for a request that [`Admission::enter`]ed: reads and
    /// prices it, then starts it through `launch` at once if its units are free, or queues it
    /// to be started (or displaced) through `launch` later. Returns its place, whose
    /// [`Place::answer`] waits for what `launch` answers; or the status to answer instead.
    ///
    /// The body is whole by now (`crate::net::whole_request` reads it first), so this finishes
    /// without waiting, on the request path: a request enters the fair queue as it arrives.
    pub(super) async fn admit<B>(
        self: &Arc<Self>,
        entered: Entered<B>,
        launch: Launch,
    ) -> Result<Place, Status>
    where
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Entered {
            request,
            arrived,
            deadline,
            caller,
            mut queued,
        } = entered;
        let wait_limit = match deadline {
            Some(d) => self
                .config
                .max_queue_wait
                .min(d.saturating_duration_since(arrived)),
            None => self.config.max_queue_wait,
        };
        let give_up = arrived + wait_limit;

        // Read the body (bounded in bytes across the queue, and in time).
        let (parts, body) = request.into_parts();
        // The body arrives already whole from `net::whole_request` (one frame): kept without a
        // copy.
        let mut body = std::pin::pin!(body);
        let mut chunks: Vec<bytes::Bytes> = Vec::with_capacity(1);
        loop {
            let frame = match tokio::time::timeout_at(give_up.into(), body.frame()).await {
                Err(_) => return Err(self.timed_out(deadline, &caller.client)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    let e: Box<dyn std::error::Error + Send + Sync> = e.into();
                    return Err(Status::cancelled(format!("request body: {e}")));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            if let Ok(data) = frame.into_data() {
                if !queued.add_bytes(data.len()) {
                    return Err(self.shed(ShedReason::QueueBytes, deadline, &caller.client));
                }
                chunks.push(data);
            }
        }
        let bytes = match chunks.len() {
            0 => bytes::Bytes::new(),
            1 => chunks.swap_remove(0),
            _ => chunks.concat().into(),
        };
        let method = Method::of_parts(&parts.extensions, &parts.uri);
        let cost = Cost::estimate(method, &bytes);
        let limit_units = self.lock().limit_units;
        // Never more than half the limit: an expensive request must leave room for others.
        let cost = Cost {
            units: cost.units.min((limit_units / 2).max(UNITS_PER_SLOT)),
        };

        // Can the deadline still be met?
        if let Some(deadline) = deadline {
            let expected =
                self.expected_wait() + self.service_time_per_slot().mul_f64(cost.slots().max(0.25));
            if Instant::now() + expected > deadline {
                return Err(self.shed(ShedReason::Deadline, Some(deadline), &caller.client));
            }
        }

        let priced = Priced {
            parts,
            body: bytes,
            cost,
            method,
            client: caller.client.clone(),
            arrived,
            deadline,
            queued,
        };
        let mut place = Place {
            admission: Arc::clone(self),
            waiting: None,
            give_up,
            deadline,
            client: caller.client.clone(),
        };
        // Start at once, or wait for units.
        let mut scheduler = self.lock();
        if scheduler.waiting() == 0 && scheduler.used_units + cost.units <= scheduler.limit_units {
            scheduler.take(cost.units);
            drop(scheduler);
            launch(Ok(self.grant(priced)));
            return Ok(place);
        }
        let id = scheduler.next_id;
        scheduler.next_id += 1;
        scheduler.push(
            id,
            &caller,
            cost.units,
            cost.is_heavy(),
            Waiter { priced, launch },
        );
        scheduler.nonempty_since.get_or_insert(arrived);
        drop(scheduler);
        place.waiting = Some(id);
        Ok(place)
    }

    /// Takes request `id` out of the queue if it still waits there (true), and starts what
    /// its leaving lets start.
    pub(super) fn leave(self: &Arc<Self>, id: u64) -> bool {
        let (left, granted) = self.lock().cancel(id);
        self.start(granted);
        left.is_some()
    }

    pub(super) fn timed_out(&self, deadline: Option<Instant>, client: &ClientKey) -> Status {
        let deadline_first = deadline.is_some_and(|d| d <= Instant::now());
        if deadline_first {
            self.shed(ShedReason::Deadline, deadline, client)
        } else {
            self.shed(ShedReason::QueueTimeout, deadline, client)
        }
    }
}
