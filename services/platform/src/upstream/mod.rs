//! Calls to an upstream service: one place that makes service-to-service
//! calls survive failure, and gives every answer one meaning.
//!
//! Every downstream service reaches its upstreams (catalog, customers) only
//! through an anti-corruption layer module, and that module asks its
//! questions through an [`Upstream`]: the client stack below, and the one
//! translation of what comes back ([`Upstream::ask`]). The module keeps only
//! its own translation into its context's terms.
//!
//! The client stack ([`stack`]), from the caller down to the network:
//!
//! 1. errors become gRPC statuses that name the upstream;
//! 2. a circuit breaker (`tower-resilience-circuitbreaker`) fails calls at
//!    once with UNAVAILABLE after repeated failures, then lets a trial call
//!    through and closes when the upstream answers again;
//! 3. the whole call, retries included, is bounded by the smaller of the
//!    caller's remaining deadline (a [`Deadline`] in the request's
//!    extensions, put there by [`Upstream::ask`]) and the upstream's own
//!    call timeout;
//! 4. the request body is buffered so that it can be sent again;
//! 5. tower's `Retry` retries UNAVAILABLE answers and connection failures
//!    (gRPC's retry design: only before the upstream answered), at most
//!    `max_attempts` times, with exponential backoff and jitter, and only
//!    while a `TpsBudget` allows, so an outage does not multiply traffic;
//! 6. each attempt carries a `grpc-timeout` for the time still left, so the
//!    upstream stops working when the original caller gave up;
//! 7. this service's token is attached, where one is configured;
//! 8. tower's power-of-two-choices balancer spreads calls over the
//!    upstream's replicas, each a lazily connecting, reconnecting tonic
//!    channel with a connect timeout; a replica whose connection fails is
//!    left out of the choice for a while (outlier ejection).
//!
//! The replicas are every address the configured URLs' hosts resolve to,
//! re-resolved periodically and after failed connections, so replicas
//! behind a DNS name (a Kubernetes headless Service) join and leave the
//! balancer as they come and go ([`discover`]).
//!
//! Upstreams are reached over TLS (`https://` addresses): the upstream's
//! certificate is verified against the upstream CA, and this service
//! presents its own certificate, which names it to the upstream
//! ([`Credentials`]). Plain `http://` addresses need `AGORA_INSECURE=1`.
//!
//! The anti-corruption layers only read from their upstreams, so retrying
//! any of their calls is safe.

pub mod discover;
pub mod hosts;
pub mod known;
mod stack;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use http::HeaderValue;
use tonic::{
    Code, Status,
    transport::{Channel, Endpoint},
};

pub use stack::{UpstreamChannel, channel};

use discover::{Replica, Replicas, Resolve, SystemResolver};

use crate::{
    Error,
    config::EnvReader,
    deadline::Deadline,
    security::{SecuritySettings, insecure_opt_in, reload::Reloading, tls::ClientTls},
};

/// How one upstream is reached and how hard to try.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Name in errors, logs and metrics ("catalog").
    pub name: &'static str,
    /// Addresses of its replicas (`https://host:port`), where a host may
    /// be a name that resolves to several; calls are balanced over every
    /// address.
    pub addrs: Vec<String>,
    /// Resolves the hosts of `addrs` (the system's resolver; tests bring
    /// their own).
    pub resolver: Arc<dyn Resolve>,
    /// How often the hosts are resolved again (also soon after a failed
    /// connection).
    pub resolve_every: Duration,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// The call's own timeout; a caller's shorter deadline wins.
    pub call_timeout: Duration,
    /// Attempts per call, the first included (gRPC's `maxAttempts`).
    pub max_attempts: u32,
    /// First backoff between attempts; doubles each time, with jitter.
    pub backoff_min: Duration,
    /// Longest backoff between attempts.
    pub backoff_max: Duration,
    /// Retries allowed, as a share of calls (0.2: one retry per five calls),
    /// beyond a floor of a few retries a second.
    pub retry_ratio: f32,
    /// Failures in a row that open the breaker.
    pub breaker_failures: usize,
    /// How long the breaker stays open before it lets a trial call through.
    pub breaker_open: Duration,
}

