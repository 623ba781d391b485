//! One tracing span and one set of metrics per gRPC call.
//!
//! A gRPC call's outcome is its `grpc-status`, which arrives either in the
//! response headers (an error answered at once) or in the trailers after the
//! last message (every success, every streamed error). tower-http's trace and
//! metrics layers see HTTP statuses, which are 200 for all of these; this
//! layer reads the gRPC status from wherever it comes and records:
//! - `grpc_server_started_total{grpc_service, grpc_method}`
//! - `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`
//! - `grpc_server_handling_seconds{grpc_service, grpc_method}` (histogram)
//! - `grpc_server_in_flight{grpc_service, grpc_method}`
//!
//! The names follow the go-grpc-prometheus conventions, so existing
//! dashboards and alerts work unchanged.
//!
//! Every call has a request id: the caller's `x-request-id`, or one made
//! here. The span carries it, so every log line of a call can be found from
//! the id the client sees, and the answer's headers send it back. Done
//! here rather than by tower-http's request id layers, which put a made id
//! into the request's headers and its extensions, then clone it out again
//! for the answer: four allocations a call, for a value only this layer
//! reads.
//!
//! Inner layers and handlers leave [`CallNotes`] for the end of the call:
//! who called (set by authorization), and for audited RPCs the resource
//! acted on; an audited call ends with one line on the `agora::audit`
//! target: who, what, which resource, outcome.

use std::{
    collections::HashMap,
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError},
    task::{Context, Poll, ready},
    time::Instant,
};

use http::{HeaderMap, Request, Response, header::HeaderName};
use http_body::{Body, Frame, SizeHint};
use metrics::{Counter, Gauge, Histogram, Label, counter, gauge, histogram};
use tower::{Layer, Service};
use tracing::{Instrument, Span, field};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::delegate_to_inner;
use crate::task::Shutdown;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Canonical gRPC status names, indexed by code.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

fn code_of(headers: &HeaderMap) -> Option<usize> {
    let code: usize = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    // A code outside the known range is reported as UNKNOWN.
    Some(if code < CODE_NAMES.len() { code } else { 2 })
}

/// The codes tonic's transport gives two mistakes of the caller, corrected
/// before the call is counted, as other gRPC implementations answer them:
/// a body that does not decode as the method's message is
/// INVALID_ARGUMENT (tonic answers INTERNAL, as if the server broke), and a
/// request over `AGORA_MAX_MESSAGE_BYTES` is RESOURCE_EXHAUSTED naming the
/// limit (tonic: OUT_OF_RANGE). An oversized request carries no RetryInfo:
/// unlike a call shed under load, sending it again cannot succeed. Both
/// come as trailers-only answers, before the handler runs.
fn correct_transport_codes(headers: &mut HeaderMap, metrics: &MethodMetrics) {
    let Some(status) = tonic::Status::from_header_map(headers) else { return };
    let message = status.message();
    let corrected = match status.code() {
        tonic::Code::Internal if message.starts_with("failed to decode Protobuf message") => {
            counter!("agora_grpc_server_malformed_total").increment(1);
            tracing::debug!(
                method = %format_args!("{}/{}", metrics.service, metrics.method),
                why = message,
                "a request body that is not the method's message"
            );
            tonic::Status::invalid_argument("the request body is not a valid message of this method")
        }
        tonic::Code::OutOfRange if message.contains("decoded message length too large") => {
            let limit = message.rsplit("the limit is: ").next().unwrap_or("its limit");
            tonic::Status::resource_exhausted(format!(
                "the request is larger than this server accepts ({limit}); it is not retried"
            ))
        }
        _ => return,
    };
    // The new status replaces the old one's headers (status, message, details).
    headers.remove("grpc-status-details-bin");
    let _ = corrected.add_header(headers);
}

/// What inner layers and the handler tell the end of a call.
#[derive(Clone, Default)]
pub struct CallNotes(Arc<Mutex<Notes>>);

#[derive(Default)]
struct Notes {
    /// The caller, as ids only (`customer:cus_...`).
    caller: Option<String>,
    /// The call leaves an audit line.
    audit: bool,
    /// The resource the call acted on.
    resource: Option<String>,
}

impl CallNotes {
    fn with<R>(&self, f: impl FnOnce(&mut Notes) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Who called, and whether the call is audited.
    pub fn set_caller(&self, caller: &impl std::fmt::Display, audit: bool) {
        self.with(|notes| {
            notes.caller = Some(caller.to_string());
            notes.audit = audit;
        });
    }

    /// The resource the call acted on (an id).
    pub fn set_resource(&self, resource: &str) {
        self.with(|notes| notes.resource = Some(resource.to_owned()));
    }
}

/// The metrics of one method, looked up in the registry once: the lookups
/// and their label vectors showed in the profile of every call.
struct MethodMetrics {
    service: String,
    method: String,
    started: Counter,
    in_flight: Gauge,
    seconds: Histogram,
    /// By gRPC code, registered at a code's first use.
    handled: [OnceLock<Counter>; CODE_NAMES.len()],
}

impl MethodMetrics {
    fn new(service: &str, method: &str) -> Self {
        let labels =
            [Label::new("grpc_service", service.to_owned()), Label::new("grpc_method", method.to_owned())];
        Self {
            service: service.to_owned(),
            method: method.to_owned(),
            started: counter!("grpc_server_started_total", labels.iter()),
            in_flight: gauge!("grpc_server_in_flight", labels.iter()),
            seconds: histogram!("grpc_server_handling_seconds", labels.iter()),
            handled: Default::default(),
        }
    }

