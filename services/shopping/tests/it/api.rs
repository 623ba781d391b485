//! Every RPC of the shopping service through the real gRPC interface, with
//! real catalog and customers upstreams, on SQLite and on PostgreSQL.

use crate::common::*;
use agora_platform::wire::micros_from_timestamp;
use tonic::Code;

agora_testing::on_both_backends!(
    a_list_is_created_empty_and_read_back,
    an_invalid_list_names_every_bad_field,
    a_list_for_an_unknown_customer_is_refused,
    items_keep_the_order_they_were_first_added,
    adding_a_product_twice_sums_its_quantities,
    a_product_holds_at_most_1000_on_a_list,
    concurrent_additions_to_one_list_lose_nothing,
    an_invalid_addition_names_every_bad_field,
    an_unknown_product_cannot_be_added,
    a_discontinued_product_cannot_be_added,
    removing_a_product_takes_it_off_the_list,
    removing_a_product_that_is_not_on_the_list_changes_nothing,
    a_stale_etag_is_refused_on_add_remove_and_delete,
    a_deleted_list_is_gone,
    listing_pages_through_a_customers_lists_once,
    listing_needs_a_customer_and_refuses_foreign_tokens,
    missing_and_unknown_ids_get_their_codes,
);

fn micros(time: &Option<prost_types::Timestamp>) -> i64 {
    micros_from_timestamp(time.as_ref().expect("time is set")).expect("a valid time")
}

/// A new list carries its id, owner, trimmed title, etag and times, holds
/// no items, and reads back equal.
async fn a_list_is_created_empty_and_read_back(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let request = pb::CreateShoppingListRequest {
        shopping_list: Some(pb::ShoppingList {
            list_id: "lst_mine".into(),
            customer_id: ana.clone(),
            title: "  Weekend groceries ".into(),
            items: vec![pb::ListItem { product_id: "prd_x".into(), quantity: 3, available: true }],
            etag: "r9".into(),
            ..Default::default()
        }),
    };
    let created = s.shopping.create_shopping_list(request).await.unwrap().into_inner().shopping_list.unwrap();
    assert!(created.list_id.starts_with("lst_"), "the service chooses the id: {}", created.list_id);
    assert_eq!(created.customer_id, ana);
    assert_eq!(created.title, "Weekend groceries");
    assert!(created.items.is_empty(), "a list starts empty whatever the request holds");
    assert!(!created.etag.is_empty() && created.etag != "r9");
    assert!(created.create_time.is_some() && created.update_time == created.create_time);

    assert_eq!(s.get(&created.list_id).await.unwrap(), created);
}

/// One answer names every invalid field with its path; titles are counted
/// in characters, and 200 of them is a title.
async fn an_invalid_list_names_every_bad_field(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let cases = [
        ("", " ", vec!["shopping_list.customer_id", "shopping_list.title"]),
        (ana.as_str(), "", vec!["shopping_list.title"]),
        (ana.as_str(), &"é".repeat(201), vec!["shopping_list.title"]),
        (ana.as_str(), "Week\u{0}end", vec!["shopping_list.title"]),
        (&"c".repeat(101), "Groceries", vec!["shopping_list.customer_id"]),
    ];
    for (customer_id, title, fields) in cases {
        let err = s.create(customer_id, title).await.unwrap_err();
        assert_eq!(bad_fields(&err), fields, "{customer_id:?} {title:?}");
    }
    let err = s
        .shopping
        .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: None })
        .await
        .unwrap_err();
    assert_eq!(bad_fields(&err), ["shopping_list"]);

    s.list_of(&ana, &"é".repeat(200)).await;
    assert_eq!(s.page(&ana, 0, "").await.unwrap().shopping_lists.len(), 1, "only the valid one was stored");
}

/// The owner of a list must be a customer that customers knows: an unknown
/// one is NOT_FOUND, naming that customer.
async fn a_list_for_an_unknown_customer_is_refused(db: TestDatabase) {
    let mut s = start(db).await;
    let err = s.create("cus_nobody", "Groceries").await.unwrap_err();
    assert_eq!(missing(&err), ("customer".into(), "cus_nobody".into()));
    assert!(err.message().contains("cus_nobody"), "{err:?}");
    assert!(s.page("cus_nobody", 0, "").await.unwrap().shopping_lists.is_empty());
}

