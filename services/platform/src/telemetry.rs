//! Logs and traces through `tracing`.
//!
//! Logs: human-readable by default, JSON when asked (`AGORA_LOG_FORMAT`),
//! filtered by `AGORA_LOG`.
//!
//! Traces: OpenTelemetry, exported over OTLP/gRPC when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! names a collector, with the standard variables for the rest
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`). Without an endpoint no
//! OpenTelemetry layer is installed: a span costs what it cost before.
//! W3C `traceparent` and `tracestate` carry the context between services.

use std::{
    io::IsTerminal as _,
    sync::{
        OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    propagation::TraceContextPropagator,
    trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor},
};
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer as _, Registry,
    filter::{FilterExt, Targets},
    fmt,
    layer::Filter,
    prelude::*,
};

use crate::config::{ConfigError, LogFormat, Settings};

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported: the server and client stacks skip the
/// propagation work when they are not.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Which calls are traced (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`):
/// decided once, when a call arrives, by the server stack
/// ([`sample_call`]), so that a call that is not traced builds no span
/// that would not be exported. The SDK's own sampler then keeps what was
/// decided (parent-based, always on).
///
/// Written here rather than left to the SDK's sampler: the SDK decides
/// when the span is started, once `tracing` has built it and the
/// OpenTelemetry layer has taken its fields, its parent and its
/// attributes, which cost an unsampled call about a quarter of a
/// GetProduct (traces of 1 % of calls served 0.73× the calls without).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// A call with a caller's `traceparent` follows the caller's decision.
    pub parent_based: bool,
    /// The share of the other calls traced: 1 always, 0 never.
    pub ratio: f64,
}

impl Sampling {
    /// From the standard variables; the SDK's default is
    /// `parentbased_always_on`.
    fn read(sampler: Option<&str>, arg: Option<&str>) -> Result<Self, String> {
        let ratio = || match arg {
            None => Ok(1.0),
            Some(v) => match v.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(format!("OTEL_TRACES_SAMPLER_ARG={v:?}: expected a ratio from 0 to 1")),
            },
        };
        let (parent_based, ratio) = match sampler.unwrap_or("parentbased_always_on") {
            "always_on" => (false, 1.0),
            "always_off" => (false, 0.0),
            "traceidratio" => (false, ratio()?),
            "parentbased_always_on" => (true, 1.0),
            "parentbased_always_off" => (true, 0.0),
            "parentbased_traceidratio" => (true, ratio()?),
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other:?}: expected always_on, always_off, traceidratio or their \
                     parentbased_ forms"
                ));
            }
        };
        Ok(Self { parent_based, ratio })
    }

    /// Whether a call is traced: the caller's sampled flag (`parent`), or
    /// a draw at the ratio.
    fn decide(&self, parent: Option<bool>) -> bool {
        match parent {
            Some(sampled) if self.parent_based => sampled,
            _ => self.ratio >= 1.0 || (self.ratio > 0.0 && fastrand::f64() < self.ratio),
        }
    }
}

static SAMPLING: OnceLock<Sampling> = OnceLock::new();

/// What the server stack decided for one call ([`sample_call`]).
pub enum CallTrace {
    /// Traced: the call's span is a child of this context (the caller's,
    /// marked sampled; empty for a trace that starts here).
    Traced(Context),
    /// Not traced: no span of the call is exported, and none is built.
    Untraced(Untraced),
}

/// A call that is not traced: the trace it belongs to, for its log lines
/// and for the calls it makes (which carry it, marked not sampled, so the
/// services they reach do not trace them either).
#[derive(Debug, Clone, Copy)]
pub struct Untraced {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Whether the caller named the trace: only then do the log lines.
    pub from_caller: bool,
}

tokio::task_local! {
    /// The call this task serves, when it is not traced.
    static UNTRACED: Untraced;
}

