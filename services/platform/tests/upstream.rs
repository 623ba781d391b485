//! The client stack for upstream calls, against a fake upstream that fails
//! on demand and records what it receives. The fake speaks
//! `grpc.health.v1`, a real gRPC service every language has.

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use agora_platform::{
    deadline::Deadline,
    middleware::parse_grpc_timeout,
    upstream::{Credentials, UpstreamChannel, UpstreamSettings, channel, discover::Resolve},
};
use agora_testing::wait_until;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse,
    health_client::HealthClient,
    health_server::{Health, HealthServer},
};

/// How the fake answers.
const HEALTHY: u8 = 0;
const EVERY_OTHER_FAILS: u8 = 1;
const ALWAYS_FAILS: u8 = 2;

#[derive(Default)]
struct Fake {
    mode: AtomicU8,
    calls: AtomicU32,
    timeouts: Mutex<Vec<Duration>>,
}

#[derive(Clone)]
struct FakeService(Arc<Fake>);

#[tonic::async_trait]
impl Health for FakeService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(t) =
            request.metadata().get("grpc-timeout").and_then(|v| v.to_str().ok()).and_then(parse_grpc_timeout)
        {
            self.0.timeouts.lock().unwrap().push(t);
        }
        match self.0.mode.load(Ordering::SeqCst) {
            EVERY_OTHER_FAILS if n.is_multiple_of(2) => Err(Status::unavailable("flaky")),
            ALWAYS_FAILS => Err(Status::unavailable("down")),
            _ => Ok(Response::new(HealthCheckResponse { status: 1 })),
        }
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("not needed"))
    }
}

async fn fake(mode: u8) -> (Arc<Fake>, SocketAddr) {
    fake_at("127.0.0.1", mode).await
}

/// A fake listening on the loopback address `ip` (127.0.0.2, ...), as
/// replicas on several hosts do.
async fn fake_at(ip: &str, mode: u8) -> (Arc<Fake>, SocketAddr) {
    let state = Arc::new(Fake::default());
    state.mode.store(mode, Ordering::SeqCst);
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = HealthServer::new(FakeService(state.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (state, addr)
}

/// An address where nothing listens.
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn client(settings: &UpstreamSettings) -> HealthClient<UpstreamChannel> {
    HealthClient::new(channel(settings, &Credentials::default()).unwrap())
}

fn settings(addrs: &[SocketAddr]) -> UpstreamSettings {
    UpstreamSettings::for_tests("fake", addrs.iter().map(|a| format!("http://{a}")).collect())
}

async fn check(client: &mut HealthClient<UpstreamChannel>) -> Result<(), Status> {
    client.check(HealthCheckRequest::default()).await.map(drop)
}

/// A check asked for a call whose deadline is `deadline`: the deadline
/// travels as a value in the request's extensions.
async fn check_within(client: &mut HealthClient<UpstreamChannel>, deadline: Deadline) -> Result<(), Status> {
    let mut request = Request::new(HealthCheckRequest::default());
    request.extensions_mut().insert(deadline);
    client.check(request).await.map(drop)
}

/// An upstream that fails every other call with UNAVAILABLE looks healthy
/// to the caller: each failure is retried once.
#[tokio::test]
async fn retries_turn_intermittent_unavailability_into_success() {
    let (fake, addr) = fake(EVERY_OTHER_FAILS).await;
    let mut client = client(&settings(&[addr]));
    for _ in 0..20 {
        check(&mut client).await.expect("retried into success");
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), 40, "every call failed once, then succeeded");
}

/// When the upstream always fails, the budget caps the extra attempts: far
/// fewer than `max_attempts` times the calls.
#[tokio::test]
async fn the_retry_budget_caps_the_extra_attempts_of_an_outage() {
    let (fake, addr) = fake(ALWAYS_FAILS).await;
    let mut s = settings(&[addr]);
    s.breaker_failures = 100_000; // keep the breaker out of this test
    let mut client = client(&s);
    let calls = 400;
    for _ in 0..calls {
        let err = check(&mut client).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    let attempts = fake.calls.load(Ordering::SeqCst);
    // Without a budget: 3 attempts a call, 1200. With it: the calls, a
    // reserve of 5 retries a second over 10 s, and 20% of the calls.
    let ceiling = calls + 50 + calls / 5 + 5;
    assert!(attempts > calls, "some retries happened ({attempts})");
    assert!(attempts <= ceiling, "{attempts} attempts for {calls} calls, ceiling {ceiling}");
}

/// After repeated failures the breaker opens: calls fail at once without
/// reaching the upstream. When the upstream recovers, a trial call closes it.
#[tokio::test]
async fn the_breaker_opens_fails_fast_and_closes_when_the_upstream_returns() {
    let (fake, addr) = fake(ALWAYS_FAILS).await;
    let mut s = settings(&[addr]);
    s.breaker_failures = 3;
    s.max_attempts = 1;
    let mut client = client(&s);
    for _ in 0..3 {
        check(&mut client).await.unwrap_err();
    }
    let reached = fake.calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let err = check(&mut client).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("circuit open"), "{err:?}");
    assert!(took < Duration::from_millis(50), "failing fast took {took:?}");
    assert_eq!(fake.calls.load(Ordering::SeqCst), reached, "the open breaker kept the call home");

    fake.mode.store(HEALTHY, Ordering::SeqCst);
    let recovered = wait_until(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { check(&mut client).await.is_ok() }
    })
    .await;
    assert!(recovered, "the breaker never closed");
    check(&mut client).await.expect("closed again");
}

