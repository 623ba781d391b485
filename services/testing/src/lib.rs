//! Support for the integration tests of Agora's services: a real server on
//! a free loopback port, secured as in production (TLS, mTLS, tokens from
//! a test CA and signing key), a fresh database (a temporary SQLite file,
//! or a new PostgreSQL database), waits on health with a bound instead of
//! fixed sleeps, a fault-injecting gRPC proxy and a TCP one ([`faults`]),
//! reflection and log capture. A dev-dependency only: production binaries
//! do not link it.
//!
//! PostgreSQL tests use `AGORA_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test?sslmode=disable`) to create and
//! drop their own databases, with the same options. Where it is unreachable they are skipped with a printed
//! reason, unless `AGORA_REQUIRE_POSTGRES=1` (as in CI) makes that a failure.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use sqlx::{AssertSqlSafe, Connection as _, Executor as _};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use agora_platform::{
    Database, Shutdown,
    config::{DatabaseUrl, Settings},
    security::tls::ServerTls,
    server::Application,
};

pub mod faults;
mod logs;
pub mod matrix;
pub mod nats;
mod schema;
mod security;
pub use logs::Captured;
pub use security::{Bearer, Channel, TestPki, Who, channel_as, pki, plain_channel, tls_channel, url};

/// Declares, for each async test function `name(db: TestDatabase)`, a
/// module `name` with two tests: `sqlite` and `postgres` (skipped with a
/// printed reason where PostgreSQL is unreachable and not required).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::TestDatabase::sqlite()).await
            }
            #[tokio::test]
            async fn postgres() {
                if let Some(db) = $crate::TestDatabase::postgres().await {
                    super::$name(db).await
                }
            }
        }
    )*};
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Says that the running test skips its work, and why: on stderr, and as a
/// line of the file `AGORA_SKIP_LOG` names (`make test` counts them there;
/// nextest reports a test that returns early as passed).
pub fn skipped(reason: &str) {
    let test = std::thread::current().name().unwrap_or("a test").to_owned();
    eprintln!("SKIP {test}: {reason}");
    if let Ok(path) = std::env::var("AGORA_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new().append(true).create(true).open(path) {
            let _ = writeln!(file, "{reason}\t{test}");
        }
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// A database a test owns; removed when dropped.
pub enum TestDatabase {
    Sqlite { dir: PathBuf, url: DatabaseUrl },
    Postgres { admin_url: String, name: String, url: DatabaseUrl },
}

impl TestDatabase {
    /// A SQLite file in a new temporary folder.
    pub fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(unique("agora_test"));
        std::fs::create_dir_all(&dir).expect("creating a temporary folder");
        let url = DatabaseUrl::new(format!("sqlite:{}/test.db", dir.display()));
        Self::Sqlite { dir, url }
    }

    /// A new, empty PostgreSQL database, or None (with the reason printed)
    /// when PostgreSQL is not reachable and not required.
    pub async fn postgres() -> Option<Self> {
        // Plaintext on loopback by default: a TLS handshake per connection
        // would slow every PostgreSQL test, and TLS to PostgreSQL has a
        // test of its own.
        let admin_url = std::env::var("AGORA_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into());
        let required = std::env::var("AGORA_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(conn) => conn,
            Err(err) if !required => {
                skipped(&format!("PostgreSQL at {admin_url} is unreachable ({err})"));
                return None;
            }
            Err(err) => {
                panic!("PostgreSQL is required (AGORA_REQUIRE_POSTGRES=1) but {admin_url} failed: {err}")
            }
        };
        let name = unique("agora_test");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("creating a test database");
        // The test database on the same server, with the same options.
        let (server, options) = admin_url.split_once('?').map_or((admin_url.as_str(), ""), |(s, o)| (s, o));
        let base = server.rsplit_once('/').map_or(server, |(base, _)| base);
        let options = if options.is_empty() { String::new() } else { format!("?{options}") };
        let url = DatabaseUrl::new(format!("{base}/{name}{options}"));
        Some(Self::Postgres { admin_url, name, url })
    }

    /// Another fresh database on the same backend: one for each service of
    /// a test that runs several.
    pub async fn another(&self) -> Self {
        match self {
            Self::Sqlite { .. } => Self::sqlite(),
            Self::Postgres { .. } => {
                Box::pin(Self::postgres()).await.expect("PostgreSQL answered a moment ago")
            }
        }
    }

    pub fn url(&self) -> DatabaseUrl {
        match self {
            Self::Sqlite { url, .. } | Self::Postgres { url, .. } => url.clone(),
        }
    }

    /// The PostgreSQL server's address (the URL's host and port); None on
    /// SQLite.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        use std::net::ToSocketAddrs as _;
        let Self::Postgres { url, .. } = self else { return None };
        let authority = url.expose().split_once("://")?.1.split(['/', '?']).next()?;
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
        let host_port =
            if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:5432") };
        host_port.to_socket_addrs().ok()?.next()
    }

    /// The URL of this database reached at `addr` instead (a
    /// [`faults::FaultProxy`] in front of its server).
    pub fn url_via(&self, addr: SocketAddr) -> DatabaseUrl {
        let url = self.url();
        let raw = url.expose();
        let (scheme, rest) = raw.split_once("://").expect("a PostgreSQL URL");
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let user = authority.rsplit_once('@').map(|(user, _)| format!("{user}@")).unwrap_or_default();
        DatabaseUrl::new(format!("{scheme}://{user}{addr}{path}"))
    }

    /// The database as a service opens it, for a test to read what the
    /// service wrote.
    pub fn open(&self) -> Database {
        Database::connect_lazy(&Settings::for_tests(self.url())).expect("the database URL is valid")
    }

    /// Runs `sql` on a connection of its own, from outside the service: the
    /// way a test breaks or rearranges the database under a running service.
    pub async fn execute(&self, sql: &str) {
        let sql = AssertSqlSafe(sql.to_owned());
        let result = match self {
            Self::Sqlite { url, .. } => {
                let mut conn =
                    sqlx::SqliteConnection::connect(url.expose()).await.expect("opening the database");
                conn.execute(sql).await.map(drop)
            }
            Self::Postgres { url, .. } => {
                let mut conn = sqlx::PgConnection::connect(url.expose()).await.expect("opening the database");
                conn.execute(sql).await.map(drop)
            }
        };
        result.expect("the statement runs");
    }

    /// Drops a PostgreSQL database now, cutting every connection: the way
    /// a test makes the database "go away".
    pub async fn drop_now(&self) {
        if let Self::Postgres { admin_url, name, .. } = self {
            drop_postgres(admin_url, name).await;
        }
    }

    /// Creates a PostgreSQL database dropped by [`Self::drop_now`] again,
    /// empty: the way a test makes a database "come up".
    pub async fn create_now(&self) {
        if let Self::Postgres { admin_url, name, .. } = self {
            let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("PostgreSQL answers");
            admin
                .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("creating the test database again");
        }
    }
}

