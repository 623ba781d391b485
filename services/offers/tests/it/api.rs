//! Every RPC of the offers service through the real gRPC interface, with
//! real catalog and customers upstreams, on SQLite and on PostgreSQL.

use crate::common::*;
use tonic::Code;
use tonic_types::StatusExt as _;

agora_testing::on_both_backends!(
    an_offer_for_everyone_is_created_read_and_listed,
    a_personal_offer_needs_an_existing_customer,
    an_offer_for_an_unknown_product_is_not_found,
    an_offer_for_a_discontinued_product_is_refused,
    an_invalid_offer_names_every_bad_field,
    a_retried_create_returns_the_same_offer,
    available_offers_are_personal_or_for_everyone_and_within_their_window,
    withdrawing_hides_an_offer_and_is_harmless_twice,
    listing_pages_and_filters_by_product_and_state,
    missing_and_empty_ids_get_their_codes,
);

fn bad_fields(status: &tonic::Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

async fn an_offer_for_everyone_is_created_read_and_listed(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let created =
        s.offers.create_offer(create(offer(&product, "", 15))).await.unwrap().into_inner().offer.unwrap();
    assert!(created.offer_id.starts_with("off_"));
    assert_eq!(created.state(), pb::OfferState::Active);
    assert_eq!(created.product_id, product);
    assert!(created.customer_id.is_empty() && !created.etag.is_empty() && created.create_time.is_some());

    let got = s.offers.get_offer(pb::GetOfferRequest { offer_id: created.offer_id.clone() }).await.unwrap();
    assert_eq!(got.into_inner().offer.unwrap(), created);
    let listed = s.offers.list_offers(pb::ListOffersRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.offers, [created]);
}

/// A personal offer is for a customer the customers context knows.
async fn a_personal_offer_needs_an_existing_customer(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let err = s.offers.create_offer(create(offer(&product, "cus_nobody", 10))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.get_details_resource_info().unwrap().resource_type, "customer");

    let ada = s.customer("ada@example.com").await;
    let created = s.offers.create_offer(create(offer(&product, &ada, 10))).await.unwrap().into_inner();
    assert_eq!(created.offer.unwrap().customer_id, ada);
}

async fn an_offer_for_an_unknown_product_is_not_found(db: TestDatabase) {
    let mut s = start(db).await;
    let err = s.offers.create_offer(create(offer("prd_nothing", "", 10))).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(err.get_details_resource_info().unwrap().resource_type, "product");
}

/// Asked of the catalog (offers has not heard of the product from the
/// feed): refused at once. Known from the feed: see `projection.rs`.
async fn an_offer_for_a_discontinued_product_is_refused(db: TestDatabase) {
    let mut s = start_unfed(db).await;
    let product = s.product().await;
    s.discontinue(&product).await;
    let err = s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.get_details_precondition_failure().unwrap().violations[0].r#type, "PRODUCT_STATE");
}

/// Validation happens before any upstream is asked, and names every bad field.
async fn an_invalid_offer_names_every_bad_field(db: TestDatabase) {
    let mut s = start(db).await;
    let before = s.catalog_proxy.calls_of("GetProduct");
    let cases: Vec<(pb::Offer, Vec<&str>)> = vec![
        (
            pb::Offer { discount_percent: 0, ..Default::default() },
            vec![
                "offer.product_id",
                "offer.kind",
                "offer.discount_percent",
                "offer.start_time",
                "offer.end_time",
            ],
        ),
        (offer("prd_x", "", 91), vec!["offer.discount_percent"]),
        (pb::Offer { end_time: Some(in_seconds(-3600)), ..offer("prd_x", "", 10) }, vec!["offer.end_time"]),
        (
            pb::Offer {
                start_time: Some(in_seconds(600)),
                end_time: Some(in_seconds(60)),
                ..offer("prd_x", "", 10)
            },
            vec!["offer.end_time"],
        ),
        (
            pb::Offer {
                kind: pb::OfferKind::LastDay.into(),
                end_time: Some(in_seconds(2 * 24 * 3600)),
                ..offer("prd_x", "", 10)
            },
            vec!["offer.end_time"],
        ),
        (pb::Offer { kind: 7, ..offer("prd_x", "", 10) }, vec!["offer.kind"]),
        (offer("prd_x", &"c".repeat(101), 10), vec!["offer.customer_id"]),
    ];
    for (o, fields) in cases {
        let err = s.offers.create_offer(create(o)).await.unwrap_err();
        assert_eq!(bad_fields(&err), fields);
    }
    let err = s.offers.create_offer(pb::CreateOfferRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["offer"]);
    assert_eq!(s.catalog_proxy.calls_of("GetProduct"), before, "invalid requests never reach the catalog");
}

async fn a_retried_create_returns_the_same_offer(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let mut request =
        pb::CreateOfferRequest { request_id: "offer-key-1".into(), offer: Some(offer(&product, "", 20)) };
    let first = s.offers.create_offer(request.clone()).await.unwrap().into_inner();
    let again = s.offers.create_offer(request.clone()).await.unwrap().into_inner();
    assert_eq!(first, again);
    request.offer = Some(offer(&product, "", 25));
    let err = s.offers.create_offer(request).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["request_id"]);
    let listed = s.offers.list_offers(pb::ListOffersRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.offers.len(), 1);
}