/// Products appear in the order first added; adding one again changes its
/// quantity, not its place. Every write changes the etag and moves the
/// update time, never the creation time. New items are available.
async fn items_keep_the_order_they_were_first_added(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let (milk, bread, eggs) = (s.product("Milk").await, s.product("Bread").await, s.product("Eggs").await);
    let list = s.list_of(&ana, "Groceries").await;

    let mut etags = vec![list.etag.clone()];
    let mut last = list.clone();
    for (product, quantity) in [(&milk, 2), (&bread, 1), (&eggs, 12), (&milk, 1)] {
        let next = s.add(&list.list_id, product, quantity, "").await.unwrap();
        assert!(micros(&next.update_time) >= micros(&last.update_time));
        assert_eq!(next.create_time, list.create_time);
        etags.push(next.etag.clone());
        last = next;
    }
    assert_eq!(items(&last), [(milk.clone(), 3), (bread.clone(), 1), (eggs.clone(), 12)]);
    assert!(last.items.iter().all(|i| i.available));
    etags.dedup();
    assert_eq!(etags.len(), 5, "every write has an etag of its own");

    // Removing and adding again puts a product last.
    s.remove(&list.list_id, &milk, "").await.unwrap();
    let again = s.add(&list.list_id, &milk, 1, "").await.unwrap();
    assert_eq!(items(&again), [(bread, 1), (eggs, 12), (milk, 1)]);
    assert_eq!(s.get(&list.list_id).await.unwrap(), again);
}

/// Adding a product already on the list adds to its quantity.
async fn adding_a_product_twice_sums_its_quantities(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    s.add(&list.list_id, &milk, 2, "").await.unwrap();
    let twice = s.add(&list.list_id, &milk, 5, "").await.unwrap();
    assert_eq!(items(&twice), [(milk, 7)]);
}

/// 1000 of a product is the most one list holds: reaching it is fine, one
/// more is FAILED_PRECONDITION and changes nothing.
async fn a_product_holds_at_most_1000_on_a_list(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    s.add(&list.list_id, &milk, 600, "").await.unwrap();
    let full = s.add(&list.list_id, &milk, 400, "").await.unwrap();
    assert_eq!(items(&full), [(milk.clone(), 1000)]);

    let err = s.add(&list.list_id, &milk, 1, "").await.unwrap_err();
    assert_eq!(precondition(&err), "QUANTITY");
    assert!(err.message().contains("1001"), "{err:?}");
    assert_eq!(s.get(&list.list_id).await.unwrap(), full, "unchanged, etag included");
}

/// Writers of one list take turns: of many simultaneous additions, none is
/// lost and each makes a revision of its own.
async fn concurrent_additions_to_one_list_lose_nothing(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (mut client, list_id, milk) = (s.shopping.clone(), list.list_id.clone(), milk.clone());
            tokio::spawn(async move { add(&mut client, &list_id, &milk, 1, "").await })
        })
        .collect();
    let mut etags = Vec::new();
    for call in calls {
        etags.push(call.await.unwrap().expect("every addition succeeds").etag);
    }
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 8, "each addition made its own revision");
    assert_eq!(items(&s.get(&list.list_id).await.unwrap()), [(milk, 8)]);
}

/// AddItem reports every bad field at once: ids and the quantity range.
async fn an_invalid_addition_names_every_bad_field(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    let err = s.add("", "", 0, "").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["list_id", "product_id", "quantity"]);
    for quantity in [0, -1, 1001, i32::MAX, i32::MIN] {
        let err = s.add(&list.list_id, &milk, quantity, "").await.unwrap_err();
        assert_eq!(bad_fields(&err), ["quantity"], "{quantity}");
    }
    let err = s.add(&"l".repeat(101), &"p".repeat(101), 1, "").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["list_id", "product_id"]);
    s.add(&list.list_id, &milk, 1000, "").await.expect("1000 at once is allowed");
}

