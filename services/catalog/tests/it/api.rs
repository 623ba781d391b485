//! Every RPC of the catalog through the real gRPC interface, on SQLite and
//! on PostgreSQL.

use crate::common::*;
use prost_types::FieldMask;
use tonic::Code;
use tonic_types::StatusExt as _;

agora_testing::on_both_backends!(
    families_are_created_read_and_listed_in_pages,
    a_product_is_created_and_read_back,
    a_retried_create_returns_the_same_product,
    a_request_id_reused_for_another_product_is_refused,
    an_invalid_product_names_every_bad_field,
    a_product_in_an_unknown_family_is_refused,
    batch_get_keeps_the_order_and_names_the_missing,
    batch_get_refuses_empty_and_oversized_batches,
    listing_pages_through_every_product_once,
    listing_filters_by_family_and_state,
    malformed_and_foreign_page_tokens_are_refused,
    an_update_changes_the_masked_fields_and_the_etag,
    a_stale_etag_is_refused,
    writers_without_an_etag_take_turns,
    unknown_and_output_only_mask_paths_are_refused,
    an_empty_mask_updates_the_fields_that_are_set,
    discontinuing_twice_is_harmless_and_freezes_the_product,
    missing_and_empty_ids_get_their_codes,
);

/// Families: create, get, list page by page, and validation.
async fn families_are_created_read_and_listed_in_pages(db: TestDatabase) {
    let mut c = start(db).await;
    let mut ids = Vec::new();
    for name in ["Screens", "Laptops", "Phones"] {
        ids.push(family(&mut c.client, name).await.family_id);
    }
    let got =
        c.client.get_family(pb::GetFamilyRequest { family_id: ids[1].clone() }).await.unwrap().into_inner();
    assert_eq!(got.family.unwrap().display_name, "Laptops");

    let first = c
        .client
        .list_families(pb::ListFamiliesRequest { page_size: 2, page_token: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.families.len(), 2);
    assert!(!first.next_page_token.is_empty());
    let second = c
        .client
        .list_families(pb::ListFamiliesRequest { page_size: 2, page_token: first.next_page_token })
        .await
        .unwrap()
        .into_inner();
    let listed: Vec<_> = first.families.iter().chain(&second.families).map(|f| f.family_id.clone()).collect();
    assert_eq!(listed, ids);
    assert!(second.next_page_token.is_empty());

    let err = c
        .client
        .create_family(pb::CreateFamilyRequest {
            family: Some(pb::Family {
                display_name: " ".into(),
                description: "x".repeat(2001),
                ..Default::default()
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["family.display_name", "family.description"]);
    let err = c.client.create_family(pb::CreateFamilyRequest { family: None }).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["family"]);
}

/// A created product carries its id, state, etag and times, and reads back equal.
async fn a_product_is_created_and_read_back(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let created = product(&mut c.client, &fam.family_id, "27-inch screen", 19_900).await;
    assert!(created.product_id.starts_with("prd_"));
    assert_eq!(created.state(), pb::ProductState::Active);
    assert!(!created.etag.is_empty());
    assert!(created.create_time.is_some() && created.update_time == created.create_time);
    assert_eq!(created.price.as_ref().unwrap().amount_minor, 19_900);

    let got = c
        .client
        .get_product(pb::GetProductRequest { product_id: created.product_id.clone() })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(got, created);
}

/// The same request_id twice yields one product, not two.
async fn a_retried_create_returns_the_same_product(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let request = pb::CreateProductRequest {
        request_id: "9b2f6c1e-retry".into(),
        product: Some(new_product(&fam.family_id, "Screen", 100)),
    };
    let first = c.client.create_product(request.clone()).await.unwrap().into_inner().product.unwrap();
    let again = c.client.create_product(request).await.unwrap().into_inner().product.unwrap();
    assert_eq!(first, again);
    let all = c.client.list_products(pb::ListProductsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.products.len(), 1);
}

/// An idempotency key belongs to one request: reusing it for another product is an error.
async fn a_request_id_reused_for_another_product_is_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let mut request = pb::CreateProductRequest {
        request_id: "key-1".into(),
        product: Some(new_product(&fam.family_id, "Screen", 100)),
    };
    c.client.create_product(request.clone()).await.unwrap();
    request.product = Some(new_product(&fam.family_id, "Other screen", 100));
    let err = c.client.create_product(request).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["request_id"]);
}

/// One answer names every invalid field with its path.
async fn an_invalid_product_names_every_bad_field(db: TestDatabase) {
    let mut c = start(db).await;
    let long_key = "k".repeat(101);
    let cases: Vec<(pb::Product, &str, Vec<&str>)> = vec![
        (
            pb::Product {
                display_name: String::new(),
                description: "d".repeat(2001),
                family_id: String::new(),
                price: Some(Money { currency_code: "XYZ".into(), amount_minor: -1 }),
                ..Default::default()
            },
            "",
            vec![
                "product.display_name",
                "product.description",
                "product.family_id",
                "product.price.currency_code",
                "product.price.amount_minor",
            ],
        ),
        (
            pb::Product { display_name: "n".repeat(201), family_id: "f".into(), ..Default::default() },
            "",
            vec!["product.display_name", "product.price"],
        ),
        (
            pb::Product {
                display_name: "Yacht".into(),
                family_id: "f".into(),
                price: Some(Money { currency_code: "EUR".into(), amount_minor: 1_000_000_000_000 }),
                ..Default::default()
            },
            "",
            vec!["product.price.amount_minor"],
        ),
        (new_product("f", "ok", 1), &long_key, vec!["request_id"]),
    ];
    for (product, request_id, fields) in cases {
        let err = c
            .client
            .create_product(pb::CreateProductRequest {
                request_id: request_id.into(),
                product: Some(product),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), fields);
    }
    let err = c.client.create_product(pb::CreateProductRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product"]);
}

/// A product must belong to a family that exists.
async fn a_product_in_an_unknown_family_is_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let err = c
        .client
        .create_product(pb::CreateProductRequest {
            request_id: "k".into(),
            product: Some(new_product("fam_missing", "Screen", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["product.family_id"]);
    // The refused request did not burn its idempotency key.
    let fam = family(&mut c.client, "Screens").await;
    c.client
        .create_product(pb::CreateProductRequest {
            request_id: "k".into(),
            product: Some(new_product(&fam.family_id, "Screen", 1)),
        })
        .await
        .expect("the key is still free");
}

/// Batch get answers in the order asked, repeats included, and lists the unknown ids.
async fn batch_get_keeps_the_order_and_names_the_missing(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let a = product(&mut c.client, &fam.family_id, "A", 1).await;
    let b = product(&mut c.client, &fam.family_id, "B", 2).await;
    let resp = c
        .client
        .batch_get_products(pb::BatchGetProductsRequest {
            product_ids: vec![
                b.product_id.clone(),
                "prd_nope".into(),
                a.product_id.clone(),
                b.product_id.clone(),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = resp.products.iter().map(|p| p.product_id.as_str()).collect();
    assert_eq!(ids, [b.product_id.as_str(), a.product_id.as_str(), b.product_id.as_str()]);
    assert_eq!(resp.missing_product_ids, ["prd_nope"]);
}

async fn batch_get_refuses_empty_and_oversized_batches(db: TestDatabase) {
    let mut c = start(db).await;
    let err = c.client.batch_get_products(pb::BatchGetProductsRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product_ids"]);
    let ids = (0..101).map(|i| format!("prd_{i}")).collect();
    let err =
        c.client.batch_get_products(pb::BatchGetProductsRequest { product_ids: ids }).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product_ids"]);
    let err = c
        .client
        .batch_get_products(pb::BatchGetProductsRequest { product_ids: vec!["a".into(), String::new()] })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["product_ids[1]"]);
}

/// Keyset pages cover every product exactly once, in creation order.
async fn listing_pages_through_every_product_once(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let mut created = Vec::new();
    for i in 0..7 {
        created.push(product(&mut c.client, &fam.family_id, &format!("Screen {i}"), i).await.product_id);
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = c
            .client
            .list_products(pb::ListProductsRequest { page_size: 3, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.products.len() <= 3);
        listed.extend(page.products.into_iter().map(|p| p.product_id));
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() || pages > 10 {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created);

    // page_size 0 means the default; a huge one is capped, not refused.
    let all = c
        .client
        .list_products(pb::ListProductsRequest { page_size: 1_000_000, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(all.products.len(), 7);
    assert!(all.next_page_token.is_empty());
}

async fn listing_filters_by_family_and_state(db: TestDatabase) {
    let mut c = start(db).await;
    let screens = family(&mut c.client, "Screens").await;
    let phones = family(&mut c.client, "Phones").await;
    let s1 = product(&mut c.client, &screens.family_id, "S1", 1).await;
    let _p1 = product(&mut c.client, &phones.family_id, "P1", 1).await;
    let s2 = product(&mut c.client, &screens.family_id, "S2", 1).await;
    c.client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: s1.product_id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();

    let list = |family_id: &str, state: pb::ProductState| pb::ListProductsRequest {
        family_id: family_id.into(),
        state: state.into(),
        ..Default::default()
    };
    let ids =
        |resp: pb::ListProductsResponse| resp.products.into_iter().map(|p| p.product_id).collect::<Vec<_>>();

    let screens_all =
        c.client.list_products(list(&screens.family_id, pb::ProductState::Unspecified)).await.unwrap();
    assert_eq!(ids(screens_all.into_inner()), [s1.product_id.clone(), s2.product_id.clone()]);
    let screens_active =
        c.client.list_products(list(&screens.family_id, pb::ProductState::Active)).await.unwrap();
    assert_eq!(ids(screens_active.into_inner()), [s2.product_id.as_str()]);
    let discontinued = c.client.list_products(list("", pb::ProductState::Discontinued)).await.unwrap();
    assert_eq!(ids(discontinued.into_inner()), [s1.product_id.as_str()]);
    let none = c.client.list_products(list("fam_unknown", pb::ProductState::Unspecified)).await.unwrap();
    assert!(none.into_inner().products.is_empty());

    let err = c
        .client
        .list_products(pb::ListProductsRequest { state: 42, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["state"]);
}

/// Page tokens are opaque, and bound to the filter that produced them.
async fn malformed_and_foreign_page_tokens_are_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    for i in 0..3 {
        product(&mut c.client, &fam.family_id, &format!("S{i}"), 1).await;
    }
    let page = c
        .client
        .list_products(pb::ListProductsRequest {
            page_size: 1,
            family_id: fam.family_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let err = c
        .client
        .list_products(pb::ListProductsRequest {
            page_size: 1,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"]);
    let err = c
        .client
        .list_products(pb::ListProductsRequest { page_token: "not a token".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"]);
    let err = c
        .client
        .list_products(pb::ListProductsRequest { page_size: -1, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_size"]);
    let err = c
        .client
        .list_families(pb::ListFamiliesRequest { page_size: 0, page_token: "AAAA".into() })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"]);
}

async fn an_update_changes_the_masked_fields_and_the_etag(db: TestDatabase) {
    let mut c = start(db).await;
    let screens = family(&mut c.client, "Screens").await;
    let monitors = family(&mut c.client, "Monitors").await;
    let p = product(&mut c.client, &screens.family_id, "Screen", 100).await;
    let change = pb::Product {
        product_id: p.product_id.clone(),
        display_name: "Wide screen".into(),
        description: "ignored: not in the mask".into(),
        family_id: monitors.family_id.clone(),
        price: Some(Money { currency_code: "USD".into(), amount_minor: 250 }),
        etag: p.etag.clone(),
        ..Default::default()
    };
    let updated = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(change),
            update_mask: Some(FieldMask {
                paths: vec!["display_name".into(), "family_id".into(), "price".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(updated.display_name, "Wide screen");
    assert_eq!(updated.description, p.description);
    assert_eq!(updated.family_id, monitors.family_id);
    assert_eq!(updated.price.as_ref().unwrap().currency_code, "USD");
    assert_ne!(updated.etag, p.etag);
    assert_eq!(updated.create_time, p.create_time);

    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: p.product_id.clone(),
                family_id: "fam_nope".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["family_id".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["product.family_id"]);
}

/// Optimistic concurrency: the second writer holding the old etag loses.
async fn a_stale_etag_is_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    let rename = |name: &str| pb::UpdateProductRequest {
        product: Some(pb::Product {
            product_id: p.product_id.clone(),
            display_name: name.into(),
            etag: p.etag.clone(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
    };
    c.client.update_product(rename("First")).await.unwrap();
    let err = c.client.update_product(rename("Second")).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let failure = err.get_details_precondition_failure().expect("PreconditionFailure detail");
    assert_eq!(failure.violations[0].r#type, "ETAG");
    let err = c
        .client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: p.product_id.clone(),
            etag: p.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let now =
        c.client.get_product(pb::GetProductRequest { product_id: p.product_id }).await.unwrap().into_inner();
    assert_eq!(now.product.unwrap().display_name, "First");
}

/// Writers that send no etag change "whatever the product is now": many
/// at once on one product all succeed, one after the other, and the last
/// revision counts every one (none is refused as stale).
async fn writers_without_an_etag_take_turns(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (mut client, id) = (c.client.clone(), p.product_id.clone());
            tokio::spawn(async move {
                let change =
                    pb::Product { product_id: id, display_name: format!("Screen {i}"), ..Default::default() };
                let mask = FieldMask { paths: vec!["display_name".into()] };
                client
                    .update_product(pb::UpdateProductRequest {
                        product: Some(change),
                        update_mask: Some(mask),
                    })
                    .await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().expect("an update without an etag is not refused");
    }
    c.client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: p.product_id.clone(),
            etag: String::new(),
        })
        .await
        .expect("discontinued");
    let now = c.client.get_product(pb::GetProductRequest { product_id: p.product_id }).await.unwrap();
    // An etag is `r<revision>`.
    let revision = |etag: &str| etag[1..].parse::<i64>().expect("r<revision>");
    let after = revision(&now.into_inner().product.unwrap().etag);
    assert_eq!(after, revision(&p.etag) + 17, "every write counted once");
}

async fn unknown_and_output_only_mask_paths_are_refused(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    for paths in [vec!["colour"], vec!["state"], vec!["etag"], vec!["price.amount_minor"]] {
        let err = c
            .client
            .update_product(pb::UpdateProductRequest {
                product: Some(pb::Product { product_id: p.product_id.clone(), ..Default::default() }),
                update_mask: Some(FieldMask { paths: paths.iter().map(|s| s.to_string()).collect() }),
            })
            .await
            .unwrap_err();
        assert_eq!(bad_fields(&err), ["update_mask"], "{paths:?}");
    }
    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product { product_id: p.product_id.clone(), ..Default::default() }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["update_mask"], "nothing to update");
    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: p.product_id.clone(),
                display_name: " ".into(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask { paths: vec!["display_name".into(), "price".into()] }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["product.display_name", "product.price"]);
}

/// Without a mask, the fields set in the request are the ones updated (AIP-134).
async fn an_empty_mask_updates_the_fields_that_are_set(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    let updated = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: p.product_id.clone(),
                price: Some(Money { currency_code: "EUR".into(), amount_minor: 90 }),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .product
        .unwrap();
    assert_eq!(updated.price.unwrap().amount_minor, 90);
    assert_eq!(updated.display_name, "Screen");
}

async fn discontinuing_twice_is_harmless_and_freezes_the_product(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    let discontinue = pb::DiscontinueProductRequest { product_id: p.product_id.clone(), etag: String::new() };
    let once = c.client.discontinue_product(discontinue.clone()).await.unwrap().into_inner().product.unwrap();
    assert_eq!(once.state(), pb::ProductState::Discontinued);
    let twice = c.client.discontinue_product(discontinue).await.unwrap().into_inner().product.unwrap();
    assert_eq!(twice, once, "a second discontinue changes nothing");

    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: p.product_id.clone(),
                display_name: "New".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

async fn missing_and_empty_ids_get_their_codes(db: TestDatabase) {
    let mut c = start(db).await;
    let err =
        c.client.get_product(pb::GetProductRequest { product_id: "prd_nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.get_details_resource_info().unwrap().resource_name, "prd_nope");
    let err = c.client.get_family(pb::GetFamilyRequest { family_id: "fam_nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: "prd_nope".into(),
            etag: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: "prd_nope".into(),
                display_name: "x".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c.client.get_product(pb::GetProductRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product_id"]);
    let err = c.client.get_family(pb::GetFamilyRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["family_id"]);
    let err = c.client.update_product(pb::UpdateProductRequest::default()).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product"]);
}
