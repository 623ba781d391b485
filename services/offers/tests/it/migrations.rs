//! A database created by an earlier version of offers, whose own
//! migrations made the platform's tables too, keeps migrating forward: the
//! new binary adopts its history, serves and changes its rows, resumes its
//! feeds where they were and ends with the schema of a fresh database.

use agora_offers::MIGRATIONS;
use agora_platform::wire::now_micros;

use crate::common::*;

agora_testing::on_both_backends!(a_database_of_the_earlier_history_is_adopted_with_its_rows);

const HOUR: i64 = 3_600_000_000;

async fn a_database_of_the_earlier_history_is_adopted_with_its_rows(db: TestDatabase) {
    let now = now_micros();
    let old = db.migrated_as_before(&MIGRATIONS).await;
    old.query(
        "INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time, \
         state, revision, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
    )
    .bind("off_old")
    .bind("prd_old")
    .bind("")
    .bind("SPEED")
    .bind(15_i64)
    .bind(now - HOUR)
    .bind(now + HOUR)
    .bind("ACTIVE")
    .bind(1_i64)
    .bind(now - HOUR)
    .execute()
    .await
    .unwrap();
    old.query("INSERT INTO feed_cursors (feed, sequence) VALUES ($1, $2)")
        .bind("customers")
        .bind(0_i64)
        .execute()
        .await
        .unwrap();
    old.close().await;

    let mut s = start(db).await;
    let available = s
        .offers
        .list_available_offers(pb::ListAvailableOffersRequest {
            product_id: "prd_old".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(available.offers.iter().map(|o| o.offer_id.as_str()).collect::<Vec<_>>(), ["off_old"]);
    assert!(!available.fallback);
    let withdrawn = s
        .offers
        .withdraw_offer(pb::WithdrawOfferRequest { offer_id: "off_old".into(), etag: "r1".into() })
        .await
        .expect("the old offer changes")
        .into_inner()
        .offer
        .unwrap();
    assert_eq!((withdrawn.state(), withdrawn.etag.as_str()), (pb::OfferState::Withdrawn, "r2"));

    // The feeds resume from the kept cursors: a customer deleted now is
    // applied after the old cursor.
    let customer = s.customer("ada@example.com").await;
    let personal = s.product().await;
    s.offers.create_offer(create(offer(&personal, &customer, 10))).await.unwrap();
    s.customers
        .delete_customer(customers_pb::DeleteCustomerRequest { customer_id: customer, etag: String::new() })
        .await
        .unwrap();
    let offers = s.offers.clone();
    let applied = agora_testing::wait_until(BOUND, || {
        let (mut offers, personal) = (offers.clone(), personal.clone());
        async move {
            let request = pb::ListOffersRequest { product_id: personal, ..Default::default() };
            let listed = offers.list_offers(request).await.unwrap().into_inner().offers;
            listed.iter().all(|o| o.state() == pb::OfferState::Withdrawn)
        }
    })
    .await;
    assert!(applied, "the customers feed was not followed from the kept cursor");

    s.offers_db.assert_schema_as_fresh(&MIGRATIONS).await;
}