    fn handled(&self, code: usize) -> &Counter {
        self.handled[code].get_or_init(|| {
            counter!("grpc_server_handled_total", "grpc_service" => self.service.clone(),
                "grpc_method" => self.method.clone(), "grpc_code" => CODE_NAMES[code])
        })
    }
}

#[derive(Clone)]
pub struct ObserveLayer {
    /// The metrics of each method served, by path (`/pkg.Service/Method`).
    /// Other paths share the `unknown` labels, so a scanner cannot grow
    /// the label set.
    methods: Arc<HashMap<String, Arc<MethodMetrics>>>,
    unknown: Arc<MethodMetrics>,
    stopping: Shutdown,
}

impl ObserveLayer {
    /// `methods`: the paths served (`/pkg.Service/Method`). `stopping`: the
    /// server's shutdown, which explains the UNAVAILABLE that ends the
    /// streams it stops (no warning for those).
    pub fn new(methods: impl IntoIterator<Item = String>, stopping: Shutdown) -> Self {
        // At zero from the start: an alert on its rate sees 0, not no data.
        counter!("agora_grpc_server_malformed_total").increment(0);
        let methods = methods
            .into_iter()
            .filter_map(|path| {
                let (service, method) = path.strip_prefix('/')?.split_once('/')?;
                let metrics = Arc::new(MethodMetrics::new(service, method));
                Some((path, metrics))
            })
            .collect();
        let unknown = Arc::new(MethodMetrics::new("unknown", "unknown"));
        Self { methods: Arc::new(methods), unknown, stopping }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Observe { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    layer: ObserveLayer,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Observe<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body,
{
    type Response = Response<ObservedBody<ResBody>>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;
    delegate_to_inner!();

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let layer = &self.layer;
        let metrics = layer.methods.get(req.uri().path()).unwrap_or(&layer.unknown).clone();
        let (service, method) = (metrics.service.as_str(), metrics.method.as_str());
        // The caller's request id, or a new one; sent back with the answer.
        let id = req.headers().get(&X_REQUEST_ID).cloned().unwrap_or_else(super::new_request_id);
        let request_id = id.to_str().unwrap_or("");
        let trace = crate::telemetry::exporting().then(|| crate::telemetry::sample_call(req.headers()));
        let span = match &trace {
            Some(crate::telemetry::CallTrace::Traced(parent)) => {
                // A server span of the OpenTelemetry RPC conventions, child of
                // the caller's (`traceparent`), with its ids for the log lines.
                let span = tracing::info_span!(
                    "grpc",
                    otel.name = %format_args!("{service}/{method}"),
                    otel.kind = "server",
                    otel.status_code = field::Empty,
                    rpc.system = "grpc",
                    rpc.service = %service,
                    rpc.method = %method,
                    rpc.grpc.status_code = field::Empty,
                    server.address = req.uri().host().unwrap_or(""),
                    request_id = %request_id,
                    trace_id = field::Empty,
                    span_id = field::Empty,
                    caller = field::Empty,
                    grpc.code = field::Empty,
                    elapsed_ms = field::Empty,
                );
                let _ = span.set_parent(parent.clone());
                crate::telemetry::record_ids(&span);
                span
            }
            Some(crate::telemetry::CallTrace::Untraced(call)) => {
                // Not traced: a span for the log lines only, of a target the
                // OpenTelemetry layer does not take (it takes `agora*`),
                // naming the caller's trace when the caller sent one.
                let span = tracing::info_span!(
                    target: "untraced",
                    "grpc",
                    rpc.service = %service,
                    rpc.method = %method,
                    request_id = %request_id,
                    trace_id = field::Empty,
                    span_id = field::Empty,
                    caller = field::Empty,
                    grpc.code = field::Empty,
                    elapsed_ms = field::Empty,
                );
                if call.from_caller {
                    span.record("trace_id", field::display(call.trace_id));
                    span.record("span_id", field::display(call.span_id));
                }
                span
            }
            None => tracing::info_span!(
                "grpc",
                rpc.service = %service,
                rpc.method = %method,
                request_id = %request_id,
                caller = field::Empty,
                grpc.code = field::Empty,
                elapsed_ms = field::Empty,
            ),
        };
        let notes = CallNotes::default();
        req.extensions_mut().insert(notes.clone());
        let traced = matches!(trace, Some(crate::telemetry::CallTrace::Traced(_)));
        let guard = CallGuard::start(metrics, span.clone(), notes, layer.stopping.clone(), traced);
        let fut = self.inner.call(req).instrument(span);
        let fut = match trace {
            Some(crate::telemetry::CallTrace::Untraced(call)) => {
                futures_util::future::Either::Left(crate::telemetry::scope_untraced(call, fut))
            }
            _ => futures_util::future::Either::Right(fut),
        };
        Box::pin(async move {
            let response = fut.await?;
            let (mut parts, body) = response.into_parts();
            parts.headers.entry(X_REQUEST_ID).or_insert(id);
            correct_transport_codes(&mut parts.headers, &guard.metrics);
            // A status in the headers is a trailers-only answer: the call is over.
            let guard = match code_of(&parts.headers) {
                Some(code) => {
                    let refused = parts.extensions.get::<super::Refused>().is_some();
                    guard.finish_as(code, refused);
                    None
                }
                None => Some(guard),
            };
            Ok(Response::from_parts(parts, ObservedBody { inner: body, guard }))
        })
    }
}

/// Records the end of one call exactly once: at its status, or when the
/// response is dropped before one was sent (the client went away).
struct CallGuard {
    metrics: Arc<MethodMetrics>,
    span: Span,
    notes: CallNotes,
    stopping: Shutdown,
    start: Instant,
    done: bool,
    /// The call's span is exported.
    traced: bool,
}

impl CallGuard {
    fn start(
        metrics: Arc<MethodMetrics>,
        span: Span,
        notes: CallNotes,
        stopping: Shutdown,
        traced: bool,
    ) -> Self {
        metrics.started.increment(1);
        metrics.in_flight.increment(1.0);
        Self { metrics, span, notes, stopping, start: Instant::now(), done: false, traced }
    }

    fn finish(mut self, code: usize) {
        self.record(code, false);
    }

    /// As `finish`; `refused`: the server turned the call away on purpose
    /// (starting, saturated), which is no failure to warn of.
    fn finish_as(mut self, code: usize, refused: bool) {
        self.record(code, refused);
    }

    fn record(&mut self, code: usize, refused: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let elapsed = self.start.elapsed();
        let name = CODE_NAMES[code];
        self.metrics.in_flight.decrement(1.0);
        self.metrics.seconds.record(elapsed.as_secs_f64());
        self.metrics.handled(code).increment(1);

        let (caller, audit, resource) =
            self.notes.with(|notes| (notes.caller.take(), notes.audit, notes.resource.take()));
        // The outcome goes into the span for the lines logged below and for
        // an exported span; when neither will be (a success at the default
        // level, traces off), recording it is skipped: the log layer formats
        // every recorded field, a tenth of a GetProduct's CPU with the span.
        // UNKNOWN, DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE, DATA_LOSS: the
        // server's side of the story, worth a look, unless the server
        // refused the call itself (still starting, shedding). UNAVAILABLE
        // while the server stops is the stop's doing: the streams it ends
        // (change feeds) tell their callers to go elsewhere.
        let ended_by_stop = code == 14 && self.stopping.is_triggered();
        let failed = matches!(code, 2 | 4 | 13 | 14 | 15) && !refused && !ended_by_stop;
        let logged = audit || failed || tracing::enabled!(tracing::Level::DEBUG) || self.traced;
        if logged {
            let ms = elapsed.as_secs_f64() * 1000.0;
            self.span.record("grpc.code", name);
            self.span.record("elapsed_ms", ms);
            // Recorded only where declared: on the spans that are exported.
            self.span.record("rpc.grpc.status_code", code as i64);
            if matches!(code, 2 | 4 | 12 | 13 | 14 | 15) {
                self.span.record("otel.status_code", "ERROR");
            }
            if let Some(caller) = &caller {
                self.span.record("caller", caller.as_str());
            }
        }
        let _entered = self.span.enter();
        if audit {
            tracing::info!(
                target: "agora::audit",
                who = caller.as_deref().unwrap_or("anonymous"),
                rpc = self.metrics.method.as_str(),
                resource = resource.as_deref().unwrap_or("-"),
                outcome = name,
                "audit"
            );
        }
        if failed {
            tracing::warn!("call failed");
        } else if ended_by_stop {
            tracing::debug!("call ended by the shutdown");
        } else {
            // Successes, refusals and the caller's mistakes at debug: the
            // metrics count them, and a flood of bad or excess calls must
            // not become a flood of log lines.
            tracing::debug!("call finished");
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        // Dropped without a status: the client cancelled or the stream broke.
        self.record(1, false);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry the status.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        guard: Option<CallGuard>,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(guard) = this.guard.take()
                {
                    // No status in the trailers is a broken answer: UNKNOWN.
                    guard.finish(code_of(trailers).unwrap_or(2));
                }
            }
            Some(Err(_)) => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(13);
                }
            }
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.finish(2);
                }
            }
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