async fn drop_postgres(admin_url: &str, name: &str) {
    if let Ok(mut admin) = sqlx::PgConnection::connect(admin_url).await {
        let _ = admin.execute(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match self {
            Self::Sqlite { dir, .. } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Self::Postgres { admin_url, name, .. } => {
                // Drop may run inside a runtime; a thread of its own can block.
                let (admin_url, name) = (admin_url.clone(), name.clone());
                let _ = std::thread::spawn(move || {
                    if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        rt.block_on(drop_postgres(&admin_url, &name));
                    }
                })
                .join();
            }
        }
    }
}

/// Settings for a test server of `service` on `database`, secured as in
/// production with the test credentials. With `AGORA_TEST_LOG` set (a
/// tracing filter such as `debug`), the servers of a test log to stderr.
pub fn settings(service: &str, database: &TestDatabase) -> Settings {
    let mut settings = Settings::for_tests(database.url());
    settings.security = pki().security(service);
    if let Ok(filter) = std::env::var("AGORA_TEST_LOG") {
        settings.log_filter = filter;
        let traces = agora_platform::telemetry::TraceSettings::read(|_| None).expect("no trace settings");
        agora_platform::telemetry::init(&settings, "test", &traces).expect("logs without traces");
    }
    settings
}

/// A server running in this process.
pub struct TestServer {
    pub grpc_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub shutdown: Shutdown,
    /// A channel as staff (plaintext and anonymous to an insecure server).
    pub channel: Channel,
    /// The server's TLS, when it has it.
    pub tls: Option<ServerTls>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Runs `app` and waits (bounded) until its health is SERVING, asked
    /// on the admin port as a probe asks.
    pub async fn start(app: Application) -> Self {
        let server = Self::start_unready(app).await;
        wait_for_health(&server.admin_channel(), "", ServingStatus::Serving, Duration::from_secs(20)).await;
        server
    }

