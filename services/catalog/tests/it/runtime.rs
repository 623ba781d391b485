//! The runtime contract, seen from a client of the catalog: health that
//! tells the truth, deadlines, load shedding, reflection, request ids,
//! metrics, configuration errors and graceful shutdown on SIGTERM.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use crate::common::*;
use agora_testing::{health_status, http_get, wait_for_health, wait_until};
use sqlx::{Connection as _, Executor as _};
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const CATALOG: &str = "agora.catalog.v1.CatalogService";

/// Holds SQLite's write lock from outside the server, so every write the
/// server attempts waits: a slow path on demand.
async fn hold_write_lock(db: &TestDatabase) -> sqlx::SqliteConnection {
    let mut conn =
        sqlx::SqliteConnection::connect(db.url().expose()).await.expect("opening the test database");
    conn.execute("BEGIN IMMEDIATE").await.expect("taking the write lock");
    conn
}

/// Health is NOT_SERVING until the database answers and the migrations ran,
/// and application calls wait for that with UNAVAILABLE.
#[tokio::test]
async fn health_turns_serving_only_once_the_database_is_ready() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    db.drop_now().await;
    let app = agora_catalog::build(agora_testing::settings("catalog", &db)).await.unwrap();
    let server = TestServer::start_unready(app).await;
    let ch = server.channel.clone();
    for service in ["", CATALOG] {
        wait_for_health(&ch, service, ServingStatus::NotServing, Duration::from_secs(10)).await;
    }
    let mut client = pb::catalog_service_client::CatalogServiceClient::new(ch.clone());
    let err = client.get_family(pb::GetFamilyRequest { family_id: "fam_x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);

    db.create_now().await;
    for service in ["", CATALOG] {
        wait_for_health(&ch, service, ServingStatus::Serving, Duration::from_secs(20)).await;
    }
    family(&mut client, "Screens").await;
    server.stop().await.unwrap();
}

/// When the database goes away, health says so.
#[tokio::test]
async fn health_turns_not_serving_when_the_database_goes_away() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    let c = start(db).await;
    c.db.drop_now().await;
    wait_for_health(&c.server.channel, "", ServingStatus::NotServing, Duration::from_secs(10)).await;
    wait_for_health(&c.server.channel, CATALOG, ServingStatus::NotServing, Duration::from_secs(10)).await;
}