/// Decides whether the call whose request carries `headers` is traced.
/// Only meaningful while [`exporting`].
pub fn sample_call(headers: &http::HeaderMap) -> CallTrace {
    let sampling = SAMPLING.get().copied().unwrap_or(Sampling { parent_based: true, ratio: 1.0 });
    let parent = if headers.contains_key("traceparent") {
        let context = extract(headers);
        let parent = context.span().span_context().clone();
        parent.is_valid().then_some(parent)
    } else {
        None
    };
    if sampling.decide(parent.as_ref().map(|p| p.is_sampled())) {
        let context = match parent {
            Some(p) => Context::new().with_remote_span_context(SpanContext::new(
                p.trace_id(),
                p.span_id(),
                TraceFlags::SAMPLED,
                true,
                p.trace_state().clone(),
            )),
            None => Context::new(),
        };
        return CallTrace::Traced(context);
    }
    let span_id = SpanId::from(fastrand::u64(1..));
    CallTrace::Untraced(match parent {
        Some(p) => Untraced { trace_id: p.trace_id(), span_id, from_caller: true },
        None => Untraced { trace_id: TraceId::from(fastrand::u128(1..)), span_id, from_caller: false },
    })
}

/// Runs `call` as a call that is not traced (see [`untraced`]).
pub fn scope_untraced<F: Future>(call: Untraced, work: F) -> impl Future<Output = F::Output> {
    UNTRACED.scope(call, work)
}

/// The call this task serves, when it is not traced: nothing under it
/// builds a span.
pub fn untraced() -> Option<Untraced> {
    UNTRACED.try_with(|call| *call).ok()
}

/// A `traceparent` for a call made while serving `call`: its trace, marked
/// not sampled.
pub fn untraced_traceparent(call: &Untraced) -> http::HeaderValue {
    let value = format!("00-{}-{}-00", call.trace_id, call.span_id);
    http::HeaderValue::from_str(&value).expect("hex digits and dashes")
}

fn propagator() -> &'static TextMapCompositePropagator {
    static PROPAGATOR: OnceLock<TextMapCompositePropagator> = OnceLock::new();
    // W3C trace context: `traceparent` and `tracestate`.
    PROPAGATOR.get_or_init(|| TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new())]))
}

/// The caller's trace context, from a request's headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    propagator().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Writes `span`'s trace context into outgoing headers.
pub fn inject(span: &tracing::Span, headers: &mut http::HeaderMap) {
    propagator().inject_context(&span.context(), &mut opentelemetry_http::HeaderInjector(headers));
}

/// `span`'s trace context as a `traceparent` (and `tracestate`) pair, to
/// keep beside what it wrote (an outbox event); empty when not exporting.
pub fn trace_context(span: &tracing::Span) -> String {
    if !exporting() || untraced().is_some() {
        return String::new();
    }
    let mut carrier = std::collections::HashMap::new();
    propagator().inject_context(&span.context(), &mut carrier);
    match carrier.remove("traceparent") {
        Some(parent) => agora_contracts::feed::join_trace_context(
            parent,
            &carrier.remove("tracestate").unwrap_or_default(),
        ),
        None => String::new(),
    }
}

/// The span context `trace_context` wrote, to link a span to it.
pub fn span_context_of(text: &str) -> Option<opentelemetry::trace::SpanContext> {
    if text.is_empty() {
        return None;
    }
    let (parent, state) = agora_contracts::feed::split_trace_context(text);
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent".to_owned(), parent.to_owned()), ("tracestate".to_owned(), state.to_owned())].into();
    let context = propagator().extract(&carrier);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Records `trace_id` and `span_id` on `span` (declared empty), so that
/// every log line written inside it names the trace it belongs to.
pub fn record_ids(span: &tracing::Span) {
    let context = span.context();
    let span_ref = context.span();
    let ids = span_ref.span_context();
    if ids.is_valid() {
        span.record("trace_id", tracing::field::display(ids.trace_id()));
        span.record("span_id", tracing::field::display(ids.span_id()));
    }
}

/// Where traces go, from the standard variables.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceSettings {
    /// The collector's OTLP/gRPC endpoint; None: traces off.
    pub endpoint: Option<String>,
    /// The queue of ended spans waiting for export (`OTEL_BSP_MAX_QUEUE_SIZE`).
    pub max_queue: usize,
    /// Spans a batch holds at most (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`).
    pub max_batch: usize,
    /// The longest a span waits for its batch (`OTEL_BSP_SCHEDULE_DELAY`, ms).
    pub delay: Duration,
    /// The longest an export may take (`OTEL_BSP_EXPORT_TIMEOUT`, ms).
    pub export_timeout: Duration,
    /// Which calls are traced (`OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`).
    pub sampling: Sampling,
}

