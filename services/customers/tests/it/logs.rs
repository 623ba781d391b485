//! The email is personal data: whatever happens to a customer, no log line
//! and no span of the server carries the address. The test installs the
//! process-wide subscriber; nextest gives it a process of its own.

use agora_testing::Captured;
use prost_types::FieldMask;

use crate::common::*;

/// Every RPC touching an address, the refusals included, logged at TRACE by
/// every crate in the process (sqlx, tonic, h2, the platform, this service),
/// leaves no trace of the address, on SQLite and on PostgreSQL.
#[tokio::test]
async fn the_email_never_reaches_the_logs() {
    let captured = Captured::install(tracing::Level::TRACE);

    let mut ids = vec![exercise(TestDatabase::sqlite()).await];
    if let Some(db) = TestDatabase::postgres().await {
        ids.push(exercise(db).await);
    }

    let logs = captured.text();
    for id in &ids {
        assert!(
            logs.contains("customer registered") && logs.contains(id.as_str()),
            "the capture works: {logs}"
        );
    }
    let leaks: Vec<&str> = logs.lines().filter(|l| l.to_lowercase().contains("hidden.")).collect();
    assert!(leaks.is_empty(), "addresses in the logs: {leaks:#?}");
}

/// Registers, refuses, updates, lists and deletes customers whose addresses
/// all start with `hidden.`; returns the id of one registered customer.
async fn exercise(db: TestDatabase) -> String {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "hidden.ana@example.com").await;
    let bruno = customer(&mut c.client, "Bruno", "Costa", "hidden.bruno@example.com").await;
    let duplicate = c
        .client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(new_customer("Ana", "Other", "HIDDEN.ANA@example.com")),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), tonic::Code::AlreadyExists);
    let invalid = c
        .client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(new_customer("Ana", "Other", "hidden.carla@@example.com")),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let taken = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: bruno.customer_id.clone(),
                email: "hidden.ana@example.com".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["email".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), tonic::Code::AlreadyExists);
    c.client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: ana.customer_id.clone(),
                email: "hidden.dora@example.com".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    c.client.list_customers(pb::ListCustomersRequest::default()).await.unwrap();
    c.client
        .delete_customer(pb::DeleteCustomerRequest {
            customer_id: ana.customer_id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    c.server.stop().await.unwrap();
    ana.customer_id
}
