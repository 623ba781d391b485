//! The application: a tonic server with health, reflection and the house
//! middleware stack, the admin HTTP server, the database life cycle and
//! graceful shutdown.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anyhow::Context as _;
use http::Request;
use tokio::{net::TcpListener, sync::watch};
use tonic::{
    body::Body,
    server::NamedService,
    service::{Routes, RoutesBuilder},
    transport::{Server, server::TcpIncoming},
};
use tower::{Service, ServiceBuilder};
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
};

use crate::{
    config::{ServiceSpec, Settings},
    db::{Database, Migrations},
    health::Health,
    metrics,
    middleware::{
        AdmissionLayer, DeadlineLayer, FastRequestId, ObserveLayer, PanicToInternal, TrailersLayer,
    },
};

/// Starts shutdown from outside (a test, or the signal handler): health goes
/// NOT_SERVING, the drain delay passes, then the server stops.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    fn new() -> Self {
        Self { tx: watch::channel(false).0 }
    }

    /// Begins shutdown, as SIGTERM would.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once shutdown began. Long-running streams select on it so
    /// they end cleanly instead of holding the server open.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }
}

/// The gRPC services of one server, and their names for health and
/// reflection.
pub struct Services {
    routes: RoutesBuilder,
    names: Vec<String>,
    descriptor_sets: Vec<&'static [u8]>,
    shutdown: Shutdown,
}

impl Services {
    /// `descriptor_set` is the encoded descriptor set that describes the
    /// services added here, for reflection.
    pub fn new(descriptor_set: &'static [u8]) -> Self {
        Self {
            routes: RoutesBuilder::default(),
            names: Vec::new(),
            descriptor_sets: vec![descriptor_set],
            shutdown: Shutdown::new(),
        }
    }

    /// The server's shutdown signal, for handlers with long-lived streams
    /// and for background tasks: they end when it fires.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Adds a generated tonic server.
    pub fn with<S>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME.to_owned());
        self.routes.add_service(service);
        self
    }
}

/// A service process, bound and ready to run.
pub struct Application {
    spec: ServiceSpec,
    settings: Settings,
    database: Database,
    migrations: Migrations,
    grpc_listener: TcpListener,
    admin_listener: TcpListener,
    services: Services,
    shutdown: Shutdown,
}

