//! ListAvailableOffers' answers kept in memory (`agora_offers::cache`):
//! never past the moment an offer in them ends or a waiting one starts,
//! dropped by every change of offers (at once on the replica that made it,
//! soon on the others), and really kept meanwhile.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::*;
use agora_testing::{TestServer, http_get, wait_until};
use pb::offer_service_client::OfferServiceClient;

agora_testing::on_both_backends!(
    an_answer_holds_until_an_offer_starts_or_ends_and_no_longer,
    every_change_of_offers_drops_the_answers_at_once,
    another_replicas_write_reaches_the_answers_soon,
);

async fn available(client: &mut OfferServiceClient<agora_testing::Channel>, product: &str) -> Vec<String> {
    let request = pb::ListAvailableOffersRequest { customer_id: String::new(), product_id: product.into() };
    let answer = client.list_available_offers(request).await.expect("an answer").into_inner();
    assert!(!answer.fallback);
    answer.offers.into_iter().map(|o| o.offer_id).collect()
}

async fn hits(s: &System) -> f64 {
    let text = http_get(s.offers_server.admin_addr, "/metrics").await;
    let line = text.lines().find(|l| l.starts_with("agora_offers_cache_reads_total{outcome=\"hit\"}"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(0.0)
}

/// An offer running from `start` to `end` (seconds from now) for everyone.
fn running(product: &str, start: i64, end: i64) -> pb::CreateOfferRequest {
    let mut o = offer(product, "", 10);
    o.start_time = Some(in_seconds(start));
    o.end_time = Some(in_seconds(end));
    create(o)
}

/// Waits until the wall clock passes `at` (a timestamp).
async fn until_past(at: &prost_types::Timestamp) {
    let at = Duration::new(at.seconds as u64, at.nanos as u32);
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        if now > at {
            return;
        }
        tokio::time::sleep(at - now).await;
    }
}

/// Kept answers are really given (the hit counter), and the first call
/// after an offer starts, or one ends, answers with it, or without it.
async fn an_answer_holds_until_an_offer_starts_or_ends_and_no_longer(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let lasting =
        s.offers.create_offer(running(&product, -60, 3600)).await.unwrap().into_inner().offer.unwrap();
    let ending = s.offers.create_offer(running(&product, -60, 3)).await.unwrap().into_inner().offer.unwrap();
    let starting =
        s.offers.create_offer(running(&product, 2, 3600)).await.unwrap().into_inner().offer.unwrap();

    let first = available(&mut s.offers, &product).await;
    assert_eq!(first, [ending.offer_id.clone(), lasting.offer_id.clone()], "soonest ending first");
    let before = hits(&s).await;
    assert_eq!(available(&mut s.offers, &product).await, first);
    assert!(hits(&s).await > before, "the second answer was not the kept one");

    until_past(starting.start_time.as_ref().unwrap()).await;
    let after_start = available(&mut s.offers, &product).await;
    assert!(after_start.contains(&starting.offer_id), "the offer that started is missing: {after_start:?}");
    until_past(ending.end_time.as_ref().unwrap()).await;
    let after_end = available(&mut s.offers, &product).await;
    assert!(!after_end.contains(&ending.offer_id), "the offer that ended is still there: {after_end:?}");
    assert_eq!(after_end, [lasting.offer_id, starting.offer_id]);
}

/// A new offer and a withdrawal show in the very next answer of the
/// replica that made them; a withdrawal by the catalog's feed soon after
/// it is applied.
async fn every_change_of_offers_drops_the_answers_at_once(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let first =
        s.offers.create_offer(running(&product, -60, 3600)).await.unwrap().into_inner().offer.unwrap();
    assert_eq!(available(&mut s.offers, &product).await, vec![first.offer_id.clone()]);
    let second =
        s.offers.create_offer(running(&product, -60, 1800)).await.unwrap().into_inner().offer.unwrap();
    assert_eq!(available(&mut s.offers, &product).await, [second.offer_id.clone(), first.offer_id.clone()]);
    s.offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: second.offer_id.clone(), etag: String::new() })
        .await
        .unwrap();
    assert_eq!(available(&mut s.offers, &product).await, vec![first.offer_id.clone()]);

    s.discontinue(&product).await;
    let offers = s.offers.clone();
    let gone = wait_until(BOUND, || {
        let (mut offers, product) = (offers.clone(), product.clone());
        async move { available(&mut offers, &product).await.is_empty() }
    })
    .await;
    assert!(gone, "the feed's withdrawal never reached the answers");
}

/// A second offers replica on the same database: what one writes, the
/// other's answers show within a few poll intervals (SQLite is one
/// process's file: the same test runs both on it as well).
async fn another_replicas_write_reaches_the_answers_soon(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let settings = agora_testing::settings("offers", &s.offers_db);
    let upstreams = offers_settings(s.catalog_proxy.addr, s.customers_proxy.addr);
    let other = TestServer::start(agora_offers::build_with(settings, upstreams).await.unwrap()).await;
    let mut elsewhere = OfferServiceClient::new(other.channel.clone());
    assert!(available(&mut elsewhere, &product).await.is_empty());
    assert!(available(&mut elsewhere, &product).await.is_empty(), "kept");

    let made = s.offers.create_offer(running(&product, -60, 3600)).await.unwrap().into_inner().offer.unwrap();
    let seen = wait_until(BOUND, || {
        let (mut elsewhere, product, id) = (elsewhere.clone(), product.clone(), made.offer_id.clone());
        async move { available(&mut elsewhere, &product).await == [id] }
    })
    .await;
    assert!(seen, "the other replica never answered with the new offer");
}
