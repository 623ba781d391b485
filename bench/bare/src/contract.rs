//! `AGORA_BARE_STACK=contract`: the bound of the catalog's GetProduct. The
//! bare server wrapped in the least that keeps the runtime contract every
//! Agora service keeps (DESIGN.md): a request id taken or made and sent
//! back, a tracing span per call logged as text at info, metrics by method
//! and gRPC code, a panic answered INTERNAL, grpc-timeout honoured, a
//! concurrency limit that sheds, message size limits. Each piece is the
//! crate that does it, as a service might assemble them on a first day:
//! tower-http's request id, trace and catch-panic layers, tower's global
//! concurrency limit and load shedding, tonic's deadline and message
//! limits, the `metrics` crate with its Prometheus recorder, and
//! tracing-subscriber's text log. No health on the path, no connection
//! limits, no authentication.
//!
//! The one piece written here is [`Metered`]: no crate counts calls by
//! gRPC code, which a unary answer carries in its trailers.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Histogram};
use tower::{Layer, Service};
use tower_http::{
    classify::GrpcFailureClass,
    request_id::{MakeRequestId, RequestId},
};
use tracing::Span;

/// What the catalog admits at once by default (`AGORA_CONCURRENCY_LIMIT`).
pub const CONCURRENCY_LIMIT: usize = 256;
/// The catalog's default bound on a call (`AGORA_REQUEST_TIMEOUT_MS`).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The logs as the services write them by default: text, at info (a level
/// alone, the cheapest filter: nothing is kept per span).
pub fn init_logs() {
    tracing_subscriber::fmt().with_target(false).with_ansi(false).with_max_level(tracing::Level::INFO).init();
}

/// A panic in the handler answers INTERNAL; its message is not sent.
pub fn internal_on_panic(_: Box<dyn std::any::Any + Send>) -> Response<tonic::body::Body> {
    tonic::Status::internal("internal error").into_http()
}

/// The call's span, at info: what a line logged during the call carries.
pub fn call_span<B>(req: &Request<B>) -> Span {
    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
    tracing::info_span!("grpc", path = %req.uri().path(), request_id = %id)
}

/// A failed call (by the gRPC code of its answer) logs a warning.
pub fn warn_on_failure(class: GrpcFailureClass, _latency: Duration, _span: &Span) {
    tracing::warn!(?class, "call failed");
}

/// Installs the Prometheus recorder, without its HTTP listener: scraping
/// is off the request path.
pub fn init_metrics() {
    let _ = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder();
}

/// Request ids from a counter: tower-http's `MakeRequestUuid` asks the
/// kernel for randomness on every call.
#[derive(Clone, Default)]
pub struct CountedId(Arc<AtomicU64>);

impl MakeRequestId for CountedId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        http::HeaderValue::from_str(&format!("bare-{n:032x}")).ok().map(RequestId::new)
    }
}

/// The metrics of one method, looked up once.
struct MethodMetrics {
    started: Counter,
    seconds: Histogram,
    handled: HashMap<&'static str, Counter>,
}

#[derive(Clone)]
pub struct MeteredLayer(Arc<HashMap<String, MethodMetrics>>);

/// gRPC codes as the `grpc-status` header carries them; the bound counts
/// OK and the codes of the caller's mistakes the catalog's GetProduct can
/// answer.
const CODES: [&str; 4] = ["0", "3", "5", "13"];

impl MeteredLayer {
    pub fn new(paths: &[&str]) -> Self {
        let methods = paths
            .iter()
            .map(|path| {
                let method = path.rsplit('/').next().unwrap_or(path).to_owned();
                let handled = CODES
                    .iter()
                    .map(|&code| {
                        let counter = metrics::counter!("grpc_server_handled_total",
                            "grpc_method" => method.clone(), "grpc_code" => code);
                        (code, counter)
                    })
                    .collect();
                let metrics = MethodMetrics {
                    started: metrics::counter!("grpc_server_started_total", "grpc_method" => method.clone()),
                    seconds: metrics::histogram!("grpc_server_handling_seconds", "grpc_method" => method),
                    handled,
                };
                (path.to_string(), metrics)
            })
            .collect();
        Self(Arc::new(methods))
    }
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, methods: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct Metered<S> {
    inner: S,
    methods: Arc<HashMap<String, MethodMetrics>>,
}

/// One call being counted: its method's metrics and its start.
struct Call {
    methods: Arc<HashMap<String, MethodMetrics>>,
    path: String,
    start: Instant,
}

impl Call {
    fn finish(self, headers: &HeaderMap) {
        let Some(metrics) = self.methods.get(&self.path) else { return };
        metrics.seconds.record(self.start.elapsed().as_secs_f64());
        let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("2");
        if let Some(counter) = metrics.handled.get(code) {
            counter.increment(1);
        }
    }
}

impl<S, B, R> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let path = req.uri().path().to_owned();
        if let Some(metrics) = self.methods.get(&path) {
            metrics.started.increment(1);
        }
        let call = Call { methods: self.methods.clone(), path, start: Instant::now() };
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            // A status in the headers: a trailers-only answer, over now.
            let call = if response.headers().contains_key("grpc-status") {
                call.finish(response.headers());
                None
            } else {
                Some(call)
            };
            Ok(response.map(|inner| MeteredBody { inner, call }))
        })
    }
}