impl UpstreamSettings {
    /// Settings for the upstream `name` from `AGORA_<NAME>_ADDRS` (a comma
    /// separated list) and the shared `AGORA_UPSTREAM_*` variables.
    pub fn read<F: Fn(&str) -> Option<String>>(
        env: &mut EnvReader<F>,
        name: &'static str,
        default_addr: &str,
    ) -> Self {
        let var = format!("AGORA_{}_ADDRS", name.to_ascii_uppercase());
        let raw = env.string(&var, default_addr);
        let addrs: Vec<String> =
            raw.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        let insecure = insecure_opt_in(env);
        for addr in &addrs {
            if Endpoint::from_shared(addr.clone()).is_err()
                || !(addr.starts_with("https://") || addr.starts_with("http://"))
                || addr.parse::<http::Uri>().ok().and_then(|u| u.port_u16()).is_none()
            {
                env.problem(format!("{var}: {addr:?} is not an https://host:port address"));
            } else if addr.starts_with("http://") && !insecure {
                env.problem(format!(
                    "{var}: {addr:?} is plaintext; use https://, or set AGORA_INSECURE=1 (for development only)"
                ));
            }
        }
        if addrs.is_empty() {
            env.problem(format!("{var}: at least one address is needed"));
        }
        Self {
            name,
            addrs,
            resolver: Arc::new(SystemResolver),
            resolve_every: env.millis("AGORA_UPSTREAM_RESOLVE_MS", 5_000, 100..=600_000),
            connect_timeout: env.millis("AGORA_UPSTREAM_CONNECT_TIMEOUT_MS", 1_000, 1..=60_000),
            call_timeout: env.millis("AGORA_UPSTREAM_CALL_TIMEOUT_MS", 2_000, 1..=600_000),
            max_attempts: env.number("AGORA_UPSTREAM_MAX_ATTEMPTS", 3, 1..=5),
            backoff_min: env.millis("AGORA_UPSTREAM_BACKOFF_MIN_MS", 10, 1..=10_000),
            backoff_max: env.millis("AGORA_UPSTREAM_BACKOFF_MAX_MS", 200, 1..=60_000),
            retry_ratio: env.number("AGORA_UPSTREAM_RETRY_RATIO", 0.2, 0.0..=1.0),
            breaker_failures: env.number("AGORA_UPSTREAM_BREAKER_FAILURES", 5, 1..=1000),
            breaker_open: env.millis("AGORA_UPSTREAM_BREAKER_OPEN_MS", 2_000, 1..=600_000),
        }
    }

    /// Settings for tests: one address, short timers.
    pub fn for_tests(name: &'static str, addrs: Vec<String>) -> Self {
        Self {
            name,
            addrs,
            resolver: Arc::new(SystemResolver),
            resolve_every: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(500),
            call_timeout: Duration::from_secs(2),
            max_attempts: 3,
            backoff_min: Duration::from_millis(2),
            backoff_max: Duration::from_millis(20),
            retry_ratio: 0.2,
            breaker_failures: 5,
            breaker_open: Duration::from_millis(300),
        }
    }
}

/// How this service proves who it is to its upstreams: its certificate
/// over TLS, and a bearer token where one is configured. Both are re-read
/// when their files change.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    tls: Option<ClientTls>,
    token: Option<Reloading<HeaderValue>>,
}

impl Credentials {
    /// From the upstream CA, certificate and service token of `security`.
    pub fn start(security: &SecuritySettings) -> anyhow::Result<Self> {
        let token = match &security.service_token {
            Some(file) => Some(Reloading::start(
                "service token",
                vec![file.clone()],
                security.reload_interval,
                |files| {
                    let token = std::str::from_utf8(&files[0]).context("the token is not text")?.trim();
                    anyhow::ensure!(!token.is_empty(), "the token file is empty");
                    let mut value =
                        HeaderValue::from_str(&format!("Bearer {token}")).context("not a token")?;
                    value.set_sensitive(true);
                    Ok(value)
                },
            )?),
            None => None,
        };
        Ok(Self { tls: ClientTls::start(security)?, token })
    }

