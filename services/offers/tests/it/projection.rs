//! What offers keeps of the catalog's products (`catalog_products`): a new
//! offer's product is checked against it, kept from the catalog's change
//! feed, and asked of the catalog only when offers has not heard of it.

use crate::common::*;
use agora_testing::wait_until;
use tonic::Code;
use tonic_types::StatusExt as _;

agora_testing::on_both_backends!(
    a_product_the_feed_brought_needs_no_call_to_the_catalog,
    a_product_discontinued_on_the_feed_is_refused_without_the_catalog,
    a_product_the_feed_has_not_brought_is_asked_of_the_catalog_once,
    an_offer_made_within_the_feeds_lag_goes_with_its_discontinued_product,
);

/// Whether, within `bound`, a new offer on `product` is refused because the
/// product is discontinued (an offer made before that is created).
async fn refused_within(s: &System, product: &str, bound: std::time::Duration) -> bool {
    let offers = s.offers.clone();
    wait_until(bound, || {
        let (mut offers, product) = (offers.clone(), product.to_owned());
        async move {
            match offers.create_offer(create(offer(&product, "", 30))).await {
                Err(err) if err.code() == Code::FailedPrecondition => {
                    err.get_details_precondition_failure().unwrap().violations[0].r#type == "PRODUCT_STATE"
                }
                _ => false,
            }
        }
    })
    .await
}

/// The catalog refuses GetProduct: offers are still created once the feed
/// brought the product, and no later creation asks the catalog.
async fn a_product_the_feed_brought_needs_no_call_to_the_catalog(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    s.catalog_proxy.refuse("GetProduct");
    let offers = s.offers.clone();
    let created = wait_until(BOUND, || {
        let (mut offers, product) = (offers.clone(), product.clone());
        async move { offers.create_offer(create(offer(&product, "", 10))).await.is_ok() }
    })
    .await;
    assert!(created, "the feed never brought the product");
    let before = s.catalog_proxy.calls_of("GetProduct");
    for discount in [20, 30, 40] {
        s.offers
            .create_offer(create(offer(&product, "", discount)))
            .await
            .expect("created without the catalog");
    }
    assert_eq!(s.catalog_proxy.calls_of("GetProduct"), before, "the catalog was asked");
}

/// A discontinuation the feed brought refuses new offers on the product
/// without asking the catalog, and withdrew the offers it had.
async fn a_product_discontinued_on_the_feed_is_refused_without_the_catalog(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let first =
        s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap().into_inner().offer.unwrap();
    s.discontinue(&product).await;
    s.catalog_proxy.refuse("GetProduct");
    assert!(refused_within(&s, &product, BOUND).await, "the discontinuation never reached offers");
    let active = s.offers_of(&product, pb::OfferState::Active).await;
    assert!(active.is_empty(), "offers left on a discontinued product: {active:?}");
    let withdrawn = s.offers_of(&product, pb::OfferState::Withdrawn).await;
    assert!(withdrawn.iter().any(|o| o.offer_id == first.offer_id), "{withdrawn:?}");
}

/// Without the feed, the catalog is asked for a product offers has not
/// heard of; its "on sale" is kept, so it is asked once. A product it does
/// not know is asked again every time: nothing is kept of it.
async fn a_product_the_feed_has_not_brought_is_asked_of_the_catalog_once(db: TestDatabase) {
    let mut s = start_unfed(db).await;
    let product = s.product().await;
    let before = s.catalog_proxy.calls_of("GetProduct");
    s.offers.create_offer(create(offer(&product, "", 10))).await.expect("asked of the catalog");
    assert_eq!(s.catalog_proxy.calls_of("GetProduct"), before + 1);
    s.offers.create_offer(create(offer(&product, "", 20))).await.expect("kept");
    assert_eq!(s.catalog_proxy.calls_of("GetProduct"), before + 1, "asked twice");

    for i in 1..=2 {
        let err = s.offers.create_offer(create(offer("prd_nowhere", "", 10))).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{err:?}");
        assert_eq!(s.catalog_proxy.calls_of("GetProduct"), before + 1 + i);
    }
}

/// The defined answer within the feed's lag: a product discontinued after
/// offers last heard of it still gets an offer, and the discontinuation
/// withdraws it with the others when the feed brings it; from then on the
/// product is refused.
async fn an_offer_made_within_the_feeds_lag_goes_with_its_discontinued_product(db: TestDatabase) {
    let mut s = start_unfed(db).await;
    let product = s.product().await;
    let before =
        s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap().into_inner().offer.unwrap();
    s.discontinue(&product).await;
    let within =
        s.offers.create_offer(create(offer(&product, "", 20))).await.expect("offers has not heard yet");
    let within = within.into_inner().offer.unwrap();

    s.catalog_proxy.stop_refusing();
    assert!(refused_within(&s, &product, BOUND * 2).await, "the feed never brought the discontinuation");
    let withdrawn: Vec<String> =
        s.offers_of(&product, pb::OfferState::Withdrawn).await.into_iter().map(|o| o.offer_id).collect();
    for id in [&before.offer_id, &within.offer_id] {
        assert!(withdrawn.contains(id), "{id} not withdrawn: {withdrawn:?}");
    }
    assert!(s.offers_of(&product, pb::OfferState::Active).await.is_empty());
}
