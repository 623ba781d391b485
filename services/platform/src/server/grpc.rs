//! The gRPC server of one service: its own services behind the house
//! middleware stack, with health and reflection beside them.

use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::body::Body;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    cors::{AllowOrigin, CorsLayer},
};

use super::Services;
use crate::{
    config::Settings,
    health::Health,
    middleware::{
        AdmissionLayer, DeadlineLayer, ObserveLayer, PanicToInternal, ReadWholeLayer, Waiting,
        http1_request_bytes, with_extra_trailers,
    },
    security::{
        policy::{AuthorizeLayer, Authorizer},
        tls::ServerTls,
    },
};

/// The CORS policy for `origins`, if any: what a browser needs to make
/// gRPC-Web calls from their pages, with a token in `authorization` (no
/// cookies: credentials are not allowed).
fn cors(origins: &[http::HeaderValue]) -> Option<CorsLayer> {
    use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
    if origins.is_empty() {
        return None;
    }
    let allowed = [
        CONTENT_TYPE,
        AUTHORIZATION,
        HeaderName::from_static("x-grpc-web"),
        HeaderName::from_static("x-user-agent"),
        HeaderName::from_static("grpc-timeout"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("traceparent"),
        HeaderName::from_static("tracestate"),
    ];
    let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"]
        .map(HeaderName::from_static);
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins.iter().cloned()))
            .allow_methods([http::Method::POST])
            .allow_headers(allowed)
            .expose_headers(exposed)
            .max_age(Duration::from_secs(2 * 3600)),
    )
}

/// Health and reflection, on every server.
const ALWAYS: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// Where and how one server listens.
pub(super) struct Listening {
    pub listener: TcpListener,
    /// TLS on the port, when configured.
    pub tls: Option<ServerTls>,
    pub authorizer: Authorizer,
}

/// Serves `services` behind the stack, with health (as `health` reports
/// it) and reflection, until `stop` resolves and the calls in flight are
/// answered.
pub(super) async fn serve(
    services: Services,
    settings: &Settings,
    health: &Health,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    listening: Listening,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Listening { listener, tls, authorizer } = listening;
    // Reflection advertises exactly what this server offers, though the
    // descriptor sets describe every context.
    let mut advertised = services.names.clone();
    advertised.extend(ALWAYS.map(String::from));
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can print them.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET);
        for set in &services.descriptor_sets {
            builder = builder.register_encoded_file_descriptor_set(set);
        }
        for name in &advertised {
            builder = builder.with_service_name(name.clone());
        }
        builder
    };
    let reflection_v1 = reflection().build_v1().context("building reflection v1")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("building reflection v1alpha")?;

    let (paths, stream_paths) = services.paths(&ALWAYS.map(String::from))?;
    let shutdown = services.shutdown();
    let mut routes = services.routes;
    routes.add(health_service);
    routes.add(reflection_v1);
    routes.add(reflection_v1alpha);
    let service = ServiceBuilder::new()
        // One body type for every answer, as hyper serves it.
        .map_response(|response: http::Response<_>| response.map(Body::new))
        // Pages of the origins configured may call from a browser: CORS
        // preflights answered, the headers gRPC-Web needs allowed and
        // exposed. Without origins, no CORS answer: browsers refuse.
        .option_layer(cors(&settings.cors_origins))
        // gRPC-Web calls become gRPC calls here, their answers gRPC-Web
        // again (trailers in the body), so everything below sees one
        // protocol: the same admission, authorization, metrics and traces.
        .layer(tonic_web::GrpcWebLayer::new())
        // A span and the Prometheus metrics for every call, by gRPC code;
        // the caller's x-request-id (or a new one) in the span and sent back.
        .layer(ObserveLayer::new(paths, shutdown))
        // A call over HTTP/1.1 (gRPC-Web) is read whole before anything
        // answers it, so that a refusal keeps its connection usable.
        .layer(ReadWholeLayer {
            max_bytes: http1_request_bytes(settings.max_message_bytes),
            within: settings.request_timeout,
        })
        // Shed load when saturated, after a short bounded wait for a place;
        // wait for start-up; long-lived streams under limits of their own;
        // headers bounded. Early in the stack, so a refusal costs little of
        // a busy core.
        .layer(AdmissionLayer::new(
            settings.concurrency_limit,
            Waiting { longest: settings.admission_wait, most: settings.admission_queue },
            &settings.connections,
            stream_paths.into_iter().collect(),
            health.clone(),
        ))
        // Who calls, and may they: UNAUTHENTICATED, PERMISSION_DENIED.
        .layer(AuthorizeLayer::new(authorizer))
        // Trailers a handler asked for (ExtraTrailers) join grpc-status.
        .map_response(with_extra_trailers)
        // A panicking handler answers INTERNAL instead of resetting the stream.
        .layer(CatchPanicLayer::custom(PanicToInternal))
        // Honour grpc-timeout (capped by the server's own limit): DEADLINE_EXCEEDED.
        .layer(DeadlineLayer { server_limit: settings.request_timeout })
        .service(routes);
    super::connections::serve(listener, tls, service, &settings.connections, stop).await;
    Ok(())
}
