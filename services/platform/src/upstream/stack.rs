//! The client stack itself: from the caller down to the network, as the
//! module above lists it.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full};
use tonic::{Status, body::Body};
use tower::{
    BoxError, ServiceBuilder,
    balance::p2c::Balance,
    buffer::Buffer,
    filter::AsyncFilterLayer,
    load::{CompleteOnResponse, PendingRequests},
    retry::{
        Policy, RetryLayer,
        backoff::{Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _},
        budget::{Budget as _, TpsBudget},
    },
    util::{BoxCloneSyncService, rng::HasherRng},
};
use tower_resilience_circuitbreaker::{CircuitBreakerError, CircuitBreakerLayer};
use tracing::Instrument as _;

use super::{
    Credentials, UpstreamSettings,
    discover::{Replica, Replicas, discover},
};
use crate::{deadline::Deadline, middleware::encode_grpc_timeout};

/// The channel an anti-corruption layer wraps in a generated client:
/// `CatalogServiceClient::new(channel)`.
/// Its error is a concrete `Status` rather than a boxed error: generated
/// clients stay `Send` inside `async_trait` handlers that way.
pub type UpstreamChannel = BoxCloneSyncService<Request<Body>, Response<Body>, Status>;

/// The gRPC status code in a trailers-only answer's headers.
fn status_code(response: &Response<Body>) -> Option<i32> {
    response.headers().get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// Whether an attempt's outcome says the upstream is unavailable: a
/// connection that failed, or UNAVAILABLE before any message.
fn unavailable(result: &Result<Response<Body>, BoxError>) -> bool {
    match result {
        Ok(response) => status_code(response) == Some(tonic::Code::Unavailable as i32),
        Err(_) => true,
    }
}

/// Builds the channel to one upstream, resolving its addresses on its own.
/// Connections are made on first use and remade after failures, so the
/// downstream starts while the upstream is still down and recovers
/// without a restart.
pub fn channel(settings: &UpstreamSettings, credentials: &Credentials) -> anyhow::Result<UpstreamChannel> {
    channel_over(settings, credentials, &Replicas::start_for(settings)?)
}

/// The calls' channel over the replicas `replicas` resolves.
pub(super) fn channel_over(
    settings: &UpstreamSettings,
    credentials: &Credentials,
    replicas: &Replicas,
) -> anyhow::Result<UpstreamChannel> {
    let name = settings.name;
    for url in settings.addrs.iter().filter(|url| url.starts_with("https://")) {
        credentials.tls(url)?;
    }
    let balanced = balanced(settings, credentials, replicas, 1024);
    // The series the alerts read, at zero from the start (the breaker's own
    // appear at its first call).
    metrics::counter!("circuitbreaker_calls_total", "circuitbreaker" => name, "outcome" => "rejected")
        .increment(0);
    metrics::counter!("agora_upstream_retries_refused_total", "upstream" => name).increment(0);

    let breaker = CircuitBreakerLayer::builder()
        .name(name)
        .consecutive_failures(settings.breaker_failures)
        .wait_duration_in_open(settings.breaker_open)
        .permitted_calls_in_half_open(1)
        .failure_classifier(unavailable)
        .on_state_transition(move |from, to| tracing::warn!(upstream = name, ?from, ?to, "circuit breaker"))
        .build()
        .map_err(|e| anyhow::anyhow!("circuit breaker of {name}: {e}"))?;

    let mut backoff =
        ExponentialBackoffMaker::new(settings.backoff_min, settings.backoff_max, 0.5, HasherRng::default())
            .map_err(|e| anyhow::anyhow!("backoff of {name}: {e:?}"))?;
    let policy = RetryUnavailable {
        upstream: name,
        attempts_left: settings.max_attempts.saturating_sub(1),
        max_retries: settings.max_attempts.saturating_sub(1),
        backoff: backoff.make_backoff(),
        // Retries within `retry_ratio` of the calls of the last 10 s, plus a
        // floor of 5 a second so a quiet service can still retry.
        budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 5, settings.retry_ratio)),
    };
    let call_timeout = settings.call_timeout;

    let stack = ServiceBuilder::new()
        // Every failure leaves as a gRPC status that names the upstream.
        .map_err(move |e: CircuitBreakerError<BoxError>| to_status(name, e))
        // Fail fast while the upstream is known to be down.
        .layer(breaker)
        // Bound the call by the caller's deadline and our own timeout.
        .layer(CallDeadlineLayer { upstream: name, call_timeout })
        // Buffer the request so that a retry can send it again.
        .layer(AsyncFilterLayer::new(buffer_request))
        // Retry UNAVAILABLE with backoff and jitter, within the budget.
        .layer(RetryLayer::new(policy))
        // Each attempt a client span, its context sent to the upstream.
        .layer(tower::layer::layer_fn(move |inner| Attempts { inner, upstream: name }))
        // Tell the upstream how long it has, per attempt.
        .map_request(with_remaining_timeout)
        // Who is asking, where a token says it.
        .map_request(credentials.authorize())
        .service(balanced);
    Ok(BoxCloneSyncService::new(stack))
}

