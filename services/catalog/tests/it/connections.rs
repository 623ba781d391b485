//! What the server does with the connections and streams clients hold
//! open: a cap on connections, a handshake and an idle timeout, a maximum
//! age, limits on long-lived streams, a stalled reader, an oversized
//! header list, streams at shutdown, and gRPC-Web over HTTP/1.1. Seen from
//! a raw HTTP/2 client (the h2 crate) or HTTP/1.1 client (hyper's), which
//! does only what a test tells it, against a plaintext server (the
//! opt-out) so that the frames are the test's own.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::common::*;
use agora_platform::{Settings, security::SecuritySettings};
use agora_testing::{
    faults::{closed_within, connect_from, tls_handshake_only},
    wait_until,
};
use bytes::Bytes;
use tokio::{net::TcpStream, task::JoinHandle};
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// A catalog on SQLite without TLS, with `tweak` applied to its settings.
async fn plaintext(tweak: impl FnOnce(&mut Settings)) -> Catalog {
    start_with(TestDatabase::sqlite(), |s| {
        s.security = SecuritySettings::insecure();
        tweak(s);
    })
    .await
}

/// An HTTP/2 connection made by hand: its handle for requests, and the
/// task that drives it, which ends when the server closes the connection.
struct Raw {
    send: h2::client::SendRequest<Bytes>,
    driver: JoinHandle<Result<(), h2::Error>>,
    addr: SocketAddr,
}

async fn connect(addr: SocketAddr) -> Raw {
    connect_with(addr, &h2::client::Builder::new()).await
}

async fn connect_with(addr: SocketAddr, builder: &h2::client::Builder) -> Raw {
    let tcp = TcpStream::connect(addr).await.expect("the server accepts");
    let (send, connection) = builder.handshake(tcp).await.expect("the HTTP/2 preface is sent");
    Raw { send, driver: tokio::spawn(connection), addr }
}

/// An HTTP/2 connection over a TCP connection made elsewhere.
async fn h2_over(tcp: TcpStream) -> Raw {
    let addr = tcp.peer_addr().expect("connected");
    let (send, connection) = h2::client::handshake(tcp).await.expect("the HTTP/2 preface is sent");
    Raw { send, driver: tokio::spawn(connection), addr }
}

/// A gRPC request's head, for `path`, with `extra` headers.
fn grpc_request(addr: SocketAddr, path: &str, extra: &[(&str, String)]) -> http::Request<()> {
    let mut request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, value.as_str());
    }
    request.body(()).expect("a valid request")
}

/// The gRPC frame of an encoded message.
fn framed(message: &impl prost::Message) -> Bytes {
    let body = message.encode_to_vec();
    let mut frame = vec![0];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    Bytes::from(frame)
}

impl Raw {
    /// Sends one call and returns the answer's head and body, unread.
    async fn call(
        &mut self,
        path: &str,
        message: &impl prost::Message,
        extra: &[(&str, String)],
    ) -> http::Response<h2::RecvStream> {
        self.try_call(path, message, extra).await.expect("an answer")
    }

    async fn try_call(
        &mut self,
        path: &str,
        message: &impl prost::Message,
        extra: &[(&str, String)],
    ) -> Result<http::Response<h2::RecvStream>, h2::Error> {
        self.send = self.send.clone().ready().await?;
        let (response, mut body) = self.send.send_request(grpc_request(self.addr, path, extra), false)?;
        body.send_data(framed(message), true)?;
        response.await
    }

    /// A health Check, read to its end: the grpc-status.
    async fn check(&mut self) -> String {
        let response = self.call("/grpc.health.v1.Health/Check", &HealthCheckRequest::default(), &[]).await;
        grpc_status(response).await
    }

    /// Whether a health Check is answered OK.
    async fn checks(&mut self) -> bool {
        let request = HealthCheckRequest::default();
        let call = self.try_call("/grpc.health.v1.Health/Check", &request, &[]);
        match tokio::time::timeout(Duration::from_secs(2), call).await {
            Ok(Ok(response)) => grpc_status(response).await == "0",
            _ => false,
        }
    }

