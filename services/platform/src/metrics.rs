//! Prometheus metrics, rendered by `metrics-exporter-prometheus` and served
//! on the admin HTTP port, beside a plaintext `grpc.health.v1` for probes.
//!
//! The admin port carries no application call and needs no credentials:
//! kubelet gRPC probes speak plaintext without a token, and Prometheus
//! scrapes it. Expose it to the cluster's probes and scrapers only.

use std::{sync::OnceLock, time::Duration};

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tonic_health::pb::health_server::HealthServer;

/// Latency buckets in seconds: fine below 10 ms, where a healthy call lands.
const LATENCY_BUCKETS: &[f64] =
    &[0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The process's own series (CPU, memory, open fds, start time: the names
/// Prometheus' client libraries use), read from /proc at every scrape.
fn process() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(|| {
        let collector = metrics_process::Collector::default();
        collector.describe();
        collector
    })
}

/// The process-wide recorder. Installed once: tests run many servers in one
/// process, and they share it. It starts with `agora_build_info` (the
/// version, and the commit `AGORA_BUILD_COMMIT` named at build time) and
/// the process series.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .install_recorder()
            .expect("the metrics recorder is installed once");
        // Histograms keep raw samples until upkeep folds them into buckets.
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawning the metrics upkeep thread");
        let commit = option_env!("AGORA_BUILD_COMMIT").unwrap_or("unknown");
        metrics::gauge!("agora_build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => commit)
            .set(1.0);
        process().collect();
        handle
    })
}

/// Serves `/metrics` and gRPC health (HTTP/2 without TLS, as kubelet
/// probes speak it) on an already bound listener until `shutdown` fires.
/// Reflection there describes health alone, so that
/// `grpcurl -plaintext <admin> grpc.health.v1.Health/Check` needs no proto file.
pub async fn serve_admin<H>(
    listener: TcpListener,
    health: HealthServer<H>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    H: tonic_health::pb::health_server::Health,
{
    let handle = handle();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
    };
    let v1 = reflection().build_v1().map_err(std::io::Error::other)?;
    let v1alpha = reflection().build_v1alpha().map_err(std::io::Error::other)?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                process().collect();
                std::future::ready(handle.render())
            }),
        )
        .route_service("/grpc.health.v1.Health/{*method}", health)
        .route_service("/grpc.reflection.v1.ServerReflection/{*method}", v1)
        .route_service("/grpc.reflection.v1alpha.ServerReflection/{*method}", v1alpha);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