    /// Runs `app` without waiting for health.
    pub async fn start_unready(app: Application) -> Self {
        let grpc_addr = app.grpc_addr();
        let admin_addr = app.admin_addr();
        let shutdown = app.shutdown();
        let tls = app.tls();
        let task = tokio::spawn(app.run_until_stopped());
        let channel = match tls {
            Some(_) => channel_as(grpc_addr, &Who::Staff),
            None => plain_channel(grpc_addr),
        };
        Self { grpc_addr, admin_addr, shutdown, channel, tls, task: Some(task) }
    }

    /// A channel to the server as `who`.
    pub fn channel_as(&self, who: &Who) -> Channel {
        match self.tls {
            Some(_) => channel_as(self.grpc_addr, who),
            None => plain_channel(self.grpc_addr),
        }
    }

    /// A channel to the server as the Agora service `name`: mTLS with its
    /// certificate, no token.
    pub fn channel_of_service(&self, name: &str) -> Channel {
        tls_channel(self.grpc_addr, &pki().service_tls(name), &Who::Nobody)
    }

    /// A plaintext channel to the admin port (health without credentials).
    pub fn admin_channel(&self) -> Channel {
        plain_channel(self.admin_addr)
    }

    /// Triggers shutdown and waits for the server to stop (bounded).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.trigger();
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(30), task).await.expect("server stops within 30 s")?
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A plain HTTP/2 client over TLS without tonic's channel. A tonic
/// `Channel` stops waiting at the request's own `grpc-timeout` and reports
/// CANCELLED by itself; through this client a test sees what the server
/// answers.
pub type RawClient =
    hyper_util::client::legacy::Client<agora_platform::security::tls::Connector, tonic::body::Body>;

/// An HTTP/2 client over TLS for `tls`, as the origin `https://addr`.
fn hyper_client(tls: &agora_platform::security::tls::ClientTls) -> RawClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(tls.connector())
}

/// A [`RawClient`] to `server` as staff, and the origin to give a generated
/// client's `with_origin`.
pub fn raw_client(server: &TestServer) -> (InterceptedService<RawClient, Bearer>, http::Uri) {
    let client = InterceptedService::new(hyper_client(&pki().client_tls()), Bearer::of(&Who::Staff));
    (client, url(server.grpc_addr).parse().expect("valid URI"))
}

/// The health status of `service` ("" for the whole server), or None when
/// the server does not answer.
pub async fn health_status(channel: &Channel, service: &str) -> Option<ServingStatus> {
    let mut client = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest { service: service.into() });
    request.set_timeout(Duration::from_secs(2));
    match client.check(request).await {
        Ok(resp) => ServingStatus::try_from(resp.into_inner().status).ok(),
        Err(_) => None,
    }
}

/// Polls health until it reports `want`; panics after `bound`.
pub async fn wait_for_health(channel: &Channel, service: &str, want: ServingStatus, bound: Duration) {
    let reached = wait_until(bound, || async { health_status(channel, service).await == Some(want) }).await;
    if !reached {
        let last = health_status(channel, service).await;
        panic!("health of {service:?} was {last:?}, not {want:?}, after {bound:?}");
    }
}