    /// Whether the server closed the connection within `bound`. The
    /// handle stays alive meanwhile: without one, h2 closes the connection
    /// itself.
    async fn closed_within(self, bound: Duration) -> bool {
        let Raw { send, driver, .. } = self;
        let closed = tokio::time::timeout(bound, driver).await.is_ok();
        drop(send);
        closed
    }
}

/// The grpc-status of an answer, from its headers (trailers-only) or its
/// trailers, after reading its body.
async fn grpc_status(response: http::Response<h2::RecvStream>) -> String {
    let (head, mut body) = response.into_parts();
    if let Some(status) = head.headers.get("grpc-status") {
        return status.to_str().unwrap().to_owned();
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the body");
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.expect("trailers").expect("trailers present");
    trailers["grpc-status"].to_str().unwrap().to_owned()
}

/// How many connections the server closed for `reason`.
async fn closed(c: &Catalog, reason: &str) -> f64 {
    metric(c, &format!("agora_grpc_server_connections_closed_total{{reason=\"{reason}\"}} ")).await
}

/// A client that sends the HTTP/2 preface and nothing more is closed after
/// the handshake timeout.
#[tokio::test]
async fn a_connection_that_never_calls_is_closed_after_the_handshake_timeout() {
    let c = plaintext(|s| s.connections.handshake_timeout = Duration::from_millis(300)).await;
    let started = Instant::now();
    let raw = connect(c.server.grpc_addr).await;
    assert!(raw.closed_within(Duration::from_secs(10)).await, "still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed early: {:?}", started.elapsed());
    assert_eq!(closed(&c, "handshake").await, 1.0);
}

/// A connection with nothing open for the idle timeout gets GOAWAY; one
/// with a stream open all that time does not.
#[tokio::test]
async fn an_idle_connection_is_closed_and_a_busy_one_is_kept() {
    let c = plaintext(|s| s.connections.idle_timeout = Duration::from_millis(400)).await;
    let mut idle = connect(c.server.grpc_addr).await;
    assert_eq!(idle.check().await, "0");
    let mut busy = HealthClient::new(c.server.channel.clone());
    let mut watch = busy.watch(HealthCheckRequest::default()).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    assert!(idle.closed_within(Duration::from_secs(10)).await, "idle and still open after 10 s");
    assert_eq!(closed(&c, "idle").await, 1.0);
    // Well past the idle timeout, the watching connection still serves.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(closed(&c, "idle").await, 1.0);
    assert_eq!(agora_testing::health_status(&c.server.channel, "").await, Some(ServingStatus::Serving));
}

/// At its maximum age a connection gets GOAWAY even while busy, and is cut
/// after the grace.
#[tokio::test]
async fn an_old_connection_gets_goaway_then_its_grace() {
    let c = plaintext(|s| {
        s.connections.max_age = Duration::from_secs(1);
        s.connections.age_grace = Duration::from_millis(300);
    })
    .await;
    let started = Instant::now();
    let mut raw = connect(c.server.grpc_addr).await;
    let watch = raw.call("/grpc.health.v1.Health/Watch", &HealthCheckRequest::default(), &[]).await;
    assert_eq!(watch.status(), 200);
    assert!(raw.closed_within(Duration::from_secs(10)).await, "still open after 10 s");
    assert!(started.elapsed() >= Duration::from_millis(900), "closed early: {:?}", started.elapsed());
    assert_eq!(closed(&c, "age").await, 1.0);
}

/// Over the cap, a connection is closed at accept; once one closes, a new
/// one is served.
#[tokio::test]
async fn connections_over_the_cap_are_closed_at_accept() {
    let c = plaintext(|s| s.connections.max_connections = 2).await;
    let mut first = connect(c.server.grpc_addr).await;
    assert_eq!(first.check().await, "0");
    let mut second = connect(c.server.grpc_addr).await;
    assert!(second.checks().await);
    let third = connect(c.server.grpc_addr).await;
    assert!(third.closed_within(Duration::from_secs(10)).await, "a connection over the cap stayed open");
    assert_eq!(closed(&c, "limit").await, 1.0);

    drop((first, second));
    let served_again =
        wait_until(Duration::from_secs(10), || async { connect(c.server.grpc_addr).await.checks().await })
            .await;
    assert!(served_again, "no connection served after one closed");
}

/// Loopback addresses other than the test client's.
const TWO: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
const THREE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

/// A plaintext catalog with four places for connections, and a minute for
/// a first call (without the eviction, silent connections would hold the
/// places all that time).
async fn four_places() -> (Catalog, SocketAddr) {
    let c = plaintext(|s| {
        s.connections.max_connections = 4;
        s.connections.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = c.server.grpc_addr;
    (c, addr)
}

/// At the cap, connections that never made a call (silent TCP, an HTTP/2
/// preface and nothing more, from other addresses) make way for a client
/// that calls, the oldest of the address holding most of them first; a
/// connection that completed a call keeps its place.
#[tokio::test]
async fn connections_that_never_call_make_way_for_one_that_does() {
    let (c, addr) = four_places().await;
    let (two, three) = (TWO, THREE);
    let mut silent = connect_from(two, addr).await;
    let preface_only = h2_over(connect_from(two, addr).await).await;
    let mut caller = connect(addr).await;
    assert_eq!(caller.check().await, "0");
    let mut also_silent = connect_from(three, addr).await;

    // The cap is full: a client that calls takes the place of the oldest
    // silent one of the address holding most of them.
    let mut newcomer = connect(addr).await;
    assert!(newcomer.checks().await, "a well-behaved client was refused");
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "the oldest silent one stayed");
    assert_eq!(closed(&c, "evicted").await, 1.0);
    // Then the preface-only one, then the other silent one; never a caller.
    let mut third = connect(addr).await;
    assert!(third.checks().await);
    assert!(preface_only.closed_within(Duration::from_secs(10)).await, "the preface-only one stayed");
    let mut fourth = connect(addr).await;
    assert!(fourth.checks().await);
    assert!(closed_within(&mut also_silent, Duration::from_secs(10)).await);
    assert!(caller.checks().await && newcomer.checks().await, "a caller lost its place");
    // Every place is held by a caller now: the next is closed at accept.
    let refused = connect(addr).await;
    assert!(refused.closed_within(Duration::from_secs(10)).await, "a connection over the cap stayed open");
    assert_eq!(closed(&c, "limit").await, 1.0);
    assert_eq!(closed(&c, "evicted").await, 3.0);
}

/// Connections that never call, from an address that holds as many of
/// them as any other, only displace each other until they hold equal
/// shares; then they are refused at accept, and the places stay with
/// those they had.
#[tokio::test]
async fn silent_addresses_do_not_displace_each_other_for_ever() {
    let (c, addr) = four_places().await;
    let (two, three) = (TWO, THREE);
    let mut held = Vec::new();
    for source in [two, two, three, three] {
        held.push(connect_from(source, addr).await);
    }
    for source in [two, three] {
        let mut more = connect_from(source, addr).await;
        assert!(closed_within(&mut more, Duration::from_secs(10)).await, "a fifth silent one stayed");
    }
    assert_eq!(closed(&c, "limit").await, 2.0);
    assert_eq!(closed(&c, "evicted").await, 0.0, "none was displaced");
    let mut client = connect(addr).await;
    assert!(client.checks().await, "a client that calls was refused");
}

/// On a TLS server, connections that finished their TLS handshake and
/// never called, or never even began it, make way for a client that calls.
#[tokio::test]
async fn tls_connections_that_never_call_make_way_for_one_that_does() {
    let c = start_with(TestDatabase::sqlite(), |s| {
        s.connections.max_connections = 3;
        s.connections.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = c.server.grpc_addr;
    let elsewhere = TWO;
    let mut silent = connect_from(elsewhere, addr).await;
    let mut handshaken = Vec::new();
    for _ in 0..2 {
        handshaken.push(tls_handshake_only(elsewhere, addr).await.expect("the TLS handshake"));
    }
    // Every place is held; a client with a token calls (a connection of its own).
    let mut client = pb::catalog_service_client::CatalogServiceClient::new(
        c.server.channel_as(&agora_testing::Who::Staff),
    );
    client.list_families(pb::ListFamiliesRequest::default()).await.expect("the caller is served");
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "the silent connection stayed");
    // A second client takes the oldest handshake-only place.
    let mut other = pb::catalog_service_client::CatalogServiceClient::new(
        c.server.channel_as(&agora_testing::Who::Staff),
    );
    other.list_families(pb::ListFamiliesRequest::default()).await.expect("the second caller is served");
    assert!(closed_within(&mut handshaken[0], Duration::from_secs(10)).await);
    assert_eq!(closed(&c, "evicted").await, 2.0);
    client.list_families(pb::ListFamiliesRequest::default()).await.expect("the first keeps its place");
}

/// One peer address holds at most AGORA_MAX_CONNECTIONS_PER_PEER
/// connections: its next is refused at accept (it takes no place, not even
/// one of its own silent ones), while another address is still served.
#[tokio::test]
async fn one_address_holds_at_most_its_share() {
    let c = plaintext(|s| {
        s.connections.max_connections = 100;
        s.connections.max_connections_per_peer = 2;
        s.connections.handshake_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = c.server.grpc_addr;
    let elsewhere = TWO;
    let _silent = connect_from(elsewhere, addr).await;
    let mut caller = h2_over(connect_from(elsewhere, addr).await).await;
    assert!(caller.checks().await);
    let third = h2_over(connect_from(elsewhere, addr).await).await;
    assert!(third.closed_within(Duration::from_secs(10)).await, "a third connection from one address stayed");
    assert_eq!(closed(&c, "peer_limit").await, 1.0);
    assert_eq!(closed(&c, "evicted").await, 0.0);
    let mut local = connect(addr).await;
    assert!(local.checks().await, "another address was refused");
}

/// A header list over AGORA_MAX_HEADER_BYTES gets RESOURCE_EXHAUSTED that
/// names the limit, not HTTP 431.
#[tokio::test]
async fn a_header_list_over_the_limit_gets_resource_exhausted() {
    let c = plaintext(|_| {}).await;
    let mut raw = connect(c.server.grpc_addr).await;
    let big = [("x-big", "a".repeat(70 << 10))];
    let response = raw.call("/grpc.health.v1.Health/Check", &HealthCheckRequest::default(), &big).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "8");
    let message = response.headers()["grpc-message"].to_str().unwrap();
    assert!(message.contains("AGORA_MAX_HEADER_BYTES"), "{message}");
    // The connection still serves.
    assert_eq!(raw.check().await, "0");
}

/// Long-lived streams are admitted by their own limits, per connection and
/// per process, and hold no unary permit: calls still pass with every
/// stream place taken.
#[tokio::test]
async fn streams_are_admitted_by_limits_of_their_own() {
    let c = plaintext(|s| {
        s.concurrency_limit = 1;
        s.connections.stream_limit = 3;
        s.connections.stream_limit_per_connection = 2;
    })
    .await;
    let watch = |channel: agora_testing::Channel| async move {
        let mut client = HealthClient::new(channel);
        client.watch(HealthCheckRequest::default()).await.map(|r| r.into_inner())
    };
    let one = agora_testing::plain_channel(c.server.grpc_addr);
    let a1 = watch(one.clone()).await.expect("first stream");
    let _a2 = watch(one.clone()).await.expect("second stream");
    let err = watch(one.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("this connection has 2 streams open"), "{}", err.message());

    let other = agora_testing::plain_channel(c.server.grpc_addr);
    let _b1 = watch(other.clone()).await.expect("third stream, on another connection");
    let err = watch(other.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("the server has 3 streams open"), "{}", err.message());

    // Streams hold no unary permit: a call passes with the limit at 1.
    let mut client = pb::catalog_service_client::CatalogServiceClient::new(other.clone());
    client.list_products(pb::ListProductsRequest::default()).await.expect("a unary call passes");

    drop(a1);
    let reopened = wait_until(Duration::from_secs(10), || {
        let other = other.clone();
        async move { watch(other).await.is_ok() }
    })
    .await;
    assert!(reopened, "the place of an ended stream was not freed");
}

/// A reader that takes nothing has its connection closed after the stall
/// timeout, while a reader on another connection gets every product.
#[tokio::test]
async fn a_stalled_reader_has_its_connection_closed() {
    let mut c = plaintext(|s| {
        s.connections.stream_stall_timeout = Duration::from_millis(500);
        s.connections.age_grace = Duration::from_millis(200);
    })
    .await;
    let fam = family(&mut c.client, "Posters").await;
    for i in 0..40 {
        let mut p = new_product(&fam.family_id, &format!("Poster {i}"), 100);
        p.description = "€".repeat(2000); // 6,000 bytes: 240 KB in all
        let request = pb::CreateProductRequest { request_id: String::new(), product: Some(p) };
        c.client.create_product(request).await.unwrap();
    }
    let mut stalled = connect(c.server.grpc_addr).await;
    let response = stalled
        .call("/agora.catalog.v1.CatalogService/StreamProducts", &pb::StreamProductsRequest::default(), &[])
        .await;
    assert_eq!(response.status(), 200);
    // Its body is never read: the window (64 KiB) and the server's send
    // buffer fill, and the stream waits on its reader.
    let _unread = response;

    let mut reader = c.client.clone();
    let mut stream = reader.stream_products(pb::StreamProductsRequest::default()).await.unwrap().into_inner();
    let mut products = 0;
    while let Some(message) = stream.message().await.unwrap() {
        products += message.products.len();
    }
    assert_eq!(products, 40);

    assert!(
        stalled.closed_within(Duration::from_secs(10)).await,
        "a stalled reader's connection stayed open"
    );
    assert_eq!(closed(&c, "stalled").await, 1.0);
}

/// Readers that stop reading, more of them than the database pool has
/// connections, leave the pool to everyone else: each stream's reads run
/// to their end whether or not its reader takes the rows.
#[tokio::test]
async fn stalled_readers_do_not_hold_the_database_pool() {
    let c = plaintext(|s| s.db_max_connections = 2).await;
    let mut side = {
        use sqlx::Connection as _;
        sqlx::SqliteConnection::connect(c.db.url().expose()).await.unwrap()
    };
    let fam = {
        let mut client = c.client.clone();
        family(&mut client, "Bulk").await
    };
    sqlx::Executor::execute(
        &mut side,
        sqlx::AssertSqlSafe(format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000) \
             INSERT INTO products (product_id, display_name, description, family_id, currency_code, \
             amount_minor, state, revision, create_time, update_time) \
             SELECT 'prd_bulk_' || i, 'Product ' || i, 'A product', '{}', 'EUR', i, 'ACTIVE', 1, 0, 0 FROM n",
            fam.family_id
        )),
    )
    .await
    .unwrap();
    // Each stream's own window is small, the connection's large: every
    // stream is served until its own window is full, then waits.
    let mut builder = h2::client::Builder::new();
    builder.initial_connection_window_size(16 << 20);
    let mut stalled = connect_with(c.server.grpc_addr, &builder).await;
    let mut unread = Vec::new();
    for _ in 0..12 {
        let path = "/agora.catalog.v1.CatalogService/StreamProducts";
        unread.push(stalled.call(path, &pb::StreamProductsRequest::default(), &[]).await);
    }
    // Until every stream waits on its reader: the rows read stop growing
    // (two readings 100 ms apart agree), within a bound.
    let rows = "agora_catalog_stream_rows_read_total ";
    let mut last = -1.0;
    for _ in 0..100 {
        let now = metric(&c, rows).await;
        if now == last {
            break;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last > 0.0, "the streams read nothing");
    let mut client = c.client.clone();
    let mut request = tonic::Request::new(pb::ListProductsRequest::default());
    request.set_timeout(Duration::from_secs(5));
    client.list_products(request).await.expect("a call gets a connection of the pool");
    assert_eq!(agora_testing::health_status(&c.server.channel, "").await, Some(ServingStatus::Serving));
    drop(unread);
}

/// At shutdown a health watch ends with UNAVAILABLE, after NOT_SERVING,
/// and holds the process up for none of the shutdown bound.
#[tokio::test]
async fn at_shutdown_a_health_watch_ends_with_unavailable() {
    let c = start_with(TestDatabase::sqlite(), |s| s.shutdown_timeout = Duration::from_secs(30)).await;
    let mut client = HealthClient::new(c.server.channel.clone());
    let mut watch = client.watch(HealthCheckRequest::default()).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    let started = Instant::now();
    let Catalog { server, .. } = c;
    let stopping = tokio::spawn(server.stop());
    let mut statuses = Vec::new();
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), watch.message()).await {
            Ok(Ok(Some(message))) => statuses.push(message.status),
            Ok(Ok(None)) => break Code::Ok,
            Ok(Err(status)) => break status.code(),
            Err(_) => panic!("the watch was still open 10 s after shutdown began"),
        }
    };
    assert_eq!(end, Code::Unavailable);
    assert_eq!(statuses, [ServingStatus::NotServing as i32]);
    stopping.await.unwrap().expect("a clean stop");
    assert!(started.elapsed() < Duration::from_secs(10), "the stop took {:?}", started.elapsed());
}

