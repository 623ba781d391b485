//! Admission control: a bounded wait for a place, then refusal, instead of
//! an unbounded queue.
//!
//! Unary calls need a permit from a server-wide semaphore, held until their
//! answer. When none is free a call waits for one, in order of arrival, at
//! most `AGORA_ADMISSION_WAIT_MS` (and never past its own deadline, less a
//! margin), and at most `AGORA_ADMISSION_QUEUE` calls wait at once; a call
//! that gets no permit fails with RESOURCE_EXHAUSTED and RetryInfo (load
//! shedding). Before start-up finished a call fails with UNAVAILABLE.
//!
//! The wait is what keeps a saturated server serving: a refusal costs
//! about as much of the core as a small call (an HTTP/2 stream opened and
//! answered), and clients that send again at once would otherwise take the
//! core from the calls admitted (under ten times its limit the catalog
//! answered 0.65× its capacity, 89 % of its answers refusals). Held a
//! moment, an excess call is either served as a place frees up, or refused
//! once, not over and over. Long-lived streams (server-streaming calls, the
//! change feeds, health watches) are admitted apart, by a semaphore of
//! their own and a count per connection, and hold their place until the
//! stream ends: an open stream costs no unary permit, and a client cannot
//! open more than its share. Health and reflection skip the start-up check
//! and the unary limit: a Kubernetes probe must get an answer from a busy
//! server, or the kubelet would restart a pod for being popular. tower's
//! `LoadShed` over `GlobalConcurrencyLimit` sheds every path alike, and
//! releases its permit when the answer's headers leave, which is why this
//! layer exists.
//!
//! A request whose header list is over the limit is refused here too, with
//! RESOURCE_EXHAUSTED naming the limit (HTTP/2 alone would answer 431,
//! which clients report as UNKNOWN).

use std::{
    collections::HashSet,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::{Layer, Service};

use super::{Refused, status_response};
use crate::{
    config::ConnectionSettings,
    connection::{Connection, StreamOnConnection},
    health::Health,
};

/// The answer to a call turned away, marked so the observe layer knows.
fn refused<B: Default>(status: tonic::Status) -> Response<B> {
    let mut response = status_response(status);
    response.extensions_mut().insert(Refused);
    response
}

/// RESOURCE_EXHAUSTED with RetryInfo: a limit that frees up, unlike an
/// oversized request (also RESOURCE_EXHAUSTED, never worth sending again):
/// only this one says when to retry.
fn shed<B: Default>(message: String, retry_after: Duration) -> Response<B> {
    metrics::counter!("agora_grpc_server_shed_total").increment(1);
    let details = tonic_types::ErrorDetails::with_retry_info(Some(retry_after));
    let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
        tonic::Code::ResourceExhausted,
        message,
        details,
    );
    refused(status)
}

/// The wait a shed call is told before it retries (RetryInfo), jittered by
/// the client's own backoff.
const SHED_RETRY_DELAY: Duration = Duration::from_millis(50);
/// The wait a refused stream is told: streams end less often than calls.
const STREAM_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Paths that skip the start-up check and the unary limit.
fn bypasses(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The size of a header list as HTTP/2 measures it (RFC 9113, 6.5.2): each
/// field's name and value and 32 bytes.
fn header_list_bytes<B>(req: &Request<B>) -> usize {
    req.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 32).sum()
}

/// How long, and how many, calls wait for a place when all are taken.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    pub longest: Duration,
    pub most: usize,
}

#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    waiting: Waiting,
    /// Calls waiting for a place now.
    waiters: Arc<AtomicUsize>,
    streams: Arc<Semaphore>,
    /// The paths of long-lived streams.
    stream_paths: Arc<HashSet<String>>,
    limits: Arc<ConnectionSettings>,
    health: Health,
}

