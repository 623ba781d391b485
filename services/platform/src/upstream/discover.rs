//! Where an upstream's replicas are: every address its configured names
//! resolve to, kept current.
//!
//! An upstream is configured as one or more `https://host:port` addresses;
//! a host is an IP address or a DNS name (a Kubernetes headless Service
//! name resolves to the address of every ready pod). One task per upstream
//! resolves them all, again every `resolve_every` and soon after a
//! connection to a replica fails, and publishes the set of replicas. Each
//! balancer follows that set ([`discover`]): a replica that appears joins
//! it, one that vanished leaves it, and calls already on their way finish.
//!
//! A name that does not resolve keeps the addresses it last had (a DNS
//! hiccup must not empty the balancer), is logged at WARN, counted in
//! `agora_upstream_resolve_failures_total{upstream}`, and an upstream with
//! no address at all shows as `agora_upstream_replicas{upstream} 0`; its
//! calls then fail fast with UNAVAILABLE naming the upstream.
//!
//! Written here because tonic's balanced channel takes a fixed list of
//! endpoints and resolves each name once, to one address; tower's balancer
//! takes any stream of changes, which is what this module makes.

use std::{
    collections::{BTreeSet, VecDeque},
    convert::Infallible,
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::Stream;
use http::Uri;
use tokio::sync::{Notify, watch};
use tower::discover::Change;

/// Resolves a host name to the addresses behind it.
pub trait Resolve: fmt::Debug + Send + Sync + 'static {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;
}

/// The system's resolver (`getaddrinfo`: /etc/hosts, then DNS), as every
/// other program on the host resolves names. An IP address resolves to
/// itself without a lookup.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(
        &self,
        host: &str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host((host.as_str(), port)).await?.collect()) })
    }
}

/// One replica: an address a configured URL resolved to. The URL stays
/// with it: it names the server (TLS checks its certificate against the
/// URL's host) and is the origin of every call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Replica {
    pub url: Arc<str>,
    pub addr: SocketAddr,
}

/// The replicas of one upstream as they are known now, and a way to ask
/// for a fresh look.
#[derive(Debug, Clone)]
pub struct Replicas {
    set: watch::Receiver<Arc<BTreeSet<Replica>>>,
    /// Whether a first resolution has finished (before it, an empty set
    /// means "not known yet", not "none").
    resolved: watch::Receiver<bool>,
    refresh: Arc<Notify>,
}

impl Replicas {
    /// Starts resolving the addresses of `settings`.
    pub fn start_for(settings: &super::UpstreamSettings) -> anyhow::Result<Self> {
        Self::start(settings.name, &settings.addrs, settings.resolver.clone(), settings.resolve_every)
    }