/// An HTTP/1.1 connection made by hand (hyper's client), the protocol of
/// gRPC-Web clients that cannot do HTTP/2.
struct Http1 {
    send: hyper::client::conn::http1::SendRequest<http_body_util::Full<Bytes>>,
    driver: JoinHandle<Result<(), hyper::Error>>,
}

async fn http1(addr: SocketAddr) -> Http1 {
    let tcp = TcpStream::connect(addr).await.expect("the server accepts");
    let (send, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .expect("an HTTP/1.1 connection");
    Http1 { send, driver: tokio::spawn(connection) }
}

impl Http1 {
    /// One call of `content_type`: the answer's head, and its body read
    /// to the end.
    async fn post(
        &mut self,
        path: &str,
        content_type: &str,
        message: &impl prost::Message,
    ) -> (http::response::Parts, Bytes) {
        use http_body_util::BodyExt;
        self.send.ready().await.expect("the connection is open");
        let request = http::Request::post(path)
            .header("host", "catalog")
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(framed(message)))
            .expect("a valid request");
        let (head, body) = self.send.send_request(request).await.expect("an answer").into_parts();
        (head, body.collect().await.expect("the body").to_bytes())
    }

    /// Whether the server closed the connection within `bound`.
    async fn closed_within(self, bound: Duration) -> bool {
        let Http1 { send, driver } = self;
        let closed = tokio::time::timeout(bound, driver).await.is_ok();
        drop(send);
        closed
    }
}

