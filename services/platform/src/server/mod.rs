//! The application: a tonic server with health, reflection and the house
//! middleware stack, the admin HTTP server, the database life cycle, the
//! background tasks and graceful shutdown.
//!
//! Start-up is one sequence, and shutdown its mirror:
//!
//! 1. configuration (read by [`main_for`] before anything starts);
//! 2. the database pool, lazily connecting ([`Database::connect_lazy`]);
//! 3. security, by [`Application::build`]: the certificate and token keys
//!    loaded (and watched for changes), every served RPC found in a policy;
//! 4. the listeners, bound by [`Application::build`]: health answers
//!    NOT_SERVING from here on and application calls are refused with
//!    UNAVAILABLE, so a probe gets the truth while the rest starts;
//! 5. migrations, retried while the database is out of reach;
//! 6. background tasks (change-feed consumers, outbox pruning), which need
//!    the migrated tables;
//! 7. SERVING, kept true by a periodic database probe.
//!
//! At SIGTERM (or [`Shutdown::trigger`]), the mirror: NOT_SERVING, and the
//! background tasks and open streams told to end; the drain delay; the
//! server stops accepting and waits (bounded) for the calls in flight; the
//! background tasks are waited for (bounded); the admin server stops; the
//! database closes last.

mod connections;
mod grpc;
mod lifecycle;
mod router;

use std::{net::SocketAddr, time::Duration};

use agora_contracts::feed::ChangeFeedMessage;
use anyhow::Context as _;
use tokio::net::TcpListener;

pub use router::GeneratedServer;

use crate::{
    config::{ServiceSpec, Settings},
    db::{Database, Migrations},
    events::Events,
    outbox::{DomainEvent, Outbox},
    security::{Policy, policy::Authorizer, tls::ServerTls, token::Verifier},
    task::{Shutdown, Task},
};

/// What one server runs: its gRPC services, their names for health and
/// reflection, their policies, and its background tasks.
pub struct Services {
    routes: router::Router,
    names: Vec<String>,
    policies: Vec<Policy>,
    descriptor_sets: Vec<&'static [u8]>,
    tasks: Vec<Task>,
    shutdown: Shutdown,
}

impl Services {
    /// `descriptor_set` is the encoded descriptor set that describes the
    /// services added here, for reflection.
    pub fn new(descriptor_set: &'static [u8]) -> Self {
        Self {
            routes: router::Router::default(),
            names: Vec::new(),
            policies: Vec::new(),
            descriptor_sets: vec![descriptor_set],
            tasks: Vec::new(),
            shutdown: Shutdown::new(),
        }
    }

    /// The server's shutdown signal, for handlers with long-lived streams:
    /// they end when it fires.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Adds a generated tonic server and the policy of its RPCs.
    pub fn with<S: GeneratedServer>(mut self, service: S, policy: Policy) -> Self {
        self.names.push(S::NAME.to_owned());
        self.policies.push(policy);
        self.routes.add(service);
        self
    }

    /// Each service served and its methods, from the descriptor sets.
    fn served(&self) -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let methods = self.methods()?;
        Ok(methods
            .into_iter()
            .map(|(name, methods)| (name, methods.into_iter().map(|m| m.0).collect()))
            .collect())
    }

    /// The paths of every method served, health's and reflection's too, and
    /// the paths of those whose answer is a stream.
    fn paths(&self, always: &[String]) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let mut services = self.methods()?;
        let sets = [
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ];
        services.extend(methods_of(&sets, always)?);
        Ok(paths_of(services))
    }

    /// Each service served, with each method's name and whether its answer
    /// is a stream, from the descriptor sets.
    #[allow(clippy::type_complexity)]
    fn methods(&self) -> anyhow::Result<Vec<(String, Vec<(String, bool)>)>> {
        methods_of(&self.descriptor_sets, &self.names)
    }

    /// Adds a background task, started once migrations ran and told to stop
    /// when shutdown begins.
    pub fn task(mut self, task: Task) -> Self {
        self.tasks.push(task);
        self
    }

    /// Adds background tasks.
    pub fn tasks(mut self, tasks: impl IntoIterator<Item = Task>) -> Self {
        self.tasks.extend(tasks);
        self
    }
}

/// The services of `sets` named in `names`, each with its methods' names
/// and whether each method's answer is a stream.
#[allow(clippy::type_complexity)]
fn methods_of(sets: &[&[u8]], names: &[String]) -> anyhow::Result<Vec<(String, Vec<(String, bool)>)>> {
    use prost::Message as _;
    let mut services = Vec::new();
    for set in sets {
        let set = prost_types::FileDescriptorSet::decode(*set).context("decoding a descriptor set")?;
        for file in &set.file {
            for service in &file.service {
                let name = format!("{}.{}", file.package(), service.name());
                if names.contains(&name) {
                    let methods = service.method.iter().map(|m| (m.name().to_owned(), m.server_streaming()));
                    services.push((name, methods.collect()));
                }
            }
        }
    }
    Ok(services)
}

/// The paths (`/pkg.Service/Method`) of the methods of `services`, and
/// the paths of those whose answer is a stream.
fn paths_of(services: Vec<(String, Vec<(String, bool)>)>) -> (Vec<String>, Vec<String>) {
    let (mut all, mut streams) = (Vec::new(), Vec::new());
    for (service, methods) in services {
        for (method, streaming) in methods {
            let path = format!("/{service}/{method}");
            if streaming {
                streams.push(path.clone());
            }
            all.push(path);
        }
    }
    (all, streams)
}