    /// A lazily connecting channel to one replica.
    fn replica(&self, replica: &Replica, settings: &UpstreamSettings) -> anyhow::Result<Channel> {
        let tune = |endpoint: Endpoint| {
            endpoint
                .connect_timeout(settings.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
        };
        let Replica { url, addr } = replica;
        if !url.starts_with("https://") {
            let origin: http::Uri = url.parse()?;
            return Ok(tune(Endpoint::from_shared(format!("http://{addr}"))?.origin(origin)).connect_lazy());
        }
        self.tls(url)?.channel_to(url, *addr, tune)
    }

    /// The TLS of an https:// upstream `url`: an error without an upstream CA.
    fn tls(&self, url: &str) -> anyhow::Result<&ClientTls> {
        self.tls.as_ref().with_context(|| {
            format!("{url}: an https:// upstream needs AGORA_UPSTREAM_CA_FILE or AGORA_TLS_CLIENT_CA_FILE")
        })
    }

    /// Adds the service token, when there is one, to an upstream call.
    fn authorize<B>(&self) -> impl Fn(http::Request<B>) -> http::Request<B> + Clone + use<B> {
        let token = self.token.clone();
        move |mut request| {
            if let Some(token) = &token {
                request.headers_mut().insert(http::header::AUTHORIZATION, token.get().as_ref().clone());
            }
            request
        }
    }
}

/// One upstream as an anti-corruption layer sees it: its generated client
/// on the resilient channel, the one meaning of its answers, and the plain
/// channel its change feed streams on. The open host services' questions
/// and feeds are asked here once for every context ([`hosts`]).
#[derive(Debug, Clone)]
pub struct Upstream<C> {
    name: &'static str,
    client: C,
    /// For the change feed: one long stream, without the calls' deadline
    /// and retries; its consumer reconnects with its own backoff.
    feed: UpstreamChannel,
}

impl<C: Clone> Upstream<C> {
    /// The upstream of `settings`, its client made by `client` (a generated
    /// client's `new`). Connections are made on first use and remade after
    /// failures, so the downstream starts while the upstream is still down
    /// and recovers without a restart.
    pub fn connect(
        settings: &UpstreamSettings,
        credentials: &Credentials,
        client: fn(UpstreamChannel) -> C,
    ) -> anyhow::Result<Self> {
        let replicas = Replicas::start_for(settings)?;
        Ok(Self {
            name: settings.name,
            client: client(stack::channel_over(settings, credentials, &replicas)?),
            feed: stack::feed_channel(settings, credentials, &replicas),
        })
    }

    /// The upstream's name ("catalog").
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Asks one question. `deadline` is the caller's, when this is asked
    /// for a call being served (None: the upstream's own call timeout
    /// bounds it). The answer means the same in every context:
    /// - an answer: `Some(message)`;
    /// - NOT_FOUND: `None`, the upstream has no such thing;
    /// - down, overloaded, too slow, or no time left: UNAVAILABLE naming the
    ///   upstream;
    /// - anything else: a bug between the two services, INTERNAL.
    pub async fn ask<T, R, F, Fut>(
        &self,
        deadline: Option<Deadline>,
        message: T,
        call: F,
    ) -> Result<Option<R>, Error>
    where
        F: FnOnce(C, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut request = tonic::Request::new(message);
        if let Some(deadline) = deadline {
            request.extensions_mut().insert(deadline);
        }
        match call(self.client.clone(), request).await {
            Ok(response) => Ok(Some(response.into_inner())),
            Err(status) if status.code() == Code::NotFound => Ok(None),
            Err(status) => Err(failure(self.name, status)),
        }
    }

    /// A field the upstream's contract promises in an answer. An answer
    /// without it breaks the contract: INTERNAL (a bug between the two
    /// services), never a guess at what the upstream meant.
    pub fn required<T>(&self, rpc: &str, field: &str, value: Option<T>) -> Result<T, Error> {
        value.ok_or_else(|| {
            Error::Internal(anyhow::anyhow!("{} answered {rpc} without its {field}", self.name))
        })
    }
}

/// What an upstream's failure means for the call being served. An upstream
/// that is down, overloaded or too slow makes the call UNAVAILABLE, naming
/// the upstream; anything else the upstream answers is a bug between the two services.
fn failure(upstream: &str, status: Status) -> Error {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded | Code::Cancelled => {
            // The client stack's own refusals already name the upstream.
            let message = status.message();
            Error::unavailable(if message.starts_with(upstream) {
                message.to_owned()
            } else {
                format!("{upstream} is unavailable: {message}")
            })
        }
        code => Error::Internal(anyhow::anyhow!("{upstream} answered {code:?}: {}", status.message())),
    }
}