/// The frames of a gRPC-Web body: (flags, payload); flags 0x80 marks the
/// trailers.
fn web_frames(mut body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while body.len() >= 5 {
        let length = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        frames.push((body[0], body[5..5 + length].to_vec()));
        body = &body[5 + length..];
    }
    assert!(body.is_empty(), "a truncated gRPC-Web frame");
    frames
}

/// gRPC-Web is served over HTTP/1.1, several calls on one connection, a
/// refusal among them; native gRPC, which needs HTTP/2's trailers, is
/// refused there.
#[tokio::test]
async fn grpc_web_is_served_over_http1_and_native_grpc_is_not() {
    use prost::Message as _;
    let c = plaintext(|_| {}).await;
    let mut web = http1(c.server.grpc_addr).await;
    for _ in 0..2 {
        let check = HealthCheckRequest::default();
        let (head, body) =
            web.post("/grpc.health.v1.Health/Check", "application/grpc-web+proto", &check).await;
        assert_eq!((head.status, head.version), (http::StatusCode::OK, http::Version::HTTP_11));
        assert_eq!(head.headers["content-type"], "application/grpc-web+proto");
        assert!(!head.headers.contains_key("connection"), "kept alive");
        let frames = web_frames(&body);
        assert_eq!(frames.len(), 2, "a message, then the trailers: {frames:?}");
        let answer = tonic_health::pb::HealthCheckResponse::decode(frames[0].1.as_slice()).unwrap();
        assert_eq!(answer.status, ServingStatus::Serving as i32);
        assert_eq!(frames[1].0, 0x80);
        let trailers = String::from_utf8(frames[1].1.clone()).unwrap();
        assert!(trailers.contains("grpc-status:0"), "{trailers}");
    }
    // A refusal (no such method) leaves the connection usable: the request
    // was read whole before it was answered.
    let (head, body) = web
        .post("/grpc.health.v1.Health/Nothing", "application/grpc-web", &HealthCheckRequest::default())
        .await;
    assert_eq!(head.headers["grpc-status"], "12", "{head:?} {body:?}");
    let (head, _) = web
        .post("/grpc.health.v1.Health/Check", "application/grpc-web", &HealthCheckRequest::default())
        .await;
    assert_eq!(head.status, http::StatusCode::OK);

    let (head, _) =
        web.post("/grpc.health.v1.Health/Check", "application/grpc", &HealthCheckRequest::default()).await;
    assert_eq!(head.status, http::StatusCode::BAD_REQUEST, "native gRPC over HTTP/1.1");
}

