//! Offers while its own database is out of reach, the fault made for
//! real: PostgreSQL reached through a TCP proxy that refuses and resets
//! its connections. Once the database is known to be down, the core query
//! answers its fallback set at once, whatever the caller's deadline; and
//! the change feeds follow again as soon as the database is back, not
//! after their backoff.

use std::time::{Duration, Instant};

use crate::common::*;
use agora_platform::Settings;
use agora_testing::{
    faults::{Fault, FaultProxy},
    wait_for_health, wait_until,
};
use tonic_health::pb::health_check_response::ServingStatus;

/// Offers on a new PostgreSQL database reached through a fault proxy,
/// with a minute's acquire timeout (a call that waited for a connection
/// would wait past every deadline here); None without PostgreSQL.
async fn behind_a_proxy(tweak: impl FnOnce(&mut Settings)) -> Option<(System, FaultProxy)> {
    let db = TestDatabase::postgres().await?;
    let proxy = FaultProxy::start(db.server_addr().expect("a PostgreSQL server")).await;
    let url = db.url_via(proxy.addr);
    let s = start_with(db, |settings, _| {
        settings.database_url = url;
        settings.db_acquire_timeout = Duration::from_secs(60);
        tweak(settings);
    })
    .await;
    Some((s, proxy))
}

#[tokio::test]
async fn while_its_database_is_known_down_available_offers_answers_the_fallback_at_once() {
    let Some((mut s, proxy)) = behind_a_proxy(|_| {}).await else { return };
    let admin = s.offers_server.admin_channel();
    proxy.set(Fault::Refuse);
    wait_for_health(&admin, "", ServingStatus::NotServing, BOUND).await;

    let (raw, origin) = agora_testing::raw_client(&s.offers_server);
    let mut raw = pb::offer_service_client::OfferServiceClient::with_origin(raw, origin);
    for timeout in [Duration::from_millis(200), Duration::from_secs(1), Duration::from_secs(2)] {
        let mut request = tonic::Request::new(pb::ListAvailableOffersRequest::default());
        request.set_timeout(timeout);
        let started = Instant::now();
        let answer = raw.list_available_offers(request).await.expect("the fallback, not an error");
        let took = started.elapsed();
        let ids: Vec<_> = answer.get_ref().offers.iter().map(|o| o.offer_id.clone()).collect();
        assert!(answer.get_ref().fallback, "not the fallback set: {ids:?}");
        assert_eq!(ids, ["fallback-1"]);
        eprintln!("with a deadline of {timeout:?}: the fallback after {took:?}");
    }
    let metrics = agora_testing::http_get(s.offers_server.admin_addr, "/metrics").await;
    let refused = metrics.lines().find_map(|l| l.strip_prefix("agora_db_fast_failures_total "));
    assert!(refused.is_some_and(|n| n.parse::<f64>().unwrap() >= 3.0), "not refused at once: {refused:?}");

    proxy.set(Fault::None);
    wait_for_health(&admin, "", ServingStatus::Serving, BOUND).await;
    let body = s.offers.list_available_offers(pb::ListAvailableOffersRequest::default()).await.unwrap();
    assert!(!body.into_inner().fallback, "the database is back");
}

/// A product created while offers' database was down reaches offers once
/// the database is back: the consumer, which failed to apply it, is woken
/// by the database's return instead of sleeping out its backoff.
#[tokio::test]
async fn the_feeds_follow_again_once_its_database_is_back() {
    let Some((mut s, proxy)) = behind_a_proxy(|_| {}).await else { return };
    let admin = s.offers_server.admin_channel();
    let offers_db = s.offers_db.open();
    let known = |product: String| {
        let offers_db = offers_db.clone();
        async move {
            let sql = "SELECT on_sale FROM catalog_products WHERE product_id = $1";
            matches!(offers_db.query(sql).bind(product).fetch_optional().await, Ok(Some(_)))
        }
    };
    let before = s.product().await;
    assert!(wait_until(BOUND, || known(before.clone())).await, "the feed never brought a product");

    proxy.set(Fault::Refuse);
    wait_for_health(&admin, "", ServingStatus::NotServing, BOUND).await;
    let during = s.product().await;
    proxy.set(Fault::None);
    let back = Instant::now();
    wait_for_health(&admin, "", ServingStatus::Serving, BOUND).await;
    assert!(wait_until(BOUND, || known(during.clone())).await, "the feed did not follow again");
    eprintln!("the feed followed again {:?} after the database came back", back.elapsed());
}

const BOUND: Duration = Duration::from_secs(10);