/// A product the catalog does not know is NOT_FOUND, naming the product.
async fn an_unknown_product_cannot_be_added(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let list = s.list_of(&ana, "Groceries").await;
    let err = s.add(&list.list_id, "prd_nothing", 1, "").await.unwrap_err();
    assert_eq!(missing(&err), ("product".into(), "prd_nothing".into()));
    assert_eq!(s.get(&list.list_id).await.unwrap(), list);
}

/// A product the catalog discontinued is FAILED_PRECONDITION: only a
/// product on sale goes on a list.
async fn a_discontinued_product_cannot_be_added(db: TestDatabase) {
    // Asked of the catalog (shopping has not heard of the product from the
    // feed): refused at once. Known from the feed, a product discontinued
    // within the feed's lag may still be added, and is marked unavailable
    // when the discontinuation arrives (feed.rs).
    let (mut s, _proxies) = start_unfed(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    s.discontinue(&milk).await;
    let err = s.add(&list.list_id, &milk, 1, "").await.unwrap_err();
    assert_eq!(precondition(&err), "PRODUCT_STATE");
    assert!(err.message().contains(&milk), "{err:?}");
    assert_eq!(s.get(&list.list_id).await.unwrap(), list);
}

/// Removing a product takes it off the list, keeps the others in order,
/// and makes a new etag.
async fn removing_a_product_takes_it_off_the_list(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let (milk, bread, eggs) = (s.product("Milk").await, s.product("Bread").await, s.product("Eggs").await);
    let list = s.list_of(&ana, "Groceries").await;
    for product in [&milk, &bread, &eggs] {
        s.add(&list.list_id, product, 1, "").await.unwrap();
    }
    let before = s.get(&list.list_id).await.unwrap();
    let after = s.remove(&list.list_id, &bread, &before.etag).await.unwrap();
    assert_eq!(items(&after), [(milk, 1), (eggs, 1)]);
    assert_ne!(after.etag, before.etag);
    assert_eq!(s.get(&list.list_id).await.unwrap(), after);

    let err = s.remove(&list.list_id, "", "").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["product_id"]);
    let err = s.remove("", "", "").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["list_id", "product_id"]);
}

/// Removing a product that is not on the list succeeds and changes
/// nothing, not even the etag; the product need not exist anywhere.
async fn removing_a_product_that_is_not_on_the_list_changes_nothing(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    let with_milk = s.add(&list.list_id, &milk, 2, "").await.unwrap();
    for absent in ["prd_never_heard_of", "prd_another"] {
        let after = s.remove(&list.list_id, absent, &with_milk.etag).await.expect("harmless");
        assert_eq!(after, with_milk);
    }
    assert_eq!(s.get(&list.list_id).await.unwrap(), with_milk);
}

/// Optimistic concurrency: a write holding an old etag loses, on add, on
/// remove (even of an absent product) and on delete, with a
/// PreconditionFailure of type ETAG; the current etag is accepted.
async fn a_stale_etag_is_refused_on_add_remove_and_delete(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let (milk, bread) = (s.product("Milk").await, s.product("Bread").await);
    let list = s.list_of(&ana, "Groceries").await;
    let current = s.add(&list.list_id, &milk, 1, &list.etag).await.expect("the current etag adds");
    let stale = list.etag;

    let err = s.add(&list.list_id, &bread, 1, &stale).await.unwrap_err();
    assert_eq!(precondition(&err), "ETAG");
    let err = s.remove(&list.list_id, &milk, &stale).await.unwrap_err();
    assert_eq!(precondition(&err), "ETAG");
    let err = s.remove(&list.list_id, &bread, &stale).await.unwrap_err();
    assert_eq!(precondition(&err), "ETAG", "even when nothing would change");
    let err = s.delete(&list.list_id, &stale).await.unwrap_err();
    assert_eq!(precondition(&err), "ETAG");
    assert_eq!(s.get(&list.list_id).await.unwrap(), current, "nothing changed");

    let removed = s.remove(&list.list_id, &milk, &current.etag).await.expect("the current etag removes");
    s.delete(&list.list_id, &removed.etag).await.expect("the current etag deletes");
}