/// The channel for an upstream's change feed: balanced over its replicas,
/// connecting lazily, without the calls' deadline and retries. A feed is
/// one long stream; its consumer reconnects with its own backoff.
pub(super) fn feed_channel(
    settings: &UpstreamSettings,
    credentials: &Credentials,
    replicas: &Replicas,
) -> UpstreamChannel {
    let name = settings.name;
    let stack = ServiceBuilder::new()
        .map_err(move |e: BoxError| match e.downcast::<Status>() {
            Ok(status) => *status,
            Err(other) => Status::unavailable(format!("{name} is unavailable: {other}")),
        })
        .map_request(credentials.authorize())
        .service(balanced(settings, credentials, replicas, 64));
    BoxCloneSyncService::new(stack)
}

/// Power of two choices over the replicas as they come and go, each one
/// a lazily connecting channel that is ejected for a while after a failed
/// connection; a buffer of `capacity` calls in front (the balancer is not
/// Clone; the buffer is, and lets the one balancer serve every concurrent
/// call). With no replica at all, calls fail at once.
fn balanced(
    settings: &UpstreamSettings,
    credentials: &Credentials,
    replicas: &Replicas,
    capacity: usize,
) -> impl tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static {
    let name = settings.name;
    let pool = Arc::new(Pool::default());
    let make = {
        let (settings, credentials, replicas) = (settings.clone(), credentials.clone(), replicas.clone());
        move |replica: &Replica| match credentials.replica(replica, &settings) {
            Ok(channel) => {
                let ejecting = Ejecting::new(channel, pool.clone(), replicas.clone());
                Some(PendingRequests::new(ejecting, CompleteOnResponse::default()))
            }
            Err(err) => {
                tracing::warn!(upstream = name, addr = %replica.addr, error = %err, "replica left out");
                None
            }
        }
    };
    let balance = Balance::new(discover(replicas, make));
    let replicas = replicas.clone();
    ServiceBuilder::new()
        .layer(AsyncFilterLayer::new(move |request: Request<Body>| {
            let replicas = replicas.clone();
            async move {
                if replicas.none().await {
                    Err(Status::unavailable(format!(
                        "{name} is unavailable: its address resolves to no replica"
                    )))
                } else {
                    Ok(request)
                }
            }
        }))
        .service(Buffer::new(balance, capacity))
}

fn to_status(upstream: &str, err: CircuitBreakerError<BoxError>) -> Status {
    match err {
        CircuitBreakerError::OpenCircuit => {
            Status::unavailable(format!("{upstream} is unavailable (circuit open); retry later"))
        }
        CircuitBreakerError::Inner(inner) => match inner.downcast::<Status>() {
            Ok(status) => *status,
            Err(other) => {
                Status::unavailable(format!("{upstream} is unavailable: {}", crate::error::chain(&*other)))
            }
        },
    }
}

/// How many attempts one upstream call has made, shared by its retries.
#[derive(Debug, Clone, Default)]
struct AttemptCount(Arc<std::sync::atomic::AtomicU32>);

/// One attempt of an upstream call, when spans are exported: a client span
/// of the OpenTelemetry RPC conventions, numbered (`agora.attempt`: a retry
/// is attempt 2, 3, ...), whose context the request carries to the
/// upstream in `traceparent`, so the upstream's server span is its child.
#[derive(Clone)]
struct Attempts<S> {
    inner: S,
    upstream: &'static str,
}

