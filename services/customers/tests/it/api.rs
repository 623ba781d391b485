//! Every RPC of the customers service through the real gRPC interface, on
//! SQLite and on PostgreSQL.

use crate::common::*;
use agora_platform::wire::{PageToken, micros_from_timestamp};
use prost_types::FieldMask;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

agora_testing::on_both_backends!(
    a_customer_is_registered_and_read_back,
    an_invalid_customer_names_every_bad_field,
    every_malformed_email_is_refused_on_its_field,
    an_email_in_use_is_refused_whatever_its_case,
    concurrent_registrations_of_one_email_let_exactly_one_through,
    changing_the_email_to_one_in_use_is_refused,
    answers_about_an_email_never_repeat_it,
    listing_pages_through_every_customer_once,
    malformed_and_foreign_page_tokens_are_refused,
    an_update_changes_the_masked_fields_and_the_etag,
    an_empty_mask_updates_the_fields_that_are_set,
    unknown_and_output_only_mask_paths_are_refused,
    a_stale_etag_is_refused_on_update_and_delete,
    a_deleted_customer_is_gone_and_frees_the_email,
    missing_and_empty_ids_get_their_codes,
    registrations_and_deletions_are_watched_in_order,
);

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask { paths: paths.iter().map(|p| p.to_string()).collect() })
}

async fn get(c: &mut Customers, id: &str) -> Result<pb::Customer, Status> {
    c.client
        .get_customer(pb::GetCustomerRequest { customer_id: id.into() })
        .await
        .map(|r| r.into_inner().customer.expect("customer in response"))
}

async fn all_ids(c: &mut Customers) -> Vec<String> {
    c.client
        .list_customers(pb::ListCustomersRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .customers
        .into_iter()
        .map(|c| c.customer_id)
        .collect()
}

/// A registered customer carries its id, etag and times, its fields
/// trimmed, and reads back equal.
async fn a_customer_is_registered_and_read_back(db: TestDatabase) {
    let mut c = start(db).await;
    let created = customer(&mut c.client, "  Ana ", "Lima  ", " Ana.Lima@Example.com ").await;
    assert!(created.customer_id.starts_with("cus_"));
    assert_eq!(created.given_name, "Ana");
    assert_eq!(created.family_name, "Lima");
    assert_eq!(created.email, "Ana.Lima@Example.com", "kept as written");
    assert!(!created.etag.is_empty());
    assert!(created.create_time.is_some() && created.update_time == created.create_time);

    let got = get(&mut c, &created.customer_id).await.unwrap();
    assert_eq!(got, created);
}

/// One answer names every invalid field with its path.
async fn an_invalid_customer_names_every_bad_field(db: TestDatabase) {
    let mut c = start(db).await;
    let cases: Vec<(pb::Customer, Vec<&str>)> = vec![
        (new_customer("", " ", ""), vec!["customer.given_name", "customer.family_name", "customer.email"]),
        (
            new_customer(&"n".repeat(101), "Li\u{0}ma", "ana@example.com"),
            vec!["customer.given_name", "customer.family_name"],
        ),
        (new_customer("Ana", "Lima", "not an email"), vec!["customer.email"]),
        (
            new_customer("Ana\nMaria", &"é".repeat(101), "ana@example.com"),
            vec!["customer.given_name", "customer.family_name"],
        ),
    ];
    for (customer, fields) in cases {
        let err = c
            .client
            .create_customer(pb::CreateCustomerRequest { customer: Some(customer) })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), fields);
    }
    let err = c.client.create_customer(pb::CreateCustomerRequest { customer: None }).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer"]);

    // Limits are inclusive and count characters: 100 of them is a name.
    customer(&mut c.client, &"é".repeat(100), "Lima", "ana@example.com").await;
    assert_eq!(all_ids(&mut c).await.len(), 1, "only the valid one was stored");
}

