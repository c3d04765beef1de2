//! [`AdmissionLayer`]: the tower layer that puts the VectorIndex service behind
//! [`Admission`] (`Stats` bypasses it). Refusals at a glance are answered on the request
//! path; everything else runs on the work runtime (see [`super::work`]).

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

use super::Admission;
use super::work;
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
        if !admission.config.enabled || Method::of(request.uri().path()) == Method::Stats {
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
        let admitted = work::run_on(&self.work, async move {
            match admission.admit(entered).await {
                Ok((request, grant)) => {
                    let response = inner.call(request).await;
                    drop(grant);
                    response
                }
                Err(status) => Ok(status.into_http()),
            }
        });
        Box::pin(async move {
            match admitted.await {
                Ok(response) => response,
                // A bug, not the caller's doing: said as such, and the server goes on.
                Err(e) if e.is_panic() => {
                    tracing::error!(error = %e, "a request's handler panicked");
                    Ok(tonic::Status::internal("the server failed this request").into_http())
                }
                Err(_) => Ok(tonic::Status::unavailable("server is shutting down").into_http()),
            }
        })
    }
}