/// Polls `condition` every 20 ms until it holds (true) or `bound` passes
/// (false). The way tests wait: on a condition, with a bound.
pub async fn wait_until<F, Fut>(bound: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A minimal HTTP/1.1 GET, enough to scrape an admin port's `/metrics`
/// without an HTTP client crate.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("admin port answers");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sending the request");
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut text))
        .await
        .expect("the admin port answers within 10 s")
        .expect("reading the answer");
    text
}

/// What a downstream keeps of a customer `$1`: deleted (for [`Proxy::race`]).
pub const KEPT_DELETED: &str = "SELECT deleted AS kept FROM known_customers WHERE customer_id = $1";
/// What a downstream keeps of a product `$1`: discontinued (for [`Proxy::race`]).
pub const KEPT_DISCONTINUED: &str = "SELECT NOT on_sale AS kept FROM catalog_products WHERE product_id = $1";

/// What a [`Proxy`] does with the calls it receives.
pub mod proxy_mode {
    /// Pass every call on.
    pub const FORWARD: u8 = 0;
    /// Answer every other call UNAVAILABLE, pass the rest on.
    pub const FAIL_EVERY_OTHER: u8 = 1;
    /// Answer every call UNAVAILABLE.
    pub const FAIL_ALL: u8 = 2;
}

/// A gRPC proxy in front of a real upstream, for tests of the client stack
/// through real services: it counts the calls, records the `grpc-timeout`
/// each carried, fails calls with UNAVAILABLE on demand, and can hold the
/// upstream's answers to one method back until the test releases them. It
/// serves TLS with a certificate of the test CA, and calls the upstream
/// over TLS with the certificate of the service whose calls it carries, as
/// a sidecar of that service would.
pub struct Proxy {
    pub addr: SocketAddr,
    switches: Arc<Switches>,
    task: JoinHandle<()>,
}

/// What a [`Proxy`] does with the calls it receives, and what it saw.
struct Switches {
    /// One of [`proxy_mode`].
    mode: std::sync::atomic::AtomicU8,
    calls: AtomicU32,
    /// Calls by gRPC method name (`GetProduct`), to tell a client's calls
    /// from the change-feed streams that share the proxy.
    by_method: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    timeouts: std::sync::Mutex<Vec<Duration>>,
    /// A method answered OK with an empty message instead of forwarded:
    /// an upstream that breaks its contract.
    empty: std::sync::Mutex<Option<String>>,
    /// A method answered UNAVAILABLE whatever the mode: an upstream that
    /// serves the rest, such as one whose change feed cannot be reached.
    refused: std::sync::Mutex<Option<String>>,
    /// A method whose answers wait until the gate opens.
    held: std::sync::Mutex<Option<String>>,
    /// Open (true) unless a method is held.
    gate: tokio::sync::watch::Sender<bool>,
    /// Answers waiting at the closed gate.
    waiting: AtomicU32,
}

impl Switches {
    fn is(switch: &std::sync::Mutex<Option<String>>, method: &str) -> bool {
        switch.lock().expect("a proxy switch").as_deref() == Some(method)
    }

    fn set(switch: &std::sync::Mutex<Option<String>>, method: Option<&str>) {
        *switch.lock().expect("a proxy switch") = method.map(str::to_owned);
    }
}

/// An OK gRPC answer whose one message is empty (every field at its
/// default): five bytes of framing, then `grpc-status: 0`.
fn empty_answer() -> http::Response<tonic::body::Body> {
    use http_body_util::{BodyExt as _, StreamBody};
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, tonic::Status>(http_body::Frame::data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]))),
        Ok(http_body::Frame::trailers(trailers)),
    ];
    let body = StreamBody::new(tokio_stream::iter(frames)).boxed_unsync();
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert("content-type", http::HeaderValue::from_static("application/grpc"));
    response
}

