//! [`WholeRequestLayer`]: a VectorIndex request's body is read whole, within a timeout, a size
//! bound and a shared budget of buffered bytes, before the request goes on to the layers and
//! admission. It also counts every request as open on its connection (for
//! `max_connection_idle`) until its response is sent.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http;
use tower::Layer;

use super::socket::{OpenRequest, PeerInfo};
use crate::method::Method;

/// Reads each VectorIndex request's body whole, within a timeout, a size bound and a shared
/// budget of buffered bytes, before passing the request on; see [`super`]'s docs for why.
#[derive(Debug, Clone)]
pub struct WholeRequestLayer {
    read_timeout: Duration,
    max_bytes: usize,
    budget: Arc<Semaphore>,
}

impl WholeRequestLayer {
    /// Bodies up to `max_bytes` each, read within `read_timeout`, `buffer_bytes` of them held
    /// at once (raised to `max_bytes` if below, so that every allowed body can be read).
    pub fn new(read_timeout: Duration, max_bytes: usize, buffer_bytes: usize) -> Self {
        let permits = buffer_bytes.max(max_bytes).min(Semaphore::MAX_PERMITS);
        Self {
            read_timeout,
            max_bytes,
            budget: Arc::new(Semaphore::new(permits)),
        }
    }
}

impl<S> Layer<S> for WholeRequestLayer {
    type Service = WholeRequestService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WholeRequestService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`WholeRequestLayer`].
#[derive(Debug, Clone)]
pub struct WholeRequestService<S> {
    inner: S,
    layer: WholeRequestLayer,
}

impl<S> tower::Service<http::Request<Body>> for WholeRequestService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready is the one to call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Every request, of every service, counts as activity on its connection until its
        // response has been sent (a health Watch stays open for as long as it streams).
        let open = PeerInfo::activity_of(&request).map(|a| a.enter());
        let hold = move |response: http::Response<Body>| match open {
            Some(open) => response.map(|body| Body::new(Holding { body, _open: open })),
            None => response,
        };
        // Only VectorIndex requests are read whole before they go further. Others are not:
        // health's Watch and reflection are streams whose request bodies stay open by design.
        if !Method::is_vector_index(request.uri().path()) {
            let call = inner.call(request);
            return Box::pin(async move { call.await.map(hold) });
        }
        let WholeRequestLayer {
            read_timeout,
            max_bytes,
            budget,
        } = self.layer.clone();
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let reading = read_whole(body, max_bytes, &budget);
            let status = match tokio::time::timeout(read_timeout, reading).await {
                Ok(Ok((bytes, held))) => {
                    let whole = http::Request::from_parts(parts, Body::new(Whole(Some(bytes))));
                    let response = inner.call(whole).await;
                    // The body's bytes count until the request is answered (decoded, queued
                    // in admission, served): only then are they freed.
                    drop(held);
                    return response.map(hold);
                }
                Ok(Err(ReadError::TooLarge)) => Status::resource_exhausted(format!(
                    "request too large: more than {max_bytes} bytes"
                )),
                // The peer reset the stream or the connection broke: nobody reads the answer.
                Ok(Err(ReadError::Body(error))) => {
                    Status::cancelled(format!("request body not received: {error}"))
                }
                Err(_) => Status::deadline_exceeded(format!(
                    "request body not received within {}",
                    humantime::format_duration(read_timeout)
                )),
            };
            Ok(hold(status.into_http()))
        })
    }
}

/// A response body that keeps its request counted as open on its connection until it is
/// sent whole (or dropped).
struct Holding {
    body: Body,
    _open: OpenRequest,
}

impl tonic::codegen::Body for Holding {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

enum ReadError {
    TooLarge,
    Body(tonic::Status),
}

/// The body's bytes, and the budget they hold.
async fn read_whole(
    mut body: Body,
    max_bytes: usize,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), ReadError> {
    use tonic::codegen::Body as _;
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(ReadError::Body)?;
        // Request trailers carry nothing for unary gRPC; only data is kept.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len = len.saturating_add(data.len());
        if len > max_bytes {
            return Err(ReadError::TooLarge);
        }
        // Waiting here leaves the rest of the body in HTTP/2 flow control: the peer is slowed
        // down, not buffered. `data.len()` is at most one frame (<= 16 MiB), so fits a u32.
        if !data.is_empty() {
            let permit = Arc::clone(budget)
                .acquire_many_owned(data.len() as u32)
                .await
                .map_err(|_| ReadError::TooLarge)?;
            match &mut held {
                Some(held) => held.merge(permit),
                None => held = Some(permit),
            }
        }
        // The usual request is one DATA frame: keep it without copying.
        match &first {
            None if rest.is_empty() => first = Some(data),
            _ => {
                if let Some(first) = first.take() {
                    rest.extend_from_slice(&first);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok((first.unwrap_or_else(|| Bytes::from(rest)), held))
}

/// A request body already read whole.
struct Whole(Option<Bytes>);

impl tonic::codegen::Body for Whole {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Poll::Ready(self.0.take().map(|data| Ok(http_body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.0.as_ref().map_or(0, |b| b.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_is_read_whole_across_frames_and_bounded() {
        let chunks = || {
            tokio_stream::iter(
                [&b"abc"[..], b"de", b"f"]
                    .into_iter()
                    .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(c)))),
            )
        };
        let body = |s| Body::new(http_body_util::StreamBody::new(s));
        let budget = Arc::new(Semaphore::new(6));
        let (whole, held) = match read_whole(body(chunks()), 6, &budget).await {
            Ok(read) => read,
            Err(_) => panic!("a body within the bounds is read"),
        };
        assert_eq!(whole, Bytes::from_static(b"abcdef"));
        assert_eq!(budget.available_permits(), 0, "the body holds its bytes");
        drop(held);
        assert_eq!(budget.available_permits(), 6, "and frees them when dropped");
        assert!(matches!(
            read_whole(body(chunks()), 5, &budget).await,
            Err(ReadError::TooLarge)
        ));
    }
}