impl AdmissionLayer {
    /// `limit` unary calls at once; the streams of `stream_paths` as
    /// `limits` says.
    pub fn new(
        limit: usize,
        waiting: Waiting,
        limits: &ConnectionSettings,
        stream_paths: HashSet<String>,
        health: Health,
    ) -> Self {
        // At zero from the start: an alert on its rate sees 0, not no data.
        metrics::counter!("agora_grpc_server_shed_total").increment(0);
        metrics::gauge!("agora_grpc_server_streams").set(0.0);
        metrics::gauge!("agora_grpc_server_admission_waiting").set(0.0);
        Self {
            permits: Arc::new(Semaphore::new(limit)),
            waiting,
            waiters: Arc::new(AtomicUsize::new(0)),
            streams: Arc::new(Semaphore::new(limits.stream_limit)),
            stream_paths: Arc::new(stream_paths),
            limits: Arc::new(limits.clone()),
            health,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Admission { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Admission<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Default + Send + 'static,
{
    type Response = Response<Admitted<ResBody>>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    super::delegate_to_inner!();

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let refuse = |response| -> Self::Future { Box::pin(std::future::ready(Ok(response))) };
        let headers = header_list_bytes(&req);
        if headers > layer.limits.max_header_bytes {
            let status = tonic::Status::resource_exhausted(format!(
                "the request's headers take {headers} bytes, over the server's limit of {} bytes \
                 (AGORA_MAX_HEADER_BYTES); send less metadata, retrying will not help",
                layer.limits.max_header_bytes
            ));
            return refuse(refused(status));
        }
        let path = req.uri().path();
        if !bypasses(path) && !layer.health.is_started() {
            return refuse(refused(tonic::Status::unavailable("the service is starting")));
        }
        if layer.stream_paths.contains(path) {
            return self.stream(req);
        }
        if bypasses(path) {
            let fut = self.inner.call(req);
            return Box::pin(async move { Ok(fut.await?.map(Admitted::plain)) });
        }
        if let Ok(permit) = layer.permits.clone().try_acquire_owned() {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let result = fut.await;
                drop(permit);
                Ok(result?.map(Admitted::plain))
            });
        }
        // Every place is taken: wait for one, briefly, in order of arrival.
        let shed_now =
            || refuse(shed("the server is at its concurrency limit; retry later".into(), SHED_RETRY_DELAY));
        let wait = wait_for(&req, layer.waiting.longest);
        if wait.is_zero() {
            return shed_now();
        }
        let Some(waiter) = Waiter::join(&layer.waiters, layer.waiting.most) else {
            return shed_now();
        };
        let permits = layer.permits.clone();
        // The service that was made ready goes with the call; a clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let permit = tokio::time::timeout(wait, permits.acquire_owned()).await;
            drop(waiter);
            let Ok(Ok(permit)) = permit else {
                return Ok(shed(
                    "the server is at its concurrency limit; retry later".into(),
                    SHED_RETRY_DELAY,
                ));
            };
            // The services below (authorization, routing) stay ready.
            let result = inner.call(req).await;
            drop(permit);
            Ok(result?.map(Admitted::plain))
        })
    }
}

/// How long a call may wait for a place: `longest`, or less when its
/// deadline (`grpc-timeout`) is sooner, less a margin to answer in (a tenth
/// of its time, at most 50 ms).
fn wait_for<B>(req: &Request<B>, longest: Duration) -> Duration {
    let timeout =
        req.headers().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(super::parse_grpc_timeout);
    match timeout {
        Some(left) => left.saturating_sub((left / 10).min(Duration::from_millis(50))).min(longest),
        None => longest,
    }
}

/// A call's place among those waiting for a permit, counted until dropped.
struct Waiter(Arc<AtomicUsize>);

impl Waiter {
    /// A place among at most `most` waiting calls, if one is free.
    fn join(waiters: &Arc<AtomicUsize>, most: usize) -> Option<Self> {
        waiters.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < most).then_some(n + 1)).ok()?;
        metrics::gauge!("agora_grpc_server_admission_waiting").increment(1.0);
        Some(Self(waiters.clone()))
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("agora_grpc_server_admission_waiting").decrement(1.0);
    }
}