/// Each email rule refuses on `customer.email`, and the limits themselves
/// are accepted.
async fn every_malformed_email_is_refused_on_its_field(db: TestDatabase) {
    let mut c = start(db).await;
    let long_domain = format!("{}.com", "d".repeat(248));
    let bad = [
        "".to_string(),
        "   ".into(),
        "ana.example.com".into(),
        "ana@@example.com".into(),
        "ana@lima@example.com".into(),
        "@example.com".into(),
        format!("{}@example.com", "l".repeat(65)),
        "ana@".into(),
        "ana@localhost".into(),
        "ana@example..com".into(),
        "ana@.example.com".into(),
        "ana lima@example.com".into(),
        "ana@exam\tple.com".into(),
        "ana\u{7f}@example.com".into(),
        format!("ab@{long_domain}"),
    ];
    for email in &bad {
        let err = c
            .client
            .create_customer(pb::CreateCustomerRequest { customer: Some(new_customer("Ana", "Lima", email)) })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), ["customer.email"], "{email:?}");
    }
    let at_the_limits = [
        format!("{}@example.com", "l".repeat(64)),
        format!("a@{long_domain}"),
        "a+tag@sub.example.co".into(),
    ];
    for email in &at_the_limits {
        assert!(email.chars().count() <= 254, "{email:?}");
        customer(&mut c.client, "Ana", "Lima", email).await;
    }
}

/// Emails are unique regardless of case: the second registration of an
/// address, however it is capitalised, is ALREADY_EXISTS.
async fn an_email_in_use_is_refused_whatever_its_case(db: TestDatabase) {
    let mut c = start(db).await;
    let first = customer(&mut c.client, "Ana", "Lima", "ana.lima@example.com").await;
    for email in ["ana.lima@example.com", "ANA.Lima@Example.COM", " ana.lima@example.com "] {
        let err = c
            .client
            .create_customer(pb::CreateCustomerRequest {
                customer: Some(new_customer("Other", "Person", email)),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{email:?}: {err:?}");
    }
    assert_eq!(all_ids(&mut c).await, [first.customer_id]);
}

/// The database's unique constraint decides, not a look-up before the
/// write: of many simultaneous registrations of one address, one succeeds.
async fn concurrent_registrations_of_one_email_let_exactly_one_through(db: TestDatabase) {
    let mut c = start(db).await;
    let calls: Vec<_> = (0..8)
        .map(|i| {
            let mut client = c.client.clone();
            let email = if i % 2 == 0 { "race@example.com" } else { "RACE@example.com" };
            tokio::spawn(async move {
                client
                    .create_customer(pb::CreateCustomerRequest {
                        customer: Some(new_customer("Racer", &format!("No {i}"), email)),
                    })
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => created += 1,
            Err(err) => assert_eq!(err.code(), Code::AlreadyExists, "{err:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(all_ids(&mut c).await.len(), 1);
}

/// An update may change an email's case, but not take another customer's
/// address.
async fn changing_the_email_to_one_in_use_is_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    let bruno = customer(&mut c.client, "Bruno", "Costa", "bruno@example.com").await;
    let err = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: bruno.customer_id.clone(),
                email: "Ana@Example.com".into(),
                etag: bruno.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["email"]),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert_eq!(get(&mut c, &bruno.customer_id).await.unwrap(), bruno);

    let recased = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: ana.customer_id.clone(),
                email: "ANA@example.com".into(),
                ..Default::default()
            }),
            update_mask: mask(&["email"]),
        })
        .await
        .expect("a customer keeps their own address in another case")
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(recased.email, "ANA@example.com");
}

/// The email is personal data: neither the ALREADY_EXISTS nor the
/// INVALID_ARGUMENT answer about an address repeats it, in the message or
/// in the details.
async fn answers_about_an_email_never_repeat_it(db: TestDatabase) {
    let mut c = start(db).await;
    let email = "private.person@example.com";
    let ana = customer(&mut c.client, "Ana", "Lima", email).await;
    let bruno = customer(&mut c.client, "Bruno", "Costa", "bruno@example.com").await;
    let assert_silent = |err: &Status, address: &str| {
        let local = address.split('@').next().unwrap().trim();
        for text in [
            err.message().to_string(),
            String::from_utf8_lossy(err.details()).into_owned(),
            format!("{:?}", err.metadata()),
        ] {
            assert!(!text.to_lowercase().contains(local), "{address:?} leaked into {text:?}");
        }
    };

    let duplicate = c
        .client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(new_customer("Other", "Person", "Private.Person@example.com")),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert_silent(&duplicate, email);

    let taken = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: bruno.customer_id.clone(),
                email: email.into(),
                ..Default::default()
            }),
            update_mask: mask(&["email"]),
        })
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    assert_silent(&taken, email);
    assert!(!taken.message().contains(&ana.customer_id), "nor who has it");

    for bad in ["private.person@@example.com", "private person@example.com", "private.person@example"] {
        let err = c
            .client
            .create_customer(pb::CreateCustomerRequest { customer: Some(new_customer("Ana", "Lima", bad)) })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), ["customer.email"]);
        assert_silent(&err, bad);
    }
}

