//! The tower layer that charges cheap answers to their connections and stamps each request
//! with its [`Caller`].

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tower::{Layer, Service};

use super::charge::Charge;
use super::connection::Connection;
use crate::caller::ClientRule;
use crate::method::Method;

/// Finds a request's connection pacing state, and its peer's address, in its extensions.
pub type Lookup = fn(&http::Request<Body>) -> Option<(Arc<Connection>, Option<IpAddr>)>;

/// Charges every cheap answer to its connection (see the module docs for what is cheap), and
/// tells the layers below who each request is from (a [`Caller`] in its extensions).
#[derive(Clone)]
pub struct PacingLayer {
    lookup: Lookup,
    rule: ClientRule,
}

impl PacingLayer {
    /// Charges answers outside VectorIndex (health, reflection), `Stats`, and every refusal
    /// (a trailers-only answer with a non-OK status) to the connection `lookup` finds; each
    /// request's client is its address by `rule`.
    pub fn new(lookup: Lookup, rule: ClientRule) -> Self {
        Self { lookup, rule }
    }
}

impl<S> Layer<S> for PacingLayer {
    type Service = PacingService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PacingService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`PacingLayer`].
#[derive(Clone)]
pub struct PacingService<S> {
    inner: S,
    layer: PacingLayer,
}

/// What a response to a work call is charged as, if anything: an error status in its
/// headers (a trailers-only answer, which is how every status returned before or instead of
/// work is sent) is a refusal, a shed if RESOURCE_EXHAUSTED (code 8).
fn refusal(response: &http::Response<Body>) -> Option<Charge> {
    match response.headers().get("grpc-status")?.as_bytes() {
        b"0" => None,
        b"8" => Some(Charge::Shed),
        _ => Some(Charge::Cheap),
    }
}

impl<S> Service<http::Request<Body>> for PacingService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let connection = (self.layer.lookup)(&request).map(|(connection, address)| {
            let caller = self
                .layer
                .rule
                .caller(address, request.headers(), connection.id);
            request.extensions_mut().insert(caller);
            connection
        });
        // Health, reflection and Stats are answered without admission: cheap, but not free.
        let cheap_call = matches!(Method::carry(&mut request), None | Some(Method::Stats));
        Box::pin(async move {
            let response = inner.call(request).await?;
            let charge = if cheap_call {
                Some(Charge::Cheap)
            } else {
                refusal(&response)
            };
            match (connection, charge) {
                (Some(connection), Some(charge)) => connection.charge(charge),
                (Some(connection), None) => connection.served(),
                (None, _) => {}
            }
            Ok(response)
        })
    }
}