impl<S> Admission<S> {
    /// A long-lived stream: a place in the process's streams and in its
    /// connection's, both held by the answer's body until the stream ends.
    #[allow(clippy::type_complexity)]
    fn stream<ReqBody, ResBody>(
        &mut self,
        req: Request<ReqBody>,
    ) -> Pin<Box<dyn Future<Output = Result<Response<Admitted<ResBody>>, S::Error>> + Send>>
    where
        S: Service<Request<ReqBody>, Response = Response<ResBody>>,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
        ResBody: Body + Default + Send + 'static,
    {
        let limits = &self.layer.limits;
        let Ok(permit) = self.layer.streams.clone().try_acquire_owned() else {
            let message =
                format!("the server has {} streams open, its most; retry later", limits.stream_limit);
            return Box::pin(std::future::ready(Ok(shed(message, STREAM_RETRY_DELAY))));
        };
        let connection = req.extensions().get::<Arc<Connection>>().cloned();
        let on_connection = match connection {
            Some(connection) => match connection.open_stream(limits.stream_limit_per_connection) {
                Some(on_connection) => Some(on_connection),
                None => {
                    let message = format!(
                        "this connection has {} streams open, its most; end one, or open another connection",
                        limits.stream_limit_per_connection
                    );
                    return Box::pin(std::future::ready(Ok(shed(message, STREAM_RETRY_DELAY))));
                }
            },
            None => None,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let open = metrics::gauge!("agora_grpc_server_streams");
            open.increment(1.0);
            let closing = on_connection.as_ref().map(|c| Box::pin(c.closing().cancelled_owned()));
            let guard = StreamGuard { _permit: permit, on_connection, closing, ended: false };
            Ok(response.map(|inner| Admitted { inner, guard: Some(guard) }))
        })
    }
}

/// What an open stream holds: its places in the process's and its
/// connection's streams, and the signal that the server is closing.
struct StreamGuard {
    _permit: OwnedSemaphorePermit,
    on_connection: Option<StreamOnConnection>,
    closing: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    /// Ended by the server (UNAVAILABLE sent).
    ended: bool,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        metrics::gauge!("agora_grpc_server_streams").decrement(1.0);
    }
}

pin_project_lite::pin_project! {
    /// An answer's body; a stream's holds its [`StreamGuard`], marks its
    /// stall clock, and ends with UNAVAILABLE when the server closes while
    /// it waits for something to send (a health watch, say), so that its
    /// client reconnects elsewhere instead of holding the shutdown up.
    pub struct Admitted<B> {
        #[pin]
        inner: B,
        guard: Option<StreamGuard>,
    }
}

impl<B> Admitted<B> {
    fn plain(inner: B) -> Self {
        Self { inner, guard: None }
    }
}

impl<B: Default> Default for Admitted<B> {
    fn default() -> Self {
        Self::plain(B::default())
    }
}

impl<B: Body> Body for Admitted<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let Some(guard) = this.guard else { return this.inner.poll_frame(cx) };
        if guard.ended {
            return Poll::Ready(None);
        }
        let clock = guard.on_connection.as_ref().map(|c| &c.clock);
        if let Some(clock) = clock {
            clock.polled();
        }
        match this.inner.poll_frame(cx) {
            Poll::Pending => {
                let closed =
                    guard.closing.as_mut().is_some_and(|closing| closing.as_mut().poll(cx).is_ready());
                if !closed {
                    return Poll::Pending;
                }
                guard.ended = true;
                let status = tonic::Status::unavailable("the server is shutting down; reconnect");
                let mut trailers = http::HeaderMap::new();
                let _ = status.add_header(&mut trailers);
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(clock), true) = (clock, frame.is_data()) {
                    clock.sent();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.ended) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