/// Keyset pages cover every customer exactly once, in creation order.
async fn listing_pages_through_every_customer_once(db: TestDatabase) {
    let mut c = start(db).await;
    let mut created = Vec::new();
    for i in 0..7 {
        created
            .push(customer(&mut c.client, "Ana", "Lima", &format!("ana{i}@example.com")).await.customer_id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .client
            .list_customers(pb::ListCustomersRequest { page_size: 3, page_token: token })
            .await
            .unwrap()
            .into_inner();
        assert!(page.customers.len() <= 3);
        listed.extend(page.customers.into_iter().map(|c| c.customer_id));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() || pages > 10 {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created);

    // page_size 0 means the default; a huge one is capped, not refused.
    for page_size in [0, 1_000_000] {
        let all = c
            .client
            .list_customers(pb::ListCustomersRequest { page_size, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.customers.len(), 7);
        assert!(all.next_page_token.is_empty());
    }
}

/// Page tokens are opaque and belong to this list: garbage, a token of
/// another list and a negative page size are refused, all in one answer.
async fn malformed_and_foreign_page_tokens_are_refused(db: TestDatabase) {
    let mut c = start(db).await;
    for i in 0..3 {
        customer(&mut c.client, "Ana", "Lima", &format!("ana{i}@example.com")).await;
    }
    let page = c
        .client
        .list_customers(pb::ListCustomersRequest { page_size: 1, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert!(!page.next_page_token.is_empty());

    let foreign = PageToken { after: 1, filter: "families".into() }.encode();
    for token in [foreign.as_str(), "not a token", "AAAA"] {
        let err = c
            .client
            .list_customers(pb::ListCustomersRequest { page_size: 1, page_token: token.into() })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), ["page_token"], "{token:?}");
    }
    let err = c
        .client
        .list_customers(pb::ListCustomersRequest { page_size: -1, page_token: "garbage".into() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_size", "page_token"]);
}

/// Only the masked fields change; the etag and update time move, the
/// creation time does not.
async fn an_update_changes_the_masked_fields_and_the_etag(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    let updated = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: ana.customer_id.clone(),
                given_name: " Ana Maria ".into(),
                family_name: "ignored: not in the mask".into(),
                email: "ana.maria@example.com".into(),
                etag: ana.etag.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["given_name", "email"]),
        })
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(updated.given_name, "Ana Maria");
    assert_eq!(updated.family_name, "Lima");
    assert_eq!(updated.email, "ana.maria@example.com");
    assert_ne!(updated.etag, ana.etag);
    assert_eq!(updated.create_time, ana.create_time);
    let micros = |c: &pb::Customer| micros_from_timestamp(c.update_time.as_ref().unwrap());
    assert!(micros(&updated) >= micros(&ana));
    assert_eq!(get(&mut c, &ana.customer_id).await.unwrap(), updated);

    // The old address is free again.
    customer(&mut c.client, "Other", "Ana", "ana@example.com").await;
}

/// Without a mask, the fields set in the request are the ones updated (AIP-134).
async fn an_empty_mask_updates_the_fields_that_are_set(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    for update_mask in [None, Some(FieldMask { paths: vec![] })] {
        let updated = c
            .client
            .update_customer(pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    customer_id: ana.customer_id.clone(),
                    family_name: "Souza".into(),
                    ..Default::default()
                }),
                update_mask,
            })
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap();
        assert_eq!(updated.family_name, "Souza");
        assert_eq!(updated.given_name, "Ana");
        assert_eq!(updated.email, "ana@example.com");
    }
}