/// The caller's remaining deadline travels upstream as `grpc-timeout`; with
/// no caller deadline the upstream's own call timeout does.
#[tokio::test]
async fn the_callers_deadline_reaches_the_upstream() {
    let (fake, addr) = fake(HEALTHY).await;
    let mut client = client(&settings(&[addr]));
    let deadline = Deadline(tokio::time::Instant::now() + Duration::from_millis(300));
    check_within(&mut client, deadline).await.unwrap();
    check(&mut client).await.unwrap();
    let seen = fake.timeouts.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[0] <= Duration::from_millis(300) && seen[0] > Duration::from_millis(100), "{seen:?}");
    assert!(seen[1] <= Duration::from_secs(2) && seen[1] > Duration::from_millis(1500), "{seen:?}");

    // A caller with no time left does not bother the upstream.
    let before = fake.calls.load(Ordering::SeqCst);
    let err = check_within(&mut client, Deadline(tokio::time::Instant::now())).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert_eq!(fake.calls.load(Ordering::SeqCst), before);
}

/// The deadline is a value, not a task-local: work spawned for a call
/// carries it to the upstream all the same.
#[tokio::test]
async fn the_callers_deadline_survives_a_spawned_task() {
    let (fake, addr) = fake(HEALTHY).await;
    let mut client = client(&settings(&[addr]));
    let deadline = Deadline(tokio::time::Instant::now() + Duration::from_millis(300));
    tokio::spawn(async move { check_within(&mut client, deadline).await }).await.unwrap().unwrap();
    let seen = fake.timeouts.lock().unwrap().clone();
    assert!(seen[0] <= Duration::from_millis(300) && seen[0] > Duration::from_millis(100), "{seen:?}");
}

/// Calls spread over the replicas, and a dead replica costs no failed call.
#[tokio::test]
async fn calls_are_balanced_over_replicas_and_avoid_a_dead_one() {
    let (a, addr_a) = fake(HEALTHY).await;
    let (b, addr_b) = fake(HEALTHY).await;
    let mut client = client(&settings(&[addr_a, addr_b, dead_addr().await]));
    for _ in 0..60 {
        check(&mut client).await.expect("a live replica answers");
    }
    let (a, b) = (a.calls.load(Ordering::SeqCst), b.calls.load(Ordering::SeqCst));
    assert_eq!(a + b, 60);
    assert!(a >= 10 && b >= 10, "unbalanced: {a} and {b}");
}