pin_project_lite::pin_project! {
    /// The answer's body, watched for the trailers that carry its status.
    pub struct MeteredBody<R> {
        #[pin]
        inner: R,
        call: Option<Call>,
    }
}

impl<R: Body> Body for MeteredBody<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(trailers)) = frame.as_ref().map(|f| f.as_ref().map(Frame::trailers_ref))
            && let (Some(trailers), Some(call)) = (trailers, this.call.take())
        {
            call.finish(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The claims the bound reads from a caller's token.
#[derive(Clone, serde::Deserialize)]
struct Claims {
    exp: i64,
    #[serde(default)]
    roles: Vec<String>,
}

/// Callers' tokens, checked on every call as a tonic interceptor: each
/// token verified once with jsonwebtoken against the issuer's keys
/// (`AGORA_JWKS_FILE`, `AGORA_JWT_ISSUER`, `AGORA_JWT_AUDIENCE`, as the
/// services read them), then found by its text in a map, its expiry checked
/// again and its roles matched against the method's (GetProduct: anyone
/// signed in). The least a server can do that still refuses a token it did
/// not verify; a map, not a cache crate, because a benchmark's callers hold
/// a handful of tokens.
#[derive(Clone)]
pub struct Tokens {
    keys: Arc<Vec<(jsonwebtoken::DecodingKey, jsonwebtoken::Validation)>>,
    verified: Arc<std::sync::RwLock<HashMap<String, Claims>>>,
}

impl Tokens {
    /// The issuer's keys, when `AGORA_JWKS_FILE` names them.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        use anyhow::Context as _;
        let Ok(file) = std::env::var("AGORA_JWKS_FILE") else { return Ok(None) };
        let issuer = std::env::var("AGORA_JWT_ISSUER").context("AGORA_JWT_ISSUER")?;
        let audience = std::env::var("AGORA_JWT_AUDIENCE").context("AGORA_JWT_AUDIENCE")?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&std::fs::read(&file)?)?;
        let mut keys = Vec::new();
        for jwk in &set.keys {
            let alg = jwk.common.key_algorithm.context("a key without its algorithm")?;
            let alg: jsonwebtoken::Algorithm = alg.to_string().parse()?;
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.set_issuer(&[&issuer]);
            validation.set_audience(&[&audience]);
            keys.push((jsonwebtoken::DecodingKey::from_jwk(jwk)?, validation));
        }
        Ok(Some(Self { keys: Arc::new(keys), verified: Arc::default() }))
    }

    fn verify(&self, token: &str) -> Option<Claims> {
        if let Some(claims) = self.verified.read().ok()?.get(token) {
            return Some(claims.clone());
        }
        let claims = self.keys.iter().find_map(|(key, validation)| {
            jsonwebtoken::decode::<Claims>(token, key, validation).ok().map(|data| data.claims)
        })?;
        self.verified.write().ok()?.insert(token.to_owned(), claims.clone());
        Some(claims)
    }
}

impl tonic::service::Interceptor for Tokens {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| tonic::Status::unauthenticated("a bearer token is required"))?;
        let claims =
            self.verify(token).ok_or_else(|| tonic::Status::unauthenticated("the token is not valid"))?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if claims.exp < now.as_secs() as i64 {
            return Err(tonic::Status::unauthenticated("the token has expired"));
        }
        // GetProduct: a customer (no role), staff or a service may call it.
        if !claims.roles.iter().all(|role| matches!(role.as_str(), "staff" | "service")) {
            return Err(tonic::Status::permission_denied("an unknown role"));
        }
        Ok(request)
    }
}