/// A mask may name only given_name, family_name and email; the values it
/// names are validated, together with the id, in one answer.
async fn unknown_and_output_only_mask_paths_are_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    let only_id = || pb::Customer { customer_id: ana.customer_id.clone(), ..Default::default() };
    for paths in [
        vec!["phone"],
        vec!["customer_id"],
        vec!["etag"],
        vec!["create_time"],
        vec!["update_time"],
        vec!["email.domain"],
    ] {
        let err = c
            .client
            .update_customer(pb::UpdateCustomerRequest {
                customer: Some(only_id()),
                update_mask: mask(&paths),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), ["update_mask"], "{paths:?}");
    }
    let err = c
        .client
        .update_customer(pb::UpdateCustomerRequest { customer: Some(only_id()), update_mask: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["update_mask"], "nothing to update");
    let err = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                given_name: " ".into(),
                email: "ana@".into(),
                ..Default::default()
            }),
            update_mask: mask(&["given_name", "family_name", "email"]),
        })
        .await
        .unwrap_err();
    assert_eq!(
        bad_fields(&err),
        ["customer.customer_id", "customer.given_name", "customer.family_name", "customer.email",]
    );
    let err = c
        .client
        .update_customer(pb::UpdateCustomerRequest { customer: None, update_mask: mask(&["given_name"]) })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["customer"]);
    assert_eq!(get(&mut c, &ana.customer_id).await.unwrap(), ana, "unchanged");
}