impl<S, B> tower::Service<Request<B>> for Attempts<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if !crate::telemetry::exporting() {
            return Box::pin(self.inner.call(req));
        }
        if let Some(call) = crate::telemetry::untraced() {
            // The call served is not traced: no span, and the upstream is
            // told so (its trace, marked not sampled).
            req.headers_mut().insert("traceparent", crate::telemetry::untraced_traceparent(&call));
            return Box::pin(self.inner.call(req));
        }
        let attempt =
            req.extensions().get::<AttemptCount>().map_or(1, |c| c.0.fetch_add(1, Ordering::Relaxed) + 1);
        let path = req.uri().path();
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = self.upstream,
            agora.attempt = i64::from(attempt),
        );
        crate::telemetry::inject(&span, req.headers_mut());
        let fut = self.inner.call(req).instrument(span.clone());
        Box::pin(async move {
            let answer = fut.await;
            // A failed call is answered trailers-only (its status in the
            // headers); an answer with a message ends with OK unless the
            // stream breaks, which the caller sees as an error here.
            let code = match &answer {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i64>().ok())
                    .unwrap_or(0),
                Err(_) => 14,
            };
            span.record("rpc.grpc.status_code", code);
            if code != 0 {
                span.record("otel.status_code", "ERROR");
            }
            answer
        })
    }
}

/// The absolute deadline of one upstream call, carried in the request's
/// extensions from the deadline layer to each attempt.
#[derive(Debug, Clone, Copy)]
struct CallDeadline(tokio::time::Instant);

#[derive(Debug, Clone, Copy)]
struct CallDeadlineLayer {
    upstream: &'static str,
    call_timeout: Duration,
}

impl<S> tower::Layer<S> for CallDeadlineLayer {
    type Service = CallDeadlineService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallDeadlineService { inner, upstream: self.upstream, call_timeout: self.call_timeout }
    }
}

#[derive(Debug, Clone)]
struct CallDeadlineService<S> {
    inner: S,
    upstream: &'static str,
    call_timeout: Duration,
}

impl<S> tower::Service<Request<Body>> for CallDeadlineService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Send,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Body>) -> Self::Future {
        let own = tokio::time::Instant::now() + self.call_timeout;
        // The caller's deadline, when the call is asked for a served call.
        let deadline = req.extensions().get::<Deadline>().map_or(own, |d| d.0.min(own));
        let upstream = self.upstream;
        if deadline <= tokio::time::Instant::now() {
            let status = Status::deadline_exceeded(format!("no time left to ask {upstream}"));
            return Box::pin(std::future::ready(Err(status.into())));
        }
        req.extensions_mut().insert(CallDeadline(deadline));
        req.extensions_mut().insert(AttemptCount::default());
        let fut = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(result) => result,
                Err(_) => Err(Status::deadline_exceeded(format!("{upstream} did not answer in time")).into()),
            }
        })
    }
}

/// Collects the request body so the retry layer can clone the request.
/// Only unary and server-streaming calls go upstream: their request body is
/// one message.
async fn buffer_request(req: Request<Body>) -> Result<Request<Bytes>, BoxError> {
    let (parts, body) = req.into_parts();
    let bytes = body.collect().await.map_err(|e| -> BoxError { Box::new(e) })?.to_bytes();
    Ok(Request::from_parts(parts, bytes))
}

/// Sets `grpc-timeout` to the time left before the call's deadline, and
/// turns the buffered body back into a tonic body.
fn with_remaining_timeout(mut req: Request<Bytes>) -> Request<Body> {
    if let Some(CallDeadline(deadline)) = req.extensions().get::<CallDeadline>().copied() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Ok(value) = encode_grpc_timeout(left).parse() {
            req.headers_mut().insert("grpc-timeout", value);
        }
    }
    req.map(|bytes| Body::new(Full::new(bytes)))
}

/// gRPC's retry design, for one call: only an unavailable upstream is
/// retried, a bounded number of times, after a backoff with jitter, and
/// only while the shared budget has room.
#[derive(Clone)]
struct RetryUnavailable {
    upstream: &'static str,
    /// Retries a call may still make. The layer keeps a template; each call
    /// works on its own copy, so only copies ever count down.
    attempts_left: u32,
    max_retries: u32,
    backoff: ExponentialBackoff,
    budget: Arc<TpsBudget>,
}

impl Policy<Request<Bytes>, Response<Body>, BoxError> for RetryUnavailable {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<Bytes>,
        result: &mut Result<Response<Body>, BoxError>,
    ) -> Option<Self::Future> {
        if !unavailable(result) || self.attempts_left == 0 {
            return None;
        }
        if !self.budget.withdraw() {
            metrics::counter!("agora_upstream_retries_refused_total", "upstream" => self.upstream)
                .increment(1);
            return None;
        }
        self.attempts_left -= 1;
        metrics::counter!("agora_upstream_retries_total", "upstream" => self.upstream).increment(1);
        Some(self.backoff.next_backoff())
    }

    fn clone_request(&mut self, req: &Request<Bytes>) -> Option<Request<Bytes>> {
        if self.attempts_left == self.max_retries {
            // A call's first attempt earns the budget a share of a retry.
            self.budget.deposit();
        }
        let mut clone = Request::new(req.body().clone());
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.version_mut() = req.version();
        *clone.headers_mut() = req.headers().clone();
        *clone.extensions_mut() = req.extensions().clone();
        Some(clone)
    }
}