impl Proxy {
    /// A proxy to `target` for the calls of `service` (`offers`).
    pub async fn start(target: SocketAddr, service: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let served = pki().issue(&agora_dev::pki::Leaf::localhost());
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
            agora_platform::security::tls::server_config(
                served.cert_pem.as_bytes(),
                served.key_pem.as_bytes(),
                None,
            )
            .expect("the proxy's TLS"),
        ));
        let addr = listener.local_addr().expect("bound");
        let switches = Arc::new(Switches {
            mode: std::sync::atomic::AtomicU8::new(proxy_mode::FORWARD),
            calls: AtomicU32::new(0),
            by_method: Default::default(),
            timeouts: Default::default(),
            empty: Default::default(),
            refused: Default::default(),
            held: Default::default(),
            gate: tokio::sync::watch::channel(true).0,
            waiting: AtomicU32::new(0),
        });
        let client = hyper_client(&pki().service_tls(service));
        let origin = url(target);
        let shared = switches.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, origin, switches) = (client.clone(), origin.clone(), shared.clone());
                let acceptor = acceptor.clone();
                let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = switches.clone();
                    s.calls.fetch_add(1, Ordering::SeqCst);
                    let method = req.uri().path().rsplit('/').next().unwrap_or("").to_owned();
                    let answer_empty = Switches::is(&s.empty, &method);
                    let refuse = Switches::is(&s.refused, &method);
                    let hold = Switches::is(&s.held, &method);
                    // Every other call of each method fails, so streams that
                    // share the proxy do not shift a client's pattern.
                    let n = {
                        let mut counts = s.by_method.lock().expect("by method");
                        let count = counts.entry(method).or_default();
                        *count += 1;
                        *count - 1
                    };
                    if let Some(timeout) = req
                        .headers()
                        .get("grpc-timeout")
                        .and_then(|v| v.to_str().ok())
                        .and_then(agora_platform::middleware::parse_grpc_timeout)
                    {
                        s.timeouts.lock().expect("timeouts").push(timeout);
                    }
                    let fail = refuse
                        || match s.mode.load(Ordering::SeqCst) {
                            proxy_mode::FAIL_ALL => true,
                            proxy_mode::FAIL_EVERY_OTHER => n % 2 == 0,
                            _ => false,
                        };
                    let (client, origin) = (client.clone(), origin.clone());
                    async move {
                        if answer_empty {
                            return Ok(empty_answer());
                        }
                        if fail {
                            return Ok::<_, hyper_util::client::legacy::Error>(
                                tonic::Status::unavailable("injected by the test proxy")
                                    .into_http::<tonic::body::Body>(),
                            );
                        }
                        let (mut parts, body) = req.into_parts();
                        parts.uri = format!("{origin}{}", parts.uri.path()).parse().expect("valid URI");
                        let response = match client
                            .request(http::Request::from_parts(parts, tonic::body::Body::new(body)))
                            .await
                        {
                            Ok(response) => response,
                            // The upstream is down: UNAVAILABLE, as a sidecar answers.
                            Err(err) => {
                                return Ok(tonic::Status::unavailable(format!(
                                    "upstream connect error: {err}"
                                ))
                                .into_http::<tonic::body::Body>());
                            }
                        };
                        if hold {
                            // The upstream answered; the caller waits for it.
                            let mut gate = s.gate.subscribe();
                            s.waiting.fetch_add(1, Ordering::SeqCst);
                            let _ = gate.wait_for(|open| *open).await;
                            s.waiting.fetch_sub(1, Ordering::SeqCst);
                        }
                        Ok(response.map(tonic::body::Body::new))
                    }
                });
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else { return };
                    let _ =
                        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                            .await;
                });
            }
        });
        Self { addr, switches, task }
    }

    /// From now on, answers calls of `method` (`GetProduct`) OK with an
    /// empty message, as an upstream that breaks its contract would.
    pub fn answer_empty(&self, method: &str) {
        Switches::set(&self.switches.empty, Some(method));
    }

    /// From now on, answers calls of `method` (`WatchCatalogEvents`)
    /// UNAVAILABLE and passes the others on as the mode says.
    pub fn refuse(&self, method: &str) {
        Switches::set(&self.switches.refused, Some(method));
    }

    /// Passes calls of the refused method on again.
    pub fn stop_refusing(&self) {
        Switches::set(&self.switches.refused, None);
    }

    /// From now on, calls of `method` (`GetCustomer`) are passed on, and
    /// the upstream's answers held back until [`Self::release`]: the
    /// caller acts on an answer the upstream gave a while ago.
    pub fn hold(&self, method: &str) {
        self.switches.gate.send_replace(false);
        Switches::set(&self.switches.held, Some(method));
    }

    /// How many answers are held back now.
    pub fn holding(&self) -> u32 {
        self.switches.waiting.load(Ordering::SeqCst)
    }

    /// Lets every held answer go, and holds no more.
    pub fn release(&self) {
        Switches::set(&self.switches.held, None);
        self.switches.gate.send_replace(true);
    }

    /// Forces a write's race against a change of its upstream, every time:
    /// holds the upstream's answers to `method`, runs `call` until its
    /// question's answer is held (bounded); then `change` is made upstream,
    /// the feed this proxy refused is let through, and the test waits
    /// until the downstream's database `db` keeps the change (`kept`: a
    /// query of one boolean column `kept`, `$1` bound to `id`); only then
    /// does the answer, older than the change, reach the caller. Returns
    /// what `call` made of it.
    pub async fn race<T, C, U>(
        &self,
        method: &str,
        call: C,
        change: U,
        db: &Database,
        kept: &'static str,
        id: &str,
    ) -> T
    where
        T: Send + 'static,
        C: Future<Output = T> + Send + 'static,
        U: Future<Output = ()>,
    {
        self.hold(method);
        let call = tokio::spawn(call);
        let held = wait_until(Duration::from_secs(10), || async { self.holding() > 0 }).await;
        assert!(held, "no answer to {method} was held within 10 s");
        change.await;
        self.stop_refusing();
        let reached = wait_until(Duration::from_secs(20), || async {
            match db.query(kept).bind(id).fetch_optional().await {
                Ok(Some(row)) => row.get::<bool>("kept").unwrap_or(false),
                _ => false,
            }
        })
        .await;
        assert!(reached, "the upstream's change never reached the downstream's database");
        self.release();
        call.await.expect("the call's task")
    }

    pub fn set_mode(&self, mode: u8) {
        self.switches.mode.store(mode, Ordering::SeqCst);
    }

    pub fn calls(&self) -> u32 {
        self.switches.calls.load(Ordering::SeqCst)
    }

    /// Calls of one gRPC method (`GetProduct`).
    pub fn calls_of(&self, method: &str) -> u32 {
        self.switches.by_method.lock().expect("by method").get(method).copied().unwrap_or(0)
    }

    /// The `grpc-timeout` of every call so far, in order.
    pub fn timeouts(&self) -> Vec<Duration> {
        self.switches.timeouts.lock().expect("timeouts").clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Asks a server's reflection service (v1) what `grpcurl list` would: the
/// services it advertises, sorted, and the number of file descriptors it
/// returns for `symbol` (a method, `pkg.Service.Method`).
pub async fn reflect(channel: &Channel, symbol: &str) -> (Vec<String>, usize) {
    use tokio_stream::StreamExt as _;
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let requests =
        [MessageRequest::ListServices(String::new()), MessageRequest::FileContainingSymbol(symbol.into())]
            .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("reflection answers")
        .into_inner();
    let mut next = async || responses.next().await.expect("an answer").expect("no error").message_response;
    let Some(MessageResponse::ListServicesResponse(list)) = next().await else {
        panic!("expected a service list");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let Some(MessageResponse::FileDescriptorResponse(files)) = next().await else {
        panic!("expected the file descriptors of {symbol}");
    };
    (names, files.file_descriptor_proto.len())
}
