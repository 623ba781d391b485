//! A database created by an earlier version of customers, whose own
//! migrations made the platform's outbox too, keeps migrating forward: the
//! new binary adopts its history, serves its rows, keeps its email
//! uniqueness and ends with the schema of a fresh database.

use agora_customers::MIGRATIONS;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::common::*;

agora_testing::on_both_backends!(a_database_of_the_earlier_history_is_adopted_with_its_rows);

async fn a_database_of_the_earlier_history_is_adopted_with_its_rows(db: TestDatabase) {
    // Recent enough that outbox pruning (a week's retention) keeps it.
    let t0 = agora_platform::wire::now_micros();
    let old = db.migrated_as_before(&MIGRATIONS).await;
    old.query(
        "INSERT INTO customers (customer_id, given_name, family_name, email, email_key, revision, \
         create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind("cus_old")
    .bind("Ana")
    .bind("Lima")
    .bind("Ana@Example.com")
    .bind("ana@example.com")
    .bind(3_i64)
    .bind(t0)
    .bind(t0)
    .execute()
    .await
    .unwrap();
    old.query("INSERT INTO outbox_events (kind, payload, occur_time) VALUES ($1, $2, $3)")
        .bind("CustomerRegistered")
        .bind(r#"{"kind":"CustomerRegistered","customer_id":"cus_old"}"#)
        .bind(t0)
        .execute()
        .await
        .unwrap();
    old.close().await;

    let mut c = start(db).await;
    let kept = c
        .client
        .get_customer(pb::GetCustomerRequest { customer_id: "cus_old".into() })
        .await
        .expect("the old customer is served")
        .into_inner()
        .customer
        .unwrap();
    assert_eq!((kept.email.as_str(), kept.etag.as_str()), ("Ana@Example.com", "r3"));
    let taken = c
        .client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(new_customer("A", "L", "ana@example.com")),
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "the old address is still unique: {taken:?}");

    let mut feed = c
        .follower
        .watch_customer_events(pb::WatchCustomerEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = feed.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(first.sequence, 1);
    assert!(
        matches!(first.kind, Some(pb::customer_event::Kind::CustomerRegistered(ref e)) if e.customer_id == "cus_old")
    );

    c.db.assert_schema_as_fresh(&MIGRATIONS).await;
}