impl Application {
    /// Binds both listeners (port 0 picks free ports) without serving yet.
    pub async fn build(
        spec: ServiceSpec,
        settings: Settings,
        database: Database,
        migrations: Migrations,
        services: Services,
    ) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", settings.grpc_addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", settings.admin_addr))?;
        let shutdown = services.shutdown();
        Ok(Self { spec, settings, database, migrations, grpc_listener, admin_listener, services, shutdown })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// A handle that starts shutdown, as SIGTERM does.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Serves until SIGTERM, Ctrl-C or [`Shutdown::trigger`], then drains
    /// and stops within the configured bounds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self { spec, settings, database, migrations, grpc_listener, admin_listener, services, shutdown } =
            self;
        let grpc_addr = grpc_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health =
            Health::new(reporter, &services.names.iter().map(String::as_str).collect::<Vec<_>>()).await;

        // Reflection advertises exactly what this server offers, though the
        // descriptor sets describe every context.
        let mut advertised = services.names.clone();
        advertised.extend(
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
            ]
            .map(String::from),
        );
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

        let stack = ServiceBuilder::new()
            // Take the caller's x-request-id or make one, so every log line
            // of a call can be found from the id the client sees.
            .layer(SetRequestIdLayer::x_request_id(FastRequestId))
            // Send the request id back in the response headers.
            .layer(PropagateRequestIdLayer::x_request_id())
            // A span and the Prometheus metrics for every call, by gRPC code.
            .layer(ObserveLayer::new(advertised))
            // Shed load instead of queueing when saturated; wait for start-up.
            // Early in the stack, so a refusal costs little of a busy core.
            .layer(AdmissionLayer::new(settings.concurrency_limit, health.clone()))
            // Trailers a handler asked for (ExtraTrailers) join grpc-status.
            .layer(TrailersLayer)
            // A panicking handler answers INTERNAL instead of resetting the stream.
            .layer(CatchPanicLayer::custom(PanicToInternal))
            // Honour grpc-timeout (capped by the server's own limit): DEADLINE_EXCEEDED.
            .layer(DeadlineLayer { server_limit: settings.request_timeout })
            .into_inner();

        let routes: Routes = services.routes.routes();
        let server = Server::builder()
            .layer(stack)
            // Bound header lists as the message size limit bounds bodies.
            .http2_max_header_list_size(64 * 1024)
            // Detect dead peers that hold streams open.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_routes(routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        tracing::info!(service = spec.name, %grpc_addr, %admin_addr, database = ?settings.database_url, "starting");

        // Signals start the same shutdown a test triggers by hand.
        let signal_shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            signal_shutdown.trigger();
        });

        // Admin HTTP: /metrics until the very end.
        let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let admin = tokio::spawn(metrics::serve_admin(admin_listener, async move {
            let _ = admin_stop_rx.await;
        }));

        // Migrations, then the database probe that drives health.
        let lifecycle = tokio::spawn(database_lifecycle(
            database.clone(),
            migrations,
            health.clone(),
            settings.db_probe_interval,
            shutdown.clone(),
        ));

        // After the signal: NOT_SERVING, then the drain delay so load
        // balancers notice, then the server stops accepting.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let drain = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            let delay = settings.drain_delay;
            async move {
                shutdown.wait().await;
                health.drain().await;
                tracing::info!(drain_delay_ms = delay.as_millis() as u64, "shutdown: draining");
                tokio::time::sleep(delay).await;
                let _ = drained_tx.send(());
            }
        };

        // TCP_NODELAY on every accepted connection: without it the end of an
        // answer waits for the client's delayed ACK (tonic applies its own
        // `tcp_nodelay` only to listeners it binds itself).
        let incoming = TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let serve = server.serve_with_incoming_shutdown(incoming, drain);
        tokio::pin!(serve);
        let bound = settings.shutdown_timeout;
        let result = tokio::select! {
            result = &mut serve => result.context("gRPC server"),
            _ = async move {
                // Never fires before the drain ended.
                if drained_rx.await.is_err() { std::future::pending::<()>().await }
                tokio::time::sleep(bound).await;
            } => {
                tracing::warn!(timeout_ms = bound.as_millis() as u64, "shutdown: calls still open at the bound; closing them");
                Ok(())
            }
        };

        lifecycle.abort();
        let _ = admin_stop_tx.send(());
        let _ = admin.await;
        database.close().await;
        tracing::info!(service = spec.name, "stopped");
        result
    }
}

/// Runs migrations (retrying while the database is out of reach), then
/// probes the database and reports the answers to health.
async fn database_lifecycle(
    database: Database,
    migrations: Migrations,
    health: Health,
    probe_interval: Duration,
    shutdown: Shutdown,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_triggered() {
            return;
        }
        match database.migrate(&migrations).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "database not ready"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    health.mark_started();
    let mut interval = tokio::time::interval(probe_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        // A probe that hangs counts as a failure: a database that does not
        // answer within the interval is not serving.
        let probe_timeout = probe_interval.max(Duration::from_millis(500));
        let ok = match tokio::time::timeout(probe_timeout, database.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "database probe failed");
                false
            }
            Err(_) => {
                tracing::warn!("database probe timed out");
                false
            }
        };
        health.database_answered(ok).await;
        let (size, idle) = database.pool_stats();
        ::metrics::gauge!("agora_db_pool_connections").set(size as f64);
        ::metrics::gauge!("agora_db_pool_idle_connections").set(idle as f64);
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}

/// The body of `main` for every service: configuration, telemetry, build,
/// run; a configuration error exits with status 2 and a clear message.
pub async fn main_for<F, Fut>(spec: ServiceSpec, build: F) -> std::process::ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: Future<Output = anyhow::Result<Application>>,
{
    let settings = match Settings::from_env(&spec) {
        Ok(s) => s,
        Err(err) => {
            eprintln!("agora-{}: {err}", spec.name);
            return std::process::ExitCode::from(2);
        }
    };
    crate::telemetry::init(&settings);
    let app = match build(settings).await {
        Ok(app) => app,
        Err(err) if err.downcast_ref::<crate::config::ConfigError>().is_some() => {
            eprintln!("agora-{}: {err}", spec.name);
            return std::process::ExitCode::from(2);
        }
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "start-up failed");
            return std::process::ExitCode::FAILURE;
        }
    };
    // One line on stdout with the bound addresses, for scripts and tests
    // that start the binary on port 0.
    println!("agora-{} listening grpc={} admin={}", spec.name, app.grpc_addr(), app.admin_addr());
    match app.run_until_stopped().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}
