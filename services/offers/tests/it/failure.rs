//! Built for failure: the offers service when the catalog is down, flaky or
//! slow, and when its own database breaks.

use std::time::{Duration, Instant};

use crate::common::*;
use agora_testing::{health_status, http_get, proxy_mode, wait_until};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// With the catalog stopped, a product offers already knows still gets
/// offers; one it has not heard of fails with UNAVAILABLE naming the
/// catalog, in well under 50 ms once the breaker opened; reads and health
/// are untouched. A restarted catalog is used again without restarting
/// offers.
#[tokio::test]
async fn with_the_catalog_stopped_creation_fails_fast_and_recovers_after_a_restart() {
    let mut s = start_unfed(TestDatabase::sqlite()).await;
    let product = s.product().await;
    let existing =
        s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap().into_inner().offer.unwrap();
    let catalog = s.catalog_server.take().unwrap();
    let catalog_addr = catalog.grpc_addr;
    catalog.stop().await.unwrap();

    // Kept from the catalog's answer to the first offer.
    s.offers.create_offer(create(offer(&product, "", 20))).await.expect("a known product needs no catalog");
    let unheard = "prd_unheard";
    let err = s.offers.create_offer(create(offer(unheard, "", 10))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("catalog"), "{err:?}");
    let offers = s.offers.clone();
    let opened = wait_until(BOUND, || {
        let mut offers = offers.clone();
        async move {
            let err = offers.create_offer(create(offer(unheard, "", 10))).await.unwrap_err();
            err.message().contains("circuit open")
        }
    })
    .await;
    assert!(opened, "the breaker never opened");
    let mut offers = offers.clone();
    let started = Instant::now();
    let err = offers.create_offer(create(offer(unheard, "", 10))).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(took < Duration::from_millis(50), "failing fast took {took:?}");

    // Reads do not need the catalog, and offers itself is healthy.
    offers
        .get_offer(pb::GetOfferRequest { offer_id: existing.offer_id.clone() })
        .await
        .expect("reads still work");
    offers
        .list_available_offers(pb::ListAvailableOffersRequest::default())
        .await
        .expect("the core query works");
    assert_eq!(health_status(&s.offers_server.channel, "").await, Some(ServingStatus::Serving));

    let mut settings = agora_testing::settings("catalog", &s.catalog_db);
    settings.grpc_addr = catalog_addr;
    let _catalog = TestServer::start(agora_catalog::build(settings).await.unwrap()).await;
    // The restarted catalog answers again: that product does not exist.
    let recovered = wait_until(BOUND, || {
        let mut offers = offers.clone();
        async move {
            let err = offers.create_offer(create(offer(unheard, "", 10))).await.unwrap_err();
            err.code() == Code::NotFound
        }
    })
    .await;
    assert!(recovered, "offers did not use the restarted catalog");
}

agora_testing::on_both_backends!(with_its_database_broken_available_offers_answers_the_fallback_set);

/// When the offers database fails, the core query answers with the
/// configured default set, and says so in the body, a trailer and a metric.
async fn with_its_database_broken_available_offers_answers_the_fallback_set(db: TestDatabase) {
    let mut s = start(db).await;
    s.offers_db.execute("DROP TABLE offers").await;

    let response = s
        .offers
        .list_available_offers(pb::ListAvailableOffersRequest::default())
        .await
        .expect("a fallback answer");
    assert_eq!(response.metadata().get("agora-fallback").map(|v| v.to_str().unwrap()), Some("true"));
    let body = response.into_inner();
    assert!(body.fallback);
    let ids: Vec<_> = body.offers.iter().map(|o| o.offer_id.as_str()).collect();
    assert_eq!(ids, ["fallback-1"]);

    // Filtered by product like a real answer.
    let other = pb::ListAvailableOffersRequest { customer_id: String::new(), product_id: "prd_other".into() };
    let body = s.offers.list_available_offers(other).await.unwrap().into_inner();
    assert!(body.fallback && body.offers.is_empty());

    let metrics = http_get(s.offers_server.admin_addr, "/metrics").await;
    assert!(metrics.lines().any(|l| l.starts_with("agora_offers_fallback_total ")), "{metrics}");
}

/// A catalog that fails every other call with UNAVAILABLE goes unnoticed:
/// each failure is retried once.
#[tokio::test]
async fn retries_hide_a_flaky_catalog() {
    let mut s = start_unfed(TestDatabase::sqlite()).await;
    let mut products = Vec::new();
    for _ in 0..10 {
        products.push(s.product().await);
    }
    s.catalog_proxy.set_mode(proxy_mode::FAIL_EVERY_OTHER);
    let before = s.catalog_proxy.calls_of("GetProduct");
    for product in &products {
        s.offers.create_offer(create(offer(product, "", 10))).await.expect("retried into success");
    }
    assert_eq!(
        s.catalog_proxy.calls_of("GetProduct") - before,
        20,
        "one failure and one success per creation"
    );
}

/// During an outage the retry budget caps the extra attempts far below
/// "every call three times".
#[tokio::test]
async fn the_retry_budget_caps_the_attempts_of_an_outage() {
    let mut s =
        start_with(TestDatabase::sqlite(), |_, offers| offers.upstreams.catalog.breaker_failures = 100_000)
            .await;
    s.catalog_proxy.set_mode(proxy_mode::FAIL_ALL);
    let calls = 300;
    for _ in 0..calls {
        let err = s.offers.create_offer(create(offer("prd_any", "", 10))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    let attempts = s.catalog_proxy.calls_of("GetProduct");
    let ceiling = calls + 50 + calls / 5 + 5;
    assert!(
        attempts > calls && attempts <= ceiling,
        "{attempts} attempts for {calls} calls (ceiling {ceiling})"
    );
}

/// The original caller's deadline reaches the catalog as its grpc-timeout.
#[tokio::test]
async fn the_callers_deadline_reaches_the_catalog() {
    let mut s = start_unfed(TestDatabase::sqlite()).await;
    let product = s.product().await;
    let mut request = tonic::Request::new(create(offer(&product, "", 10)));
    request.set_timeout(Duration::from_millis(800));
    s.offers.create_offer(request).await.unwrap();
    let seen = *s.catalog_proxy.timeouts().last().expect("the catalog got a grpc-timeout");
    assert!(seen <= Duration::from_millis(800) && seen > Duration::ZERO, "{seen:?}");
}

/// A catalog that answers GetProduct OK but without the product breaks its
/// contract: the call is INTERNAL, never a guess at what the catalog meant,
/// and nothing is created. Shopping answers the same (its own test).
#[tokio::test]
async fn a_catalog_answer_without_its_product_is_an_internal_error() {
    let mut s = start_unfed(TestDatabase::sqlite()).await;
    let product = s.product().await;
    s.catalog_proxy.answer_empty("GetProduct");
    let err = s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(err.message(), "internal error", "no detail leaks");
    assert!(s.offers_of(&product, pb::OfferState::Unspecified).await.is_empty(), "nothing was created");
}