/// Optimistic concurrency: the second writer holding the old etag loses,
/// on update and on delete, with a PreconditionFailure of type ETAG.
async fn a_stale_etag_is_refused_on_update_and_delete(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    let rename = |name: &str| pb::UpdateCustomerRequest {
        customer: Some(pb::Customer {
            customer_id: ana.customer_id.clone(),
            given_name: name.into(),
            etag: ana.etag.clone(),
            ..Default::default()
        }),
        update_mask: mask(&["given_name"]),
    };
    let first = c.client.update_customer(rename("First")).await.unwrap().into_inner().customer.unwrap();
    let err = c.client.update_customer(rename("Second")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = err.get_details_precondition_failure().expect("PreconditionFailure detail");
    assert_eq!(failure.violations[0].r#type, "ETAG");

    let err = c
        .client
        .delete_customer(pb::DeleteCustomerRequest {
            customer_id: ana.customer_id.clone(),
            etag: ana.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(err.get_details_precondition_failure().unwrap().violations[0].r#type, "ETAG");
    assert_eq!(get(&mut c, &ana.customer_id).await.unwrap(), first);
}

/// Deletion is for good: the customer cannot be read, listed, updated or
/// deleted again, and their email can register anew.
async fn a_deleted_customer_is_gone_and_frees_the_email(db: TestDatabase) {
    let mut c = start(db).await;
    let ana = customer(&mut c.client, "Ana", "Lima", "ana@example.com").await;
    let bruno = customer(&mut c.client, "Bruno", "Costa", "bruno@example.com").await;
    c.client
        .delete_customer(pb::DeleteCustomerRequest {
            customer_id: ana.customer_id.clone(),
            etag: ana.etag.clone(),
        })
        .await
        .expect("the current etag deletes");
    c.client
        .delete_customer(pb::DeleteCustomerRequest {
            customer_id: bruno.customer_id.clone(),
            etag: String::new(),
        })
        .await
        .expect("no etag deletes unconditionally");

    for id in [&ana.customer_id, &bruno.customer_id] {
        assert_eq!(get(&mut c, id).await.unwrap_err().code(), Code::NotFound);
        let err = c
            .client
            .delete_customer(pb::DeleteCustomerRequest { customer_id: id.clone(), etag: String::new() })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "deleting twice");
        let err = c
            .client
            .update_customer(pb::UpdateCustomerRequest {
                customer: Some(pb::Customer {
                    customer_id: id.clone(),
                    given_name: "Back".into(),
                    ..Default::default()
                }),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert!(all_ids(&mut c).await.is_empty());
    let again = customer(&mut c.client, "Ana", "Lima", "ANA@example.com").await;
    assert_ne!(again.customer_id, ana.customer_id, "ids are never reused");
}

/// Unknown ids are NOT_FOUND with the id as ResourceInfo; missing ids are
/// INVALID_ARGUMENT on the id field.
async fn missing_and_empty_ids_get_their_codes(db: TestDatabase) {
    let mut c = start(db).await;
    let err = get(&mut c, "cus_nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.get_details_resource_info().unwrap().resource_name, "cus_nope");
    let err = c
        .client
        .delete_customer(pb::DeleteCustomerRequest { customer_id: "cus_nope".into(), etag: "r1".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .client
        .update_customer(pb::UpdateCustomerRequest {
            customer: Some(pb::Customer {
                customer_id: "cus_nope".into(),
                given_name: "Ana".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = get(&mut c, "").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer_id"]);
    let err = get(&mut c, &"x".repeat(101)).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer_id"]);
    let err = c.client.delete_customer(pb::DeleteCustomerRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer_id"]);
    let err = c.client.update_customer(pb::UpdateCustomerRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer"]);
}

/// Registrations and deletions reach the change feed, ids only, in order;
/// a consumer resuming from a sequence gets only what came after.
async fn registrations_and_deletions_are_watched_in_order(db: TestDatabase) {
    use pb::customer_event::Kind;
    use tokio_stream::StreamExt as _;
    let mut c = start(db).await;
    let ada = customer(&mut c.client, "Ada", "Lovelace", "ada@example.com").await.customer_id;
    let bob = customer(&mut c.client, "Bob", "Babbage", "bob@example.com").await.customer_id;
    c.client
        .delete_customer(pb::DeleteCustomerRequest { customer_id: ada.clone(), etag: String::new() })
        .await
        .unwrap();
    let next = async |stream: &mut tonic::Streaming<pb::WatchCustomerEventsResponse>| {
        tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .unwrap()
    };
    let mut all = c
        .follower
        .watch_customer_events(pb::WatchCustomerEventsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut kinds = Vec::new();
    let mut sequences = Vec::new();
    for _ in 0..3 {
        let response = next(&mut all).await;
        let event = response.event.unwrap();
        assert!(response.head_sequence >= event.sequence);
        sequences.push(event.sequence);
        kinds.push(event.kind.unwrap());
    }
    assert_eq!(
        kinds,
        [
            Kind::CustomerRegistered(pb::CustomerRegistered { customer_id: ada.clone() }),
            Kind::CustomerRegistered(pb::CustomerRegistered { customer_id: bob.clone() }),
            Kind::CustomerDeleted(pb::CustomerDeleted { customer_id: ada }),
        ]
    );
    assert!(sequences.is_sorted());
    let mut resumed = c
        .follower
        .watch_customer_events(pb::WatchCustomerEventsRequest { after_sequence: sequences[1] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next(&mut resumed).await.event.unwrap().sequence, sequences[2]);
}