/// An upstream with nothing listening fails fast with UNAVAILABLE naming it.
#[tokio::test]
async fn a_down_upstream_fails_fast_with_unavailable() {
    let mut client = client(&settings(&[dead_addr().await]));
    let started = Instant::now();
    let err = check(&mut client).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("fake"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}

/// A resolver the test controls: every name resolves to what the test
/// says now (an error: the name does not resolve), and lookups are counted.
#[derive(Debug)]
struct Names {
    answer: Mutex<Result<Vec<SocketAddr>, String>>,
    lookups: AtomicU32,
}

impl Names {
    fn answering(answer: Result<Vec<SocketAddr>, String>) -> Arc<Self> {
        Arc::new(Self { answer: Mutex::new(answer), lookups: AtomicU32::new(0) })
    }

    fn set(&self, answer: Result<Vec<SocketAddr>, String>) {
        *self.answer.lock().unwrap() = answer;
    }

    /// Waits for two lookups after now: the answer set now was seen.
    async fn seen(&self) {
        let from = self.lookups.load(Ordering::SeqCst);
        let seen =
            wait_until(Duration::from_secs(5), || async { self.lookups.load(Ordering::SeqCst) >= from + 2 })
                .await;
        assert!(seen, "the name was not resolved again");
    }
}

impl Resolve for Names {
    fn resolve(
        &self,
        _host: &str,
        _port: u16,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let answer = self.answer.lock().unwrap().clone().map_err(std::io::Error::other);
        Box::pin(std::future::ready(answer))
    }
}

/// Settings for one upstream named `fake.test`, resolved by `names`.
fn named(names: &Arc<Names>) -> UpstreamSettings {
    let mut settings = UpstreamSettings::for_tests("fake", vec!["http://fake.test:50051".into()]);
    settings.resolver = names.clone();
    settings.resolve_every = Duration::from_millis(50);
    settings
}

fn calls(fakes: &[&Arc<Fake>]) -> Vec<u32> {
    fakes.iter().map(|f| f.calls.load(Ordering::SeqCst)).collect()
}

/// One name for several replicas (a headless Service): calls go to every
/// address it resolves to; a replica that appears behind the name joins,
/// one that vanished from it leaves.
#[tokio::test]
async fn a_name_balances_over_every_address_and_follows_replicas_as_they_come_and_go() {
    let (a, addr_a) = fake_at("127.0.0.2", HEALTHY).await;
    let (b, addr_b) = fake_at("127.0.0.3", HEALTHY).await;
    let (c, addr_c) = fake_at("127.0.0.4", HEALTHY).await;
    let names = Names::answering(Ok(vec![addr_a, addr_b, addr_c]));
    let mut client = client(&named(&names));
    for _ in 0..60 {
        check(&mut client).await.expect("a replica answers");
    }
    let spread = calls(&[&a, &b, &c]);
    assert_eq!(spread.iter().sum::<u32>(), 60);
    assert!(spread.iter().all(|&n| n >= 5), "unbalanced: {spread:?}");

    // c goes away, d comes.
    let (d, addr_d) = fake_at("127.0.0.5", HEALTHY).await;
    names.set(Ok(vec![addr_a, addr_b, addr_d]));
    names.seen().await;
    let before = calls(&[&a, &b, &c, &d]);
    for _ in 0..60 {
        check(&mut client).await.expect("a replica answers");
    }
    let after = calls(&[&a, &b, &c, &d]);
    let spread: Vec<u32> = after.iter().zip(&before).map(|(x, y)| x - y).collect();
    assert_eq!(spread[2], 0, "a vanished replica still gets calls: {spread:?}");
    assert!(spread[0] >= 5 && spread[1] >= 5 && spread[3] >= 5, "unbalanced: {spread:?}");
}

/// A name that stops resolving keeps the replicas it had (a DNS hiccup
/// must not empty the balancer); a name that never resolved fails calls
/// at once with UNAVAILABLE naming the upstream.
#[tokio::test]
async fn a_name_that_stops_resolving_keeps_its_replicas_and_one_that_never_did_fails_fast() {
    let (a, addr_a) = fake_at("127.0.0.2", HEALTHY).await;
    let names = Names::answering(Ok(vec![addr_a]));
    let mut kept = client(&named(&names));
    check(&mut kept).await.expect("the replica answers");
    names.set(Err("no such host".into()));
    names.seen().await;
    for _ in 0..10 {
        check(&mut kept).await.expect("the replica it had still answers");
    }
    assert_eq!(a.calls.load(Ordering::SeqCst), 11);

    let nowhere = Names::answering(Err("no such host".into()));
    let mut lost = client(&named(&nowhere));
    let started = Instant::now();
    let err = check(&mut lost).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("fake") && err.message().contains("no replica"), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
}
