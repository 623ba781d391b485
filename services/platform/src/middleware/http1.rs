//! Calls over HTTP/1.1 (gRPC-Web) have their request read to its end before
//! anything below answers them.
//!
//! HTTP/1.1 carries one request after another on a connection: when an
//! answer (a refusal: no token, no such method, load shed) comes before the
//! request's body was read, hyper cannot find where the next request starts
//! and closes the connection, and a client that already sent its next call
//! there sees it fail (EPIPE, which clients report as INTERNAL). A gRPC-Web
//! request is one message (browsers cannot stream a request), so reading it
//! whole first costs a buffer of at most one message. Written here because
//! no tower or tower-http layer buffers a body with a bound in size and
//! time and answers a gRPC status when it is passed.

use std::{pin::Pin, time::Duration};

use futures_util::future::Either;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use tonic::{Status, body::Body};
use tower::{Layer, Service};

use super::status_response;

/// Marks a call that came over HTTP/1.1: the connection puts it in the
/// request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct OverHttp1;

/// Reads the request of an HTTP/1.1 call whole, up to `max_bytes` and
/// within `within`, before calling the inner service.
#[derive(Debug, Clone, Copy)]
pub struct ReadWholeLayer {
    pub max_bytes: usize,
    pub within: Duration,
}

impl<S> Layer<S> for ReadWholeLayer {
    type Service = ReadWhole<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ReadWhole { inner, limits: *self }
    }
}

#[derive(Debug, Clone)]
pub struct ReadWhole<S> {
    inner: S,
    limits: ReadWholeLayer,
}

type Boxed<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, ResBody> Service<Request<Body>> for ReadWhole<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Future = Either<S::Future, Boxed<Response<ResBody>, S::Error>>;
    super::delegate_to_inner!();

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        if req.extensions().get::<OverHttp1>().is_none() {
            return Either::Left(self.inner.call(req));
        }
        // The service that was made ready goes with the call.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let ReadWholeLayer { max_bytes, within } = self.limits;
        Either::Right(Box::pin(async move {
            let (parts, body) = req.into_parts();
            let body = match tokio::time::timeout(within, Limited::new(body, max_bytes).collect()).await {
                Ok(Ok(read)) => read.to_bytes(),
                Ok(Err(err)) if err.is::<LengthLimitError>() => {
                    return Ok(status_response(Status::resource_exhausted(format!(
                        "a request over HTTP/1.1 is at most {max_bytes} bytes"
                    ))));
                }
                Ok(Err(_)) => return Ok(status_response(Status::cancelled("the request ended early"))),
                Err(_) => {
                    return Ok(status_response(Status::deadline_exceeded(format!(
                        "the request was not sent within {} ms",
                        within.as_millis()
                    ))));
                }
            };
            inner.call(Request::from_parts(parts, Body::new(Full::new(body)))).await
        }))
    }
}

/// The bytes of a gRPC-Web request of one message of `max_message_bytes`:
/// its frame's header, and base64 for `application/grpc-web-text`.
pub fn http1_request_bytes(max_message_bytes: usize) -> usize {
    (max_message_bytes + 5).div_ceil(3) * 4
}