/// Deletion is for good: the list cannot be read, changed or deleted
/// again, and is no longer listed; the customer's other lists stay.
async fn a_deleted_list_is_gone(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let doomed = s.list_of(&ana, "Groceries").await;
    let kept = s.list_of(&ana, "Hardware").await;
    s.add(&doomed.list_id, &milk, 2, "").await.unwrap();
    let kept = s.add(&kept.list_id, &milk, 1, "").await.unwrap();

    s.delete(&doomed.list_id, "").await.expect("no etag deletes unconditionally");
    // Gone, and refused as another customer's list is (AIP-211).
    let id = doomed.list_id.as_str();
    assert_eq!(s.get(id).await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.add(id, &milk, 1, "").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.remove(id, &milk, "").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.delete(id, "").await.unwrap_err().code(), Code::PermissionDenied, "deleting twice");
    assert_eq!(s.page(&ana, 0, "").await.unwrap().shopping_lists, [kept]);
}

/// Keyset pages cover one customer's lists exactly once, in creation
/// order, with their items; other customers' lists never appear.
async fn listing_pages_through_a_customers_lists_once(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let bruno = s.customer("bruno@example.com").await;
    let milk = s.product("Milk").await;
    let mut created = Vec::new();
    for i in 0..5 {
        let list = s.list_of(&ana, &format!("List {i}")).await;
        created.push(if i % 2 == 0 { s.add(&list.list_id, &milk, i + 1, "").await.unwrap() } else { list });
        s.list_of(&bruno, &format!("Bruno's {i}")).await;
    }
    let mut listed = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let page = s.page(&ana, 2, &token).await.unwrap();
        assert!(page.shopping_lists.len() <= 2);
        listed.extend(page.shopping_lists);
        pages += 1;
        token = page.next_page_token;
        if token.is_empty() || pages > 10 {
            break;
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, created, "every list once, in order, with its items");

    // page_size 0 means the default; a huge one is capped, not refused.
    for page_size in [0, 1_000_000] {
        let all = s.page(&ana, page_size, "").await.unwrap();
        assert_eq!(all.shopping_lists.len(), 5);
        assert!(all.next_page_token.is_empty());
    }
    let brunos = s.page(&bruno, 0, "").await.unwrap().shopping_lists;
    assert!(brunos.len() == 5 && brunos.iter().all(|l| l.customer_id == bruno));
}

/// ListShoppingLists needs a customer_id; a page token is bound to the
/// customer it was issued for; garbage and negative sizes are refused. All
/// problems come in one answer.
async fn listing_needs_a_customer_and_refuses_foreign_tokens(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let bruno = s.customer("bruno@example.com").await;
    for i in 0..3 {
        s.list_of(&ana, &format!("List {i}")).await;
    }
    let token = s.page(&ana, 1, "").await.unwrap().next_page_token;
    assert!(!token.is_empty());

    let err = s.page(&bruno, 1, &token).await.unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"], "another customer's token");
    let err = s.page(&ana, 1, "not-a-token").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["page_token"]);
    let err = s.page("", -1, "not-a-token").await.unwrap_err();
    assert_eq!(bad_fields(&err), ["customer_id", "page_size", "page_token"]);
    assert_eq!(s.page(&ana, 1, &token).await.unwrap().shopping_lists.len(), 1, "its own customer's");
}

/// Unknown ids are PERMISSION_DENIED to a customer, as another customer's
/// lists are (AIP-211: ids cannot be probed); missing or oversized ids are
/// INVALID_ARGUMENT on the id field.
async fn missing_and_unknown_ids_get_their_codes(db: TestDatabase) {
    let mut s = start(db).await;
    s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    assert_eq!(s.get("lst_nope").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.add("lst_nope", &milk, 1, "").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.remove("lst_nope", &milk, "").await.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(s.delete("lst_nope", "r1").await.unwrap_err().code(), Code::PermissionDenied);

    assert_eq!(bad_fields(&s.get("").await.unwrap_err()), ["list_id"]);
    assert_eq!(bad_fields(&s.get(&"x".repeat(101)).await.unwrap_err()), ["list_id"]);
    assert_eq!(bad_fields(&s.delete("", "").await.unwrap_err()), ["list_id"]);
}