/// The core query: a customer sees the offers for everyone and their own,
/// active and within their window, soonest ending first.
async fn available_offers_are_personal_or_for_everyone_and_within_their_window(db: TestDatabase) {
    let mut s = start(db).await;
    let screen = s.product().await;
    let lamp = s.product().await;
    let ada = s.customer("ada@example.com").await;
    let bob = s.customer("bob@example.com").await;
    let mut make =
        async |o: pb::Offer| s.offers.create_offer(create(o)).await.unwrap().into_inner().offer.unwrap();
    let everyone = make(offer(&screen, "", 10)).await;
    let for_ada = make(pb::Offer { end_time: Some(in_seconds(1800)), ..offer(&screen, &ada, 20) }).await;
    let _for_bob = make(offer(&screen, &bob, 30)).await;
    let _later = make(pb::Offer {
        start_time: Some(in_seconds(3600)),
        end_time: Some(in_seconds(7200)),
        ..offer(&screen, "", 40)
    })
    .await;
    let withdrawn = make(offer(&lamp, "", 50)).await;
    let lamp_offer = make(offer(&lamp, "", 15)).await;
    s.offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: withdrawn.offer_id, etag: String::new() })
        .await
        .unwrap();

    let available = |customer: &str, product: &str| pb::ListAvailableOffersRequest {
        customer_id: customer.into(),
        product_id: product.into(),
    };
    let ids = |r: pb::ListAvailableOffersResponse| {
        assert!(!r.fallback);
        r.offers.into_iter().map(|o| o.offer_id).collect::<Vec<_>>()
    };
    let for_ada_now = ids(s.offers.list_available_offers(available(&ada, "")).await.unwrap().into_inner());
    assert_eq!(
        for_ada_now,
        [for_ada.offer_id.clone(), everyone.offer_id.clone(), lamp_offer.offer_id.clone()]
    );
    let anonymous = ids(s.offers.list_available_offers(available("", &screen)).await.unwrap().into_inner());
    assert_eq!(anonymous, [everyone.offer_id.as_str()]);
    let ada_screen =
        ids(s.offers.list_available_offers(available(&ada, &screen)).await.unwrap().into_inner());
    assert_eq!(ada_screen, [for_ada.offer_id, everyone.offer_id]);
}

async fn withdrawing_hides_an_offer_and_is_harmless_twice(db: TestDatabase) {
    let mut s = start(db).await;
    let product = s.product().await;
    let o = s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap().into_inner().offer.unwrap();
    let err = s
        .offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: o.offer_id.clone(), etag: "r99".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let withdraw = pb::WithdrawOfferRequest { offer_id: o.offer_id.clone(), etag: o.etag.clone() };
    let once = s.offers.withdraw_offer(withdraw.clone()).await.unwrap().into_inner().offer.unwrap();
    assert_eq!(once.state(), pb::OfferState::Withdrawn);
    let twice = s
        .offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: o.offer_id.clone(), etag: String::new() })
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(twice, once);
    let available = s.offers.list_available_offers(pb::ListAvailableOffersRequest::default()).await.unwrap();
    assert!(available.into_inner().offers.is_empty());
}

async fn listing_pages_and_filters_by_product_and_state(db: TestDatabase) {
    let mut s = start(db).await;
    let screen = s.product().await;
    let lamp = s.product().await;
    let mut ids = Vec::new();
    for (product, discount) in [(&screen, 10), (&lamp, 11), (&screen, 12), (&screen, 13)] {
        let o = s.offers.create_offer(create(offer(product, "", discount))).await.unwrap().into_inner();
        ids.push(o.offer.unwrap().offer_id);
    }
    s.offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: ids[2].clone(), etag: String::new() })
        .await
        .unwrap();

    let page = |token: String| pb::ListOffersRequest {
        page_size: 2,
        page_token: token,
        product_id: screen.clone(),
        ..Default::default()
    };
    let first = s.offers.list_offers(page(String::new())).await.unwrap().into_inner();
    let second = s.offers.list_offers(page(first.next_page_token.clone())).await.unwrap().into_inner();
    let listed: Vec<_> = first.offers.iter().chain(&second.offers).map(|o| o.offer_id.clone()).collect();
    assert_eq!(listed, [ids[0].clone(), ids[2].clone(), ids[3].clone()]);
    assert!(second.next_page_token.is_empty());

    let active = s
        .offers
        .list_offers(pb::ListOffersRequest { state: pb::OfferState::Active.into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.offers.len(), 3);

    let foreign = pb::ListOffersRequest { page_token: first.next_page_token, ..Default::default() };
    assert_eq!(bad_fields(&s.offers.list_offers(foreign).await.unwrap_err()), ["page_token"]);
    let bad_state = pb::ListOffersRequest { state: 9, page_size: -1, ..Default::default() };
    assert_eq!(bad_fields(&s.offers.list_offers(bad_state).await.unwrap_err()), ["page_size", "state"]);
}

async fn missing_and_empty_ids_get_their_codes(db: TestDatabase) {
    let mut s = start(db).await;
    let err = s.offers.get_offer(pb::GetOfferRequest { offer_id: "off_none".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = s
        .offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: "off_none".into(), etag: String::new() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        bad_fields(&s.offers.get_offer(pb::GetOfferRequest::default()).await.unwrap_err()),
        ["offer_id"]
    );
    let long = pb::ListAvailableOffersRequest { customer_id: "x".repeat(101), product_id: String::new() };
    assert_eq!(bad_fields(&s.offers.list_available_offers(long).await.unwrap_err()), ["customer_id"]);
}