impl TraceSettings {
    /// From the process environment; a bad value is a configuration error.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(|name| std::env::var(name).ok())
    }

    pub fn read(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let get = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let (variable, endpoint) = match get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(e) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", Some(e)),
            None => ("OTEL_EXPORTER_OTLP_ENDPOINT", get("OTEL_EXPORTER_OTLP_ENDPOINT")),
        };
        if let Some(e) = &endpoint
            && !e.starts_with("http://")
        {
            // One crypto provider (aws-lc-rs) serves every TLS here, and the
            // exporter's TLS would bring a second: traces go in plaintext to
            // a collector beside the service (a node agent or a sidecar),
            // which forwards them over TLS.
            problems.push(format!(
                "{variable}={e}: expected http://host:port, a collector beside the service (an OTLP/gRPC \
                 agent forwards over TLS)"
            ));
        }
        let sampling =
            Sampling::read(get("OTEL_TRACES_SAMPLER").as_deref(), get("OTEL_TRACES_SAMPLER_ARG").as_deref())
                .unwrap_or_else(|problem| {
                    problems.push(problem);
                    Sampling { parent_based: true, ratio: 1.0 }
                });
        let mut number = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| match get(name) {
            None => default,
            Some(v) => match v.parse::<u64>() {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{name}={v:?}: expected a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ));
                    default
                }
            },
        };
        let settings = Self {
            endpoint: if disabled { None } else { endpoint },
            sampling,
            max_queue: number("OTEL_BSP_MAX_QUEUE_SIZE", 2048, 1..=1_000_000) as usize,
            max_batch: number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, 1..=100_000) as usize,
            delay: Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 1000, 1..=600_000)),
            export_timeout: Duration::from_millis(number("OTEL_BSP_EXPORT_TIMEOUT", 10_000, 1..=600_000)),
        };
        if problems.is_empty() { Ok(settings) } else { Err(ConfigError(problems)) }
    }
}

/// The text log's fields as tracing-subscriber's `DefaultFields` writes
/// them (`name=value`, space-separated), written whole. `DefaultFields`
/// writes a span's fields piece by piece into the string kept for the span,
/// which grew four or five times for a call's span: an allocation each, 3 %
/// of a GetProduct, on every call whether or not a line is logged. Here the
/// fields are formatted on the stack first and that string is made once at
/// its size; fields longer than the buffer are written as before. Field
/// names are not styled on a terminal (the level still is).
#[derive(Default)]
struct WholeFields(fmt::format::DefaultFields);

impl<'w> fmt::FormatFields<'w> for WholeFields {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: fmt::format::Writer<'w>,
        fields: R,
    ) -> std::fmt::Result {
        let mut buffer = StackText::default();
        if self.0.format_fields(fmt::format::Writer::new(&mut buffer), &fields).is_ok()
            && let Ok(text) = std::str::from_utf8(&buffer.bytes[..buffer.len])
        {
            return std::fmt::Write::write_str(&mut writer, text);
        }
        self.0.format_fields(writer, fields)
    }
}

/// Text on the stack, refused (an error) past its capacity. Written here:
/// no crate already in the tree offers a fixed-capacity `fmt::Write`.
struct StackText {
    bytes: [u8; 256],
    len: usize,
}