/// A generated tonic server with `settings`' message size limit
/// (`AGORA_MAX_MESSAGE_BYTES`) both ways. A macro because tonic's generated
/// servers share these methods by name only, with no trait to call them
/// through.
#[macro_export]
macro_rules! limited {
    ($server:expr, $settings:expr) => {{
        let max = $settings.max_message_bytes;
        $server.max_decoding_message_size(max).max_encoding_message_size(max)
    }};
}

/// What an open host service (a context that publishes a change feed) is
/// built from: its database, its outbox, and its services with the outbox's
/// pruning already among their tasks, and its relay to JetStream when that
/// carries the feeds ([`OpenHost::publishing`]).
pub struct OpenHost {
    pub database: Database,
    pub outbox: Outbox,
    pub services: Services,
    /// The context's name: its stream's.
    context: &'static str,
    /// How the change feeds travel: this context's own, and its upstreams'
    /// when it follows some.
    pub events: Events,
    retention: Duration,
}

impl OpenHost {
    /// Connects (lazily) to the database of `settings`, and to NATS when
    /// it carries the feeds (at once: a start fails when NATS does not
    /// answer); `descriptor_set` describes the services for reflection.
    pub async fn new(
        settings: &Settings,
        context: &'static str,
        descriptor_set: &'static [u8],
    ) -> anyhow::Result<Self> {
        let database = Database::connect_lazy(settings)?;
        let events = Events::connect(&settings.events, context).await?;
        let mut outbox = Outbox::new(database.clone(), settings.outbox_poll_interval);
        if matches!(events, Events::JetStream(_)) {
            outbox = outbox.relayed();
        }
        let services = Services::new(descriptor_set).task(outbox.pruning(settings.outbox_retention));
        Ok(Self { database, outbox, services, context, events, retention: settings.outbox_retention })
    }

    /// Its outbox's events told as the contract's `M` (their kind from
    /// `kind`) on the Watch RPC and, when JetStream carries the feeds,
    /// relayed to the context's stream too.
    pub fn publishing<E: DomainEvent, M: ChangeFeedMessage>(mut self, kind: fn(E) -> M::Kind) -> Self {
        if let Events::JetStream(broker) = &self.events {
            let relay = crate::events::relay::relay::<E, M>(
                broker.clone(),
                self.outbox.clone(),
                self.context,
                self.retention,
                kind,
            );
            self.services = self.services.task(relay);
        }
        self
    }
}

/// A service process, bound and ready to run.
pub struct Application {
    spec: ServiceSpec,
    settings: Settings,
    database: Database,
    migrations: Migrations,
    /// The gRPC port, its TLS and who may call what on it.
    grpc: grpc::Listening,
    admin_listener: TcpListener,
    services: Services,
}

impl Application {
    /// Loads the certificate and the token keys, checks every served RPC
    /// has a policy, and binds both listeners (port 0 picks free ports)
    /// without serving yet.
    pub async fn build(
        spec: ServiceSpec,
        settings: Settings,
        database: Database,
        migrations: Migrations,
        services: Services,
    ) -> anyhow::Result<Self> {
        // The metrics recorder first: what start-up records must not be lost.
        crate::metrics::handle();
        crate::wire::set_max_message_bytes(settings.max_message_bytes);
        // An unreadable certificate or key file is the operator's to fix,
        // like a bad variable: exit status 2.
        let security = &settings.security;
        let config_error = |err: anyhow::Error| crate::config::ConfigError(vec![format!("{err:#}")]);
        let tls = ServerTls::start(security).map_err(config_error)?;
        let verifier = match &security.tokens {
            Some(tokens) => Some(Verifier::start(tokens, security.reload_interval).map_err(config_error)?),
            None => None,
        };
        let authorizer = Authorizer::new(
            spec.name,
            &services.served()?,
            &services.policies,
            verifier,
            security.trust_domain.clone(),
        )?;
        let grpc_listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding the gRPC address {}", settings.grpc_addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", settings.admin_addr))?;
        let grpc = grpc::Listening { listener: grpc_listener, tls, authorizer };
        Ok(Self { spec, settings, database, migrations, grpc, admin_listener, services })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.listener.local_addr().expect("bound listener")
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().expect("bound listener")
    }

    /// The server's TLS, when it has it (tests wait on its reloads).
    pub fn tls(&self) -> Option<ServerTls> {
        self.grpc.tls.clone()
    }

    /// A handle that starts shutdown, as SIGTERM does.
    pub fn shutdown(&self) -> Shutdown {
        self.services.shutdown()
    }

    /// Serves until SIGTERM, Ctrl-C or [`Shutdown::trigger`], then drains
    /// and stops within the configured bounds.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        lifecycle::run(self).await
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
    let traces = match crate::telemetry::TraceSettings::from_env() {
        Ok(traces) => traces,
        Err(err) => {
            eprintln!("agora-{}: {err}", spec.name);
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(err) = crate::telemetry::init(&settings, spec.name, &traces) {
        eprintln!("agora-{}: traces: {err:#}", spec.name);
        return std::process::ExitCode::from(2);
    }
    // The metrics recorder before the service is built: the series it
    // registers while it builds (feeds, upstreams) are not lost.
    crate::metrics::handle();
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
    let stopped = app.run_until_stopped().await;
    // The spans of the last calls, before the process ends.
    crate::telemetry::flush(Duration::from_secs(2)).await;
    match stopped {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}
