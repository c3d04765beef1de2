//! [`AdmissionLayer`]: the tower layer that puts the VectorIndex service behind
//! [`Admission`] (`Stats` bypasses it). Refusals and the place in the fair queue are decided
//! on the request path; admitted requests run on the work runtime (see [`super::work`]),
//! started there by whoever grants their units, and their answers come back to the request
//! path to be sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::{Layer, Service};

use futures_util::FutureExt;
use tokio::sync::oneshot;

use super::entry::HttpResponse;
use super::state::{Admission, Admitted, Grant, Launch};
use crate::method::Method;

/// Puts a service behind [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    admission: Arc<Admission>,
    work: tokio::runtime::Handle,
}

impl AdmissionLayer {
    /// A layer sharing `admission`'s state, running admitted work on `work`'s runtime.
    pub fn new(admission: Arc<Admission>, work: tokio::runtime::Handle) -> Self {
        Self { admission, work }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            admission: Arc::clone(&self.admission),
            work: self.work.clone(),
        }
    }
}

/// A service behind admission control.
#[derive(Debug, Clone)]
pub struct AdmissionService<S> {
    inner: S,
    admission: Arc<Admission>,
    work: tokio::runtime::Handle,
}

impl<S: NamedService> NamedService for AdmissionService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for AdmissionService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
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
        if !admission.config.enabled || Method::of_request(&request) == Method::Stats {
            // Stats is how operators and the loadgen watch an overloaded server: like health,
            // it must answer while the server sheds, and it costs next to nothing. With
            // admission off (the baseline of the degradation bench) everything runs at once.
            let counted = !admission.config.enabled;
            return Box::pin(async move {
                if counted {
                    admission.in_flight.fetch_add(1, Ordering::AcqRel);
                }
                let response = inner.call(request.map(Body::new)).await;
                if counted {
                    admission.in_flight.fetch_sub(1, Ordering::AcqRel);
                }
                response
            });
        }
        let entered = match admission.enter(request) {
            Ok(entered) => entered,
            Err(status) => return Box::pin(std::future::ready(Ok(status.into_http()))),
        };
        let work = self.work.clone();
        Box::pin(async move {
            let (answer, answered) = oneshot::channel();
            let launch: Launch = Box::new(move |decided| match decided {
                Ok(Admitted { request, grant }) => {
                    drop(work.spawn(serve(inner, request, grant, answer)));
                }
                Err(status) => drop(answer.send(status.into_http())),
            });
            match admission.admit(entered, launch).await {
                Ok(place) => Ok(place.answer(answered).await),
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// Runs an admitted request on the work runtime and sends its answer back to the request
/// path; stops early, freeing its slot, when nobody waits for the answer any more (the client
/// went away). A handler that panics is a bug, not the caller's doing: it is answered
/// `INTERNAL`, said as such in the log, and the server goes on.
async fn serve<S>(
    mut inner: S,
    request: http::Request<Body>,
    grant: Grant,
    mut answer: oneshot::Sender<HttpResponse>,
) where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
{
    let call = std::panic::AssertUnwindSafe(inner.call(request)).catch_unwind();
    let answered = tokio::select! {
        biased;
        answered = call => answered,
        () = answer.closed() => return,
    };
    drop(grant);
    let response = match answered {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => {
            tracing::error!("a request's handler panicked");
            tonic::Status::internal("the server failed this request").into_http()
        }
    };
    let _ = answer.send(response);
}