    /// Starts resolving the `urls` of the upstream `name` with `resolver`,
    /// every `every`, until every [`Replicas`] handle is dropped.
    pub fn start(
        name: &'static str,
        urls: &[String],
        resolver: Arc<dyn Resolve>,
        every: Duration,
    ) -> anyhow::Result<Self> {
        let mut targets = Vec::with_capacity(urls.len());
        for url in urls {
            let uri: Uri = url.parse().map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
            let host = uri.host().ok_or_else(|| anyhow::anyhow!("{url:?} names no host"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or_else(|| anyhow::anyhow!("{url:?} names no port"))?;
            targets.push(Target { url: url.as_str().into(), host, port, last: Vec::new(), failing: None });
        }
        let (set_tx, set) = watch::channel(Arc::new(BTreeSet::new()));
        let (resolved_tx, resolved) = watch::channel(false);
        let refresh = Arc::new(Notify::new());
        let task = Resolver { name, targets, resolver, every, set: set_tx, resolved: resolved_tx };
        tokio::spawn(task.run(refresh.clone()));
        Ok(Self { set, resolved, refresh })
    }

    /// Asks for a fresh resolution soon (a connection failed).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }

    /// Whether the upstream has no replica at all (a call would wait for
    /// nothing), once its names were resolved a first time.
    pub async fn none(&self) -> bool {
        if !*self.resolved.borrow() {
            let mut resolved = self.resolved.clone();
            // The resolver never stops while a handle lives.
            let _ = resolved.wait_for(|done| *done).await;
        }
        self.set.borrow().is_empty()
    }

    /// The replicas now.
    pub fn current(&self) -> Arc<BTreeSet<Replica>> {
        self.set.borrow().clone()
    }
}

/// One configured URL and what its name resolved to last.
struct Target {
    url: Arc<str>,
    host: String,
    port: u16,
    last: Vec<SocketAddr>,
    /// Since when its resolution fails, and when that was last logged.
    failing: Option<(Instant, Instant)>,
}

struct Resolver {
    name: &'static str,
    targets: Vec<Target>,
    resolver: Arc<dyn Resolve>,
    every: Duration,
    set: watch::Sender<Arc<BTreeSet<Replica>>>,
    resolved: watch::Sender<bool>,
}

/// The shortest time between two resolutions asked for by failures: a
/// burst of failed connections costs one lookup.
const REFRESH_GAP: Duration = Duration::from_millis(200);
/// How often a name that keeps failing to resolve is logged again.
const LOG_AGAIN: Duration = Duration::from_secs(60);

impl Resolver {
    async fn run(mut self, refresh: Arc<Notify>) {
        loop {
            self.resolve_all().await;
            tokio::select! {
                _ = tokio::time::sleep(self.every) => {}
                _ = refresh.notified() => tokio::time::sleep(REFRESH_GAP).await,
                _ = self.set.closed() => return,
            }
        }
    }

    async fn resolve_all(&mut self) {
        let upstream = self.name;
        let mut set = BTreeSet::new();
        for target in &mut self.targets {
            match self.resolver.resolve(&target.host, target.port).await {
                Ok(addrs) if !addrs.is_empty() => {
                    if target.failing.take().is_some() {
                        tracing::info!(upstream, url = %target.url, "the upstream's name resolves again");
                    }
                    target.last = addrs;
                }
                outcome => {
                    let error = match outcome {
                        Ok(_) => "no address".to_owned(),
                        Err(err) => err.to_string(),
                    };
                    metrics::counter!("agora_upstream_resolve_failures_total", "upstream" => upstream)
                        .increment(1);
                    let now = Instant::now();
                    let log = match &mut target.failing {
                        None => {
                            target.failing = Some((now, now));
                            true
                        }
                        Some((_, logged)) if logged.elapsed() >= LOG_AGAIN => {
                            *logged = now;
                            true
                        }
                        Some(_) => false,
                    };
                    if log {
                        tracing::warn!(
                            upstream,
                            url = %target.url,
                            %error,
                            kept = target.last.len(),
                            "the upstream's name does not resolve; keeping the addresses it had"
                        );
                    }
                }
            }
            set.extend(target.last.iter().map(|&addr| Replica { url: target.url.clone(), addr }));
        }
        metrics::gauge!("agora_upstream_replicas", "upstream" => upstream).set(set.len() as f64);
        self.set.send_if_modified(|current| {
            let changed = **current != set;
            if changed {
                tracing::info!(upstream, replicas = set.len(), "the upstream's replicas changed");
                *current = Arc::new(set);
            }
            changed
        });
        self.resolved.send_replace(true);
    }
}

/// The changes of a balancer's replicas, as `tower::balance` takes them.
pub type Changes<S> = Pin<Box<dyn Stream<Item = Result<Change<Replica, S>, Infallible>> + Send>>;

/// The changes a balancer follows: every replica as it appears (made into
/// a service by `make`) and as it vanishes.
pub fn discover<S, F>(replicas: &Replicas, make: F) -> Changes<S>
where
    S: Send + 'static,
    F: Fn(&Replica) -> Option<S> + Send + 'static,
{
    struct State<S, F> {
        set: watch::Receiver<Arc<BTreeSet<Replica>>>,
        known: BTreeSet<Replica>,
        pending: VecDeque<Change<Replica, S>>,
        make: F,
    }
    let mut set = replicas.set.clone();
    set.mark_changed();
    let state = State { set, known: BTreeSet::new(), pending: VecDeque::new(), make };
    Box::pin(futures_util::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(change) = state.pending.pop_front() {
                return Some((Ok(change), state));
            }
            // The resolver has stopped: nobody calls this upstream anymore.
            state.set.changed().await.ok()?;
            let now = state.set.borrow_and_update().clone();
            for gone in state.known.difference(&now) {
                state.pending.push_back(Change::Remove(gone.clone()));
            }
            for new in now.difference(&state.known) {
                if let Some(service) = (state.make)(new) {
                    state.pending.push_back(Change::Insert(new.clone(), service));
                }
            }
            state.known = (*now).clone();
        }
    }))
}