/// Unknown services are unknown to health, as the protocol says.
#[tokio::test]
async fn health_answers_not_found_for_an_unknown_service() {
    let c = start(TestDatabase::sqlite()).await;
    let mut health = HealthClient::new(c.server.channel.clone());
    let err = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

/// A deadline the server cannot meet ends in DEADLINE_EXCEEDED, not CANCELLED.
#[tokio::test]
async fn a_call_past_its_deadline_gets_deadline_exceeded() {
    let mut c = start(TestDatabase::sqlite()).await;
    let lock = hold_write_lock(&c.db).await;
    let (raw, origin) = agora_testing::raw_client(&c.server);
    let mut raw = pb::catalog_service_client::CatalogServiceClient::with_origin(raw, origin);
    let mut request = tonic::Request::new(pb::CreateFamilyRequest {
        family: Some(pb::Family { display_name: "Slow".into(), ..Default::default() }),
    });
    request.set_timeout(Duration::from_millis(1));
    let err = raw.create_family(request).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    drop(lock);
    // The server still answers. As gRPC's DEADLINE_EXCEEDED allows, the
    // abandoned write may have landed once the lock was gone (the SQLite
    // driver finishes a statement it already started), but whole or not
    // at all.
    let families = c.client.list_families(pb::ListFamiliesRequest::default()).await.unwrap().into_inner();
    let names: Vec<_> = families.families.iter().map(|f| f.display_name.as_str()).collect();
    assert!(names.is_empty() || names == ["Slow"], "{names:?}");
}

/// Over the concurrency limit, calls fail fast with RESOURCE_EXHAUSTED while
/// health keeps answering; when the load is gone, calls are admitted again.
#[tokio::test]
async fn over_the_concurrency_limit_calls_are_shed_and_health_still_answers() {
    let c = start_with(TestDatabase::sqlite(), |s| s.concurrency_limit = 2).await;
    let mut lock = hold_write_lock(&c.db).await;
    // Two updates fill the limit, each waiting for the write lock.
    let mut blocked = Vec::new();
    for _ in 0..2 {
        let mut client = c.client.clone();
        blocked.push(tokio::spawn(async move {
            client
                .update_product(pb::UpdateProductRequest {
                    product: Some(pb::Product {
                        product_id: "prd_x".into(),
                        display_name: "X".into(),
                        ..Default::default()
                    }),
                    update_mask: None,
                })
                .await
        }));
    }
    let admin = c.server.admin_addr;
    let both_in_flight = updates_in_flight(admin, 2).await;
    assert!(both_in_flight, "the two updates were not admitted");

    let mut probe = c.client.clone();
    let err = probe.get_family(pb::GetFamilyRequest { family_id: "fam_x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // Shed, not oversized: RetryInfo says when to try again.
    let retry = tonic_types::StatusExt::get_details_retry_info(&err).expect("a shed call carries RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO), "{retry:?}");
    let metrics = http_get(admin, "/metrics").await;
    let shed = metrics.lines().find_map(|l| l.strip_prefix("agora_grpc_server_shed_total "));
    assert!(
        shed.and_then(|v| v.parse::<f64>().ok()).is_some_and(|n| n >= 1.0),
        "the refusal is counted: {shed:?}"
    );
    assert_eq!(health_status(&c.server.channel, "").await, Some(ServingStatus::Serving));

    lock.execute("ROLLBACK").await.unwrap();
    for call in blocked {
        let err = call.await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "the admitted calls complete once the lock is gone");
    }
    let err = probe.get_family(pb::GetFamilyRequest { family_id: "fam_x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "admitted again");
}

/// Over the limit a call waits for a place (in order, at most
/// AGORA_ADMISSION_WAIT_MS) and is served when one frees up; beyond
/// AGORA_ADMISSION_QUEUE calls waiting, one more is refused at once.
#[tokio::test]
async fn a_call_over_the_limit_waits_briefly_for_a_place() {
    let c = start_with(TestDatabase::sqlite(), |s| {
        s.concurrency_limit = 1;
        s.admission_wait = Duration::from_secs(30);
        s.admission_queue = 1;
    })
    .await;
    let mut lock = hold_write_lock(&c.db).await;
    // One update takes the only place, waiting for the write lock.
    let blocked = {
        let mut client = c.client.clone();
        tokio::spawn(async move {
            let product =
                pb::Product { product_id: "prd_x".into(), display_name: "X".into(), ..Default::default() };
            client
                .update_product(pb::UpdateProductRequest { product: Some(product), update_mask: None })
                .await
        })
    };
    let admin = c.server.admin_addr;
    let gauge = |name: &'static str, value: &'static str| async move {
        http_get(admin, "/metrics").await.lines().any(|l| l.starts_with(name) && l.ends_with(value))
    };
    let in_flight = updates_in_flight(admin, 1).await;
    assert!(in_flight, "the update was not admitted");
    // The next call waits for the place.
    let waiting = {
        let mut client = c.client.clone();
        tokio::spawn(
            async move { client.get_family(pb::GetFamilyRequest { family_id: "fam_x".into() }).await },
        )
    };
    let queued =
        wait_until(Duration::from_secs(4), || gauge("agora_grpc_server_admission_waiting ", " 1")).await;
    assert!(queued, "the call did not wait for a place");
    // One more finds the wait full: refused at once.
    let mut probe = c.client.clone();
    let err = probe.get_family(pb::GetFamilyRequest { family_id: "fam_y".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // The place frees up: the waiting call is served.
    lock.execute("ROLLBACK").await.unwrap();
    assert_eq!(blocked.await.unwrap().unwrap_err().code(), Code::NotFound);
    let served = waiting.await.unwrap().unwrap_err();
    assert_eq!(served.code(), Code::NotFound, "the waiting call was admitted: {served:?}");
}

/// `grpcurl list` works without proto files: reflection names the catalog,
/// health and reflection itself, and describes the catalog's methods.
#[tokio::test]
async fn reflection_lists_the_services_of_this_server() {
    let c = start(TestDatabase::sqlite()).await;
    let (names, files) = agora_testing::reflect(&c.server.channel, &format!("{CATALOG}.CreateProduct")).await;
    assert_eq!(
        names,
        [
            CATALOG,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"
        ]
    );
    assert!(files > 0, "the service's methods are described");
}

/// The caller's x-request-id comes back; without one, the server makes one,
/// a new one for every call (on one connection, so HTTP/2's header table
/// is shared between them).
#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let mut c = start(TestDatabase::sqlite()).await;
    let mut request = tonic::Request::new(pb::ListFamiliesRequest::default());
    request.metadata_mut().insert("x-request-id", "test-123".parse().unwrap());
    let resp = c.client.list_families(request).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "test-123");
    let mut made = Vec::new();
    for _ in 0..3 {
        let resp = c.client.list_families(pb::ListFamiliesRequest::default()).await.unwrap();
        let id = resp.metadata().get("x-request-id").unwrap().to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID: {id}");
        assert!(!made.contains(&id), "{id} was made twice");
        made.push(id);
    }
}

/// /metrics counts calls by method and gRPC code.
#[tokio::test]
async fn metrics_count_calls_by_code() {
    let mut c = start(TestDatabase::sqlite()).await;
    c.client.get_product(pb::GetProductRequest { product_id: "prd_none".into() }).await.unwrap_err();
    let text = http_get(c.server.admin_addr, "/metrics").await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains(r#"grpc_server_handled_total{grpc_service="agora.catalog.v1.CatalogService",grpc_method="GetProduct",grpc_code="NOT_FOUND"}"#),
        "{text}"
    );
    assert!(text.contains("grpc_server_handling_seconds_bucket"));
    assert!(text.contains("agora_health_serving"));
}

/// The service binary, started on free ports; its first stdout line names them.
struct Process {
    child: std::process::Child,
    grpc: std::net::SocketAddr,
}

fn spawn_binary(db: &TestDatabase, extra: &[(&str, &str)]) -> Process {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agora-catalog"));
    cmd.env("AGORA_GRPC_ADDR", "127.0.0.1:0")
        .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
        .env("AGORA_DATABASE_URL", db.url().expose())
        .env("AGORA_LOG", "warn")
        .envs(agora_testing::pki().env("catalog"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("starting agora-catalog");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let grpc = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("grpc="))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .parse()
        .unwrap();
    Process { child, grpc }
}

async fn wait_for_exit(child: &mut std::process::Child, bound: Duration) -> std::process::ExitStatus {
    let mut status = None;
    wait_until(bound, || {
        status = child.try_wait().unwrap();
        std::future::ready(status.is_some())
    })
    .await;
    status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("the process did not exit within {bound:?}")
    })
}

fn sigterm(child: &std::process::Child) {
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM failed");
}

/// SIGTERM: NOT_SERVING at once, the drain delay, then a clean exit, even
/// with a stream (a health Watch) still open.
#[tokio::test]
async fn sigterm_drains_then_exits_cleanly() {
    let db = TestDatabase::sqlite();
    let mut p = spawn_binary(&db, &[("AGORA_DRAIN_DELAY_MS", "2000"), ("AGORA_SHUTDOWN_TIMEOUT_MS", "500")]);
    let ch = agora_testing::channel_as(p.grpc, &agora_testing::Who::Staff);
    wait_for_health(&ch, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    // An endless stream: graceful shutdown alone would wait for it forever.
    let mut watch = HealthClient::new(ch.clone())
        .watch(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    sigterm(&p.child);
    wait_for_health(&ch, CATALOG, ServingStatus::NotServing, Duration::from_secs(2)).await;
    assert_eq!(watch.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
    let status = wait_for_exit(&mut p.child, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

/// At SIGTERM an open change-feed stream ends with UNAVAILABLE, not OK: its
/// consumer reconnects, to another replica, instead of taking the feed for
/// finished; and the process still exits cleanly.
#[tokio::test]
async fn sigterm_ends_a_feed_stream_with_unavailable() {
    let db = TestDatabase::sqlite();
    let mut p = spawn_binary(&db, &[("AGORA_DRAIN_DELAY_MS", "0"), ("AGORA_SHUTDOWN_TIMEOUT_MS", "2000")]);
    let ch = agora_testing::channel_as(p.grpc, &agora_testing::Who::Service("offers".into()));
    wait_for_health(&ch, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut feed = pb::catalog_service_client::CatalogServiceClient::new(ch.clone())
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    sigterm(&p.child);
    let end =
        tokio::time::timeout(Duration::from_secs(10), feed.next()).await.expect("an answer within 10 s");
    let err = end.expect("a status, not a silent end").expect_err("no event: the feed is empty");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    let status = wait_for_exit(&mut p.child, Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
}

/// A bad variable stops the process at start with a message naming it.
#[tokio::test]
async fn bad_configuration_exits_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_agora-catalog"))
        .env("AGORA_CONCURRENCY_LIMIT", "0")
        .env("AGORA_GRPC_ADDR", "not-an-address")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGORA_CONCURRENCY_LIMIT") && stderr.contains("AGORA_GRPC_ADDR"), "{stderr}");
}

/// Every acknowledged write survives a crash of the process with the
/// default durability (`AGORA_SQLITE_SYNCHRONOUS=normal`): eight writers
/// create products until the process is killed (SIGKILL) under them; after
/// a restart on the same file, each product whose creation was answered OK
/// is there.
#[tokio::test]
async fn acknowledged_writes_survive_a_sigkill() {
    let db = TestDatabase::sqlite();
    let mut p = spawn_binary(&db, &[]);
    let ch = agora_testing::channel_as(p.grpc, &agora_testing::Who::Staff);
    wait_for_health(&ch, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut client = pb::catalog_service_client::CatalogServiceClient::new(ch.clone());
    let family = family(&mut client, "Lamps").await.family_id;

    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (mut client, family, acknowledged) = (client.clone(), family.clone(), acknowledged.clone());
            tokio::spawn(async move {
                for i in 0..10_000i64 {
                    let product = new_product(&family, &format!("Lamp {w}-{i}"), 1_000 + i);
                    let request =
                        pb::CreateProductRequest { request_id: String::new(), product: Some(product) };
                    match client.create_product(request).await {
                        Ok(answer) => {
                            let id = answer.into_inner().product.unwrap().product_id;
                            acknowledged.lock().unwrap().push(id);
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let busy =
        wait_until(Duration::from_secs(30), || std::future::ready(acknowledged.lock().unwrap().len() >= 300))
            .await;
    assert!(busy, "the writers did not get going");
    p.child.kill().expect("SIGKILL");
    p.child.wait().unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();

    let mut p = spawn_binary(&db, &[]);
    let ch = agora_testing::channel_as(p.grpc, &agora_testing::Who::Staff);
    wait_for_health(&ch, "", ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut client = pb::catalog_service_client::CatalogServiceClient::new(ch);
    for id in &acknowledged {
        let got = client.get_product(pb::GetProductRequest { product_id: id.clone() }).await;
        assert!(got.is_ok(), "{id}, acknowledged before the kill, is gone: {got:?}");
    }
    let _ = p.child.kill();
    let _ = p.child.wait();
}

/// Waits (at most 4 s) until `count` UpdateProduct calls are in flight, as
/// the server's metrics say.
async fn updates_in_flight(admin: std::net::SocketAddr, count: u32) -> bool {
    let value = format!(" {count}");
    wait_until(Duration::from_secs(4), || {
        let value = value.clone();
        async move {
            let metrics = http_get(admin, "/metrics").await;
            metrics.lines().any(|l| {
                l.starts_with("grpc_server_in_flight{")
                    && l.contains(r#"grpc_method="UpdateProduct""#)
                    && l.ends_with(&value)
            })
        }
    })
    .await
}