impl Default for StackText {
    fn default() -> Self {
        Self { bytes: [0; 256], len: 0 }
    }
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let end = self.len + text.len();
        let into = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        into.copy_from_slice(text.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Installs the global subscriber: logs, and traces when `traces` names a
/// collector. Safe to call more than once (tests start many servers in one
/// process): later calls keep the first subscriber.
pub fn init(settings: &Settings, service: &str, traces: &TraceSettings) -> anyhow::Result<()> {
    let sampling = traces.sampling;
    let filter = || log_filter(&settings.log_filter);
    let logs = match settings.log_format {
        // Colours for a terminal only: a log file or a collector gets plain text.
        LogFormat::Text => fmt::layer()
            .fmt_fields(WholeFields::default())
            .with_target(false)
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter())
            .boxed(),
    };
    let traces = match &traces.endpoint {
        None => None,
        Some(endpoint) => {
            let provider = tracer_provider(service, endpoint, traces)?;
            let tracer = provider.tracer("agora");
            // The spans of Agora's own code, the database's included (at debug).
            let spans = Targets::new().with_target("agora", tracing::Level::DEBUG);
            Some(tracing_opentelemetry::layer().with_tracer(tracer).with_filter(spans))
        }
    };
    let exporting = traces.is_some();
    if tracing_subscriber::registry().with(logs).with(traces).try_init().is_ok() {
        EXPORTING.store(exporting, Ordering::Relaxed);
        let _ = SAMPLING.set(sampling);
    }
    Ok(())
}

/// The log filter of `directives` (`AGORA_LOG`), checked with the rest of
/// the configuration; "info" if they were not.
fn log_filter(directives: &str) -> Box<dyn Filter<Registry> + Send + Sync> {
    match targets_only(directives) {
        Some(targets) => FilterExt::boxed(targets),
        None => FilterExt::boxed(EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

/// Directives of targets and levels alone (`info,agora_platform=debug`, the
/// usual case) as a `Targets` filter, which decides once per callsite.
/// EnvFilter is kept for directives on spans or fields (`[grpc{...}]`): as
/// a per-layer filter it takes a lock at every enter and exit of every
/// span, and a call's span is entered at every poll of the call (4 % of
/// GetProduct's CPU in a profile).
fn targets_only(directives: &str) -> Option<Targets> {
    if directives.contains(['[', '{']) {
        return None;
    }
    directives.parse().ok()
}

fn tracer_provider(
    service: &str,
    endpoint: &str,
    settings: &TraceSettings,
) -> anyhow::Result<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(settings.export_timeout)
        .build()?;
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the
    // resource's detectors; the service's own name when neither names it.
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none()
        && !std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default().contains("service.name=")
    {
        resource = resource.with_service_name(format!("agora-{service}"));
    }
    let resource = resource.build();
    // The exporter sends the resource with every batch.
    exporter.set_resource(&resource);
    // The server stack decides which calls are traced (`Sampling`, from
    // OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG) and builds no span
    // for the others; the SDK keeps each decision.
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        .with_span_processor(Queue::start(exporter, settings))
        .with_resource(resource)
        .build())
}

/// Ended spans on their way to the collector: a bounded queue and one
/// exporting task. Written here rather than taken from the SDK's batch
/// processor, which runs its exports on a thread of its own (the tonic
/// exporter needs the Tokio runtime) and drops spans without a count we
/// can export: here a full queue, or a collector that is down or slow,
/// drops spans, counted in `agora_trace_spans_dropped_total`, and never
/// holds up the call that ended them.
#[derive(Debug)]
struct Queue {
    sender: mpsc::Sender<SpanData>,
}

/// Asks the exporting task to send what it holds now; answered when done.
static FLUSH: OnceLock<mpsc::Sender<tokio::sync::oneshot::Sender<()>>> = OnceLock::new();

/// Sends the spans still queued, within `bound`: the last thing a service
/// does before it exits.
pub async fn flush(bound: Duration) {
    let Some(flush) = FLUSH.get() else { return };
    let (done, wait) = tokio::sync::oneshot::channel();
    if flush.send(done).await.is_ok() {
        let _ = tokio::time::timeout(bound, wait).await;
    }
}

impl Queue {
    fn start<E: SpanExporter + 'static>(exporter: E, settings: &TraceSettings) -> Self {
        let (sender, mut receiver) = mpsc::channel(settings.max_queue);
        let (flush, mut flushes) = mpsc::channel(1);
        let _ = FLUSH.set(flush);
        let (max_batch, delay, timeout) = (settings.max_batch, settings.delay, settings.export_timeout);
        metrics::counter!("agora_trace_spans_dropped_total").increment(0);
        metrics::counter!("agora_trace_spans_exported_total").increment(0);
        let export = async move |batch: Vec<SpanData>| {
            let spans = batch.len() as u64;
            match tokio::time::timeout(timeout, exporter.export(batch)).await {
                Ok(Ok(())) => metrics::counter!("agora_trace_spans_exported_total").increment(spans),
                failed => {
                    metrics::counter!("agora_trace_spans_dropped_total").increment(spans);
                    let why = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the collector did not answer in time".to_owned(),
                    };
                    tracing::debug!(target: "otel", spans, why, "spans dropped");
                }
            }
        };
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            loop {
                tokio::select! {
                    first = receiver.recv() => {
                        let Some(first) = first else { return };
                        batch.push(first);
                        let wait = tokio::time::sleep(delay);
                        tokio::pin!(wait);
                        while batch.len() < max_batch {
                            tokio::select! {
                                next = receiver.recv() => match next {
                                    Some(span) => batch.push(span),
                                    None => break,
                                },
                                _ = &mut wait => break,
                            }
                        }
                        export(std::mem::take(&mut batch)).await;
                    }
                    Some(done) = flushes.recv() => {
                        while let Ok(span) = receiver.try_recv() {
                            batch.push(span);
                            if batch.len() == max_batch {
                                export(std::mem::take(&mut batch)).await;
                            }
                        }
                        if !batch.is_empty() {
                            export(std::mem::take(&mut batch)).await;
                        }
                        let _ = done.send(());
                    }
                }
            }
        });
        Self { sender }
    }
}