/// An HTTP/1.1 request over the bound of one message is refused with
/// RESOURCE_EXHAUSTED, before it reaches the service.
#[tokio::test]
async fn an_http1_request_over_one_message_is_refused() {
    let c = plaintext(|s| s.max_message_bytes = 64).await;
    let mut web = http1(c.server.grpc_addr).await;
    let large = HealthCheckRequest { service: "x".repeat(200) };
    let (head, _) = web.post("/grpc.health.v1.Health/Check", "application/grpc-web", &large).await;
    assert_eq!(head.headers["grpc-status"], "8", "{head:?}");
    assert!(head.headers["grpc-message"].to_str().unwrap().contains("at%20most%2092%20bytes"), "{head:?}");
}

/// HTTP/1.1 connections meet the limits of HTTP/2 ones: one that sends
/// half a request head is closed after the handshake timeout, an idle one
/// after the idle timeout.
#[tokio::test]
async fn http1_connections_have_the_handshake_and_idle_timeouts() {
    use tokio::io::AsyncWriteExt;
    let c = plaintext(|s| {
        s.connections.handshake_timeout = Duration::from_millis(300);
        s.connections.idle_timeout = Duration::from_millis(400);
    })
    .await;
    let mut silent = TcpStream::connect(c.server.grpc_addr).await.unwrap();
    silent.write_all(b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: catalog\r\n").await.unwrap();
    assert!(closed_within(&mut silent, Duration::from_secs(10)).await, "half a head, still open after 10 s");
    assert_eq!(closed(&c, "handshake").await, 1.0);

    let mut idle = http1(c.server.grpc_addr).await;
    let (head, _) = idle
        .post("/grpc.health.v1.Health/Check", "application/grpc-web", &HealthCheckRequest::default())
        .await;
    assert_eq!(head.status, http::StatusCode::OK);
    assert!(idle.closed_within(Duration::from_secs(10)).await, "idle and still open after 10 s");
    assert_eq!(closed(&c, "idle").await, 1.0);
}