/// The replicas of one balancer, for ejection's one rule: never leave it
/// with no replica at all (then the call should fail fast, not wait).
#[derive(Debug, Default)]
struct Pool {
    total: AtomicUsize,
    ejected: AtomicUsize,
}

/// Outlier ejection for one replica. A lazily connecting channel to a dead
/// replica keeps reporting ready and failing every call it gets; the
/// balancer would keep choosing it. After a failed connection, or a
/// response that broke off mid-way (a stream whose replica died), this
/// wrapper reports "not ready" for a backoff that doubles with each
/// failure in a row (250 ms to 5 s), so the balancer picks the others,
/// then lets the replica try again; the failure also asks for a fresh
/// resolution of the upstream's names (the replica may be gone for good).
/// The first backoff is longer than a feed consumer's first retry, so the
/// retry goes elsewhere. Written here because tower's balancer has no
/// ejection and tonic's reconnecting channel hides its failures from
/// readiness.
struct Ejecting<S> {
    inner: S,
    ejector: Ejector,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// The ejection state of one replica, shared by its calls and responses.
#[derive(Clone)]
struct Ejector {
    state: Arc<Mutex<EjectState>>,
    pool: Arc<Pool>,
    replicas: Replicas,
}

#[derive(Debug, Default)]
struct EjectState {
    until: Option<tokio::time::Instant>,
    failures_in_a_row: u32,
}

impl Ejector {
    fn succeeded(&self) {
        self.state.lock().expect("ejection state").failures_in_a_row = 0;
    }

    /// Leaves the replica out of the choice for a while, unless it is the
    /// last one in it.
    fn failed(&self) {
        self.replicas.refresh();
        let mut state = self.state.lock().expect("ejection state");
        let pool = &self.pool;
        if state.until.is_none()
            && pool
                .ejected
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n + 1 < pool.total.load(Ordering::SeqCst)).then_some(n + 1)
                })
                .is_ok()
        {
            let backoff =
                Duration::from_millis(250 << state.failures_in_a_row.min(5)).min(Duration::from_secs(5));
            state.failures_in_a_row += 1;
            state.until = Some(tokio::time::Instant::now() + backoff);
        }
    }
}

impl<S> Ejecting<S> {
    fn new(inner: S, pool: Arc<Pool>, replicas: Replicas) -> Self {
        pool.total.fetch_add(1, Ordering::SeqCst);
        Self { inner, ejector: Ejector { state: Arc::default(), pool, replicas }, sleep: None }
    }
}

impl<S> Drop for Ejecting<S> {
    /// A replica that left the balancer leaves its count.
    fn drop(&mut self) {
        let pool = &self.ejector.pool;
        pool.total.fetch_sub(1, Ordering::SeqCst);
        if self.ejector.state.lock().expect("ejection state").until.is_some() {
            pool.ejected.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<S, Req> tower::Service<Req> for Ejecting<S>
where
    S: tower::Service<Req, Response = Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        let until = self.ejector.state.lock().expect("ejection state").until;
        if let Some(until) = until {
            if tokio::time::Instant::now() < until {
                let sleep = self.sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(until)));
                sleep.as_mut().reset(until);
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            // Back in the choice: the next call is its trial.
            self.ejector.state.lock().expect("ejection state").until = None;
            self.ejector.pool.ejected.fetch_sub(1, Ordering::SeqCst);
            self.sleep = None;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.inner.call(req);
        let ejector = self.ejector.clone();
        Box::pin(async move {
            match fut.await {
                Ok(response) => {
                    ejector.succeeded();
                    Ok(response.map(|inner| Body::new(Watched { inner, ejector: Some(ejector) })))
                }
                Err(err) => {
                    ejector.failed();
                    Err(err)
                }
            }
        })
    }
}

/// A response body that ejects its replica when it breaks off: the
/// replica died while it streamed.
struct Watched {
    inner: Body,
    ejector: Option<Ejector>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &polled
            && let Some(ejector) = self.ejector.take()
        {
            ejector.failed();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
