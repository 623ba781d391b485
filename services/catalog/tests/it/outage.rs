//! The catalog while its database is out of reach, with the faults made
//! for real: PostgreSQL reached through a TCP proxy that refuses and
//! resets its connections. Once the database is known to be down, calls
//! fail at once with UNAVAILABLE naming it, whatever their deadline; no
//! wait for a connection outlasts the caller's deadline, so a caller sees
//! UNAVAILABLE rather than DEADLINE_EXCEEDED; and calls are served again
//! as soon as the database answers.

use std::time::{Duration, Instant};

use crate::common::*;
use agora_testing::{
    faults::{Fault, FaultProxy},
    wait_for_health, wait_until,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The catalog on a new PostgreSQL database reached through a fault
/// proxy, its settings changed by `tweak`; None where PostgreSQL is not
/// reachable (and not required).
async fn behind_a_proxy(tweak: impl FnOnce(&mut agora_platform::Settings)) -> Option<(Catalog, FaultProxy)> {
    let db = TestDatabase::postgres().await?;
    let proxy = FaultProxy::start(db.server_addr().expect("a PostgreSQL server")).await;
    let url = db.url_via(proxy.addr);
    let c = start_with(db, |settings| {
        settings.database_url = url;
        tweak(settings);
    })
    .await;
    Some((c, proxy))
}

/// A ListProducts with `timeout`, sent by a client that reports what the
/// server answered (a tonic channel would report CANCELLED on its own at
/// the deadline).
async fn list_products_within(c: &Catalog, timeout: Duration) -> (tonic::Status, Duration) {
    let (raw, origin) = agora_testing::raw_client(&c.server);
    let mut raw = pb::catalog_service_client::CatalogServiceClient::with_origin(raw, origin);
    let mut request = tonic::Request::new(pb::ListProductsRequest::default());
    request.set_timeout(timeout);
    let started = Instant::now();
    let answer = raw.list_products(request).await;
    (answer.expect_err("the database is down"), started.elapsed())
}

/// With the database known to be down (health NOT_SERVING), calls are
/// refused at once by the breaker, not after a wait for a connection; and
/// the catalog serves again once the database is back.
#[tokio::test]
async fn while_the_database_is_known_down_calls_fail_at_once() {
    // A minute's acquire timeout: a call that waited for a connection
    // would wait past every deadline below.
    let Some((mut c, proxy)) = behind_a_proxy(|s| s.db_acquire_timeout = Duration::from_secs(60)).await
    else {
        return;
    };
    family(&mut c.client, "Lamps").await;
    proxy.set(Fault::Refuse);
    wait_for_health(&c.server.admin_channel(), "", ServingStatus::NotServing, BOUND).await;
    let refused_before = metric(&c, "agora_db_fast_failures_total ").await;
    assert_eq!(metric(&c, "agora_db_breaker_open ").await, 1.0);

    for timeout in [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(2)] {
        let (status, took) = list_products_within(&c, timeout).await;
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("database"), "the database is named: {status:?}");
        eprintln!("with a deadline of {timeout:?}: UNAVAILABLE after {took:?}");
    }
    let refused = metric(&c, "agora_db_fast_failures_total ").await - refused_before;
    assert!(refused >= 3.0, "the calls were not refused by the breaker ({refused})");

    proxy.set(Fault::None);
    wait_for_health(&c.server.admin_channel(), "", ServingStatus::Serving, BOUND).await;
    assert_eq!(metric(&c, "agora_db_breaker_open ").await, 0.0);
    let families = c.client.list_families(pb::ListFamiliesRequest::default()).await.expect("served again");
    assert_eq!(families.into_inner().families.len(), 1);
}

/// Before the breaker opens (its probe asks once a minute here), a call
/// that must wait for a connection waits no longer than its own deadline
/// allows, less a margin: UNAVAILABLE, not DEADLINE_EXCEEDED. The pool has
/// one connection, held by a call whose database went silent (a black
/// hole), so the next call finds none free and waits; the acquire timeout
/// alone would let it wait a minute.
#[tokio::test]
async fn a_wait_for_a_connection_ends_before_the_callers_deadline() {
    let Some((mut c, proxy)) = behind_a_proxy(|s| {
        s.db_max_connections = 1;
        s.db_acquire_timeout = Duration::from_secs(60);
        s.db_probe_interval = Duration::from_secs(60);
    })
    .await
    else {
        return;
    };
    family(&mut c.client, "Lamps").await;
    proxy.set(Fault::BlackHole);
    let stuck = {
        let mut client = c.client.clone();
        tokio::spawn(async move {
            let mut request = tonic::Request::new(pb::ListProductsRequest::default());
            request.set_timeout(Duration::from_secs(3));
            client.list_products(request).await
        })
    };
    // Until the stuck call holds the pool's one connection.
    let in_flight = || async {
        let text = agora_testing::http_get(c.server.admin_addr, "/metrics").await;
        text.lines()
            .filter(|l| l.starts_with("grpc_server_in_flight{") && l.contains("grpc_method=\"ListProducts\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let held = wait_until(BOUND, || async { in_flight().await >= 1.0 }).await;
    assert!(held, "the first call never started");
    let (status, took) = list_products_within(&c, Duration::from_millis(300)).await;
    assert_eq!(status.code(), Code::Unavailable, "after {took:?}: {status:?}");
    assert!(status.message().contains("no connection within"), "{status:?}");
    proxy.set(Fault::None);
    let _ = stuck.await;
    let back = wait_until(BOUND, || {
        let mut client = c.client.clone();
        async move { client.list_families(pb::ListFamiliesRequest::default()).await.is_ok() }
    })
    .await;
    assert!(back, "the catalog did not serve again once the database was back");
}

pub const BOUND: Duration = Duration::from_secs(10);