impl SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.sender.try_send(span).is_err() {
            metrics::counter!("agora_trace_spans_dropped_total").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        // `flush` sends what is queued; the task ends with the runtime.
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_levels_make_a_targets_filter_and_span_directives_an_env_filter() {
        use tracing::Level;
        let targets = targets_only("info,agora_platform=debug,sqlx=warn").expect("targets and levels");
        assert!(targets.would_enable("agora_platform::server", &Level::DEBUG));
        assert!(!targets.would_enable("sqlx::query", &Level::INFO));
        assert!(targets.would_enable("hyper", &Level::INFO) && !targets.would_enable("hyper", &Level::DEBUG));
        assert!(targets_only("warn").is_some());
        assert!(targets_only("info,[grpc{rpc.method=GetProduct}]=debug").is_none());
        assert!(targets_only("agora[grpc]=trace").is_none());
    }

    #[test]
    fn the_standard_samplers_are_read_and_bad_ones_named() {
        let read = |sampler, arg| Sampling::read(sampler, arg);
        assert_eq!(read(None, None), Ok(Sampling { parent_based: true, ratio: 1.0 }));
        assert_eq!(
            read(Some("parentbased_traceidratio"), Some("0.01")),
            Ok(Sampling { parent_based: true, ratio: 0.01 })
        );
        assert_eq!(read(Some("always_off"), None), Ok(Sampling { parent_based: false, ratio: 0.0 }));
        assert!(read(Some("traceidratio"), Some("2")).unwrap_err().contains("OTEL_TRACES_SAMPLER_ARG"));
        assert!(read(Some("sometimes"), None).unwrap_err().contains("OTEL_TRACES_SAMPLER"));
    }

    #[test]
    fn a_parent_based_sampler_follows_the_caller_and_draws_for_the_rest() {
        let one_percent = Sampling { parent_based: true, ratio: 0.01 };
        assert!(one_percent.decide(Some(true)));
        assert!(!Sampling { parent_based: true, ratio: 1.0 }.decide(Some(false)));
        let traced = (0..100_000).filter(|_| one_percent.decide(None)).count();
        assert!((500..1500).contains(&traced), "{traced} of 100,000 at 1 %");
        assert!(
            Sampling { parent_based: false, ratio: 1.0 }.decide(Some(false)),
            "always_on ignores the caller"
        );
    }

    #[test]
    fn a_call_not_traced_keeps_the_callers_trace_and_passes_it_on_unsampled() {
        let _ = SAMPLING.set(Sampling { parent_based: true, ratio: 1.0 });
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap(),
        );
        let CallTrace::Untraced(call) = sample_call(&headers) else { panic!("the caller did not sample it") };
        assert!(call.from_caller);
        assert_eq!(call.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let passed = untraced_traceparent(&call);
        assert!(passed.to_str().unwrap().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(passed.to_str().unwrap().ends_with("-00"));
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse().unwrap(),
        );
        assert!(matches!(sample_call(&headers), CallTrace::Traced(_)));
    }
}
