//! Shopping reacting to its upstreams' change feeds: discontinued products
//! are marked unavailable on the lists that hold them and deleted
//! customers take their lists with them, exactly once, across crashes of
//! shopping and outages of the catalog.

use std::time::Duration;

use crate::common::*;
use agora_platform::wire::micros_from_timestamp;
use agora_testing::{http_get, wait_until};
use tonic::Code;

agora_testing::on_both_backends!(
    discontinuing_a_product_marks_it_unavailable_on_every_list,
    deleting_a_customer_deletes_their_lists,
    a_consumer_killed_in_a_burst_resumes_and_applies_every_event_once,
    replaying_the_feeds_from_the_start_changes_nothing,
    a_product_and_a_customer_heard_of_need_no_upstream,
    an_item_added_within_the_feeds_lag_goes_unavailable_with_its_product,
);

fn update_micros(list: &pb::ShoppingList) -> i64 {
    micros_from_timestamp(list.update_time.as_ref().expect("update_time is set")).expect("a valid time")
}

/// Waits (bounded) until `list_id` reads back satisfying `condition`, and
/// says whether it did.
async fn wait_for_list(
    s: &Shop,
    list_id: &str,
    bound: Duration,
    condition: impl Fn(&pb::ShoppingList) -> bool,
) -> bool {
    let probe = s.shopping_of(list_id);
    wait_until(bound, || {
        let mut probe = probe.clone();
        let request = pb::GetShoppingListRequest { list_id: list_id.into() };
        let condition = &condition;
        async move {
            let list = probe.get_shopping_list(request).await.expect("the list reads").into_inner();
            condition(&list.shopping_list.expect("list in response"))
        }
    })
    .await
}

fn unavailable(product_id: &str) -> impl Fn(&pb::ShoppingList) -> bool + '_ {
    move |list| list.items.iter().any(|i| i.product_id == product_id && !i.available)
}

/// A discontinued product stays on every list that holds it, same quantity
/// and place, marked unavailable; other products stay available. Each list
/// it was on gets one new revision (so a new etag, and the old one is
/// refused) and a later update time; a list without it is left as it was.
async fn discontinuing_a_product_marks_it_unavailable_on_every_list(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let bob = s.customer("bob@example.com").await;
    let screen = s.product("Screen").await;
    let lamp = s.product("Lamp").await;
    let bread = s.product("Bread").await;
    let home = s.list_of(&ana, "Home").await;
    s.add(&home.list_id, &screen, 2, "").await.unwrap();
    let home = s.add(&home.list_id, &lamp, 1, "").await.unwrap();
    let office = s.list_of(&bob, "Office").await;
    s.add(&office.list_id, &lamp, 3, "").await.unwrap();
    let office = s.add(&office.list_id, &screen, 1, "").await.unwrap();
    let kitchen = s.list_of(&ana, "Kitchen").await;
    let kitchen = s.add(&kitchen.list_id, &bread, 4, "").await.unwrap();

    s.discontinue(&screen).await;
    for list in [&home, &office] {
        let marked = wait_for_list(&s, &list.list_id, BOUND, unavailable(&screen)).await;
        assert!(marked, "the discontinued product is still available on {}", list.title);
    }

    let home_now = s.get(&home.list_id).await.unwrap();
    assert_eq!(items(&home_now), [(screen.clone(), 2), (lamp.clone(), 1)], "items keep quantity and place");
    assert_eq!(availability(&home_now), [(screen.clone(), false), (lamp.clone(), true)]);
    let office_now = s.get(&office.list_id).await.unwrap();
    assert_eq!(items(&office_now), [(lamp.clone(), 3), (screen.clone(), 1)]);
    assert_eq!(availability(&office_now), [(lamp.clone(), true), (screen.clone(), false)]);
    for (before, now) in [(&home, &home_now), (&office, &office_now)] {
        assert_eq!(revision(now), revision(before) + 1, "one write for one discontinued product");
        assert!(update_micros(now) > update_micros(before), "the update time moved");
    }
    assert_eq!(s.get(&kitchen.list_id).await.unwrap(), kitchen, "a list without the product is untouched");

    // A client still holding the etag read before is told the list changed.
    let err = s.remove(&home.list_id, &lamp, &home.etag).await.unwrap_err();
    assert_eq!(precondition(&err), "ETAG");
    s.remove(&home.list_id, &screen, &home_now.etag).await.expect("the current etag is accepted");

    let metrics = http_get(s.shopping_server.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"agora_feed_lag_events{feed="catalog"}"#), "{metrics}");
    assert!(metrics.contains(r#"agora_feed_lag_seconds{feed="catalog"}"#), "{metrics}");
}

/// A deleted customer's lists are deleted, with their items; another
/// customer's lists, even with the same products, are left as they were.
async fn deleting_a_customer_deletes_their_lists(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let bob = s.customer("bob@example.com").await;
    let milk = s.product("Milk").await;
    let groceries = s.list_of(&ana, "Groceries").await;
    s.add(&groceries.list_id, &milk, 2, "").await.unwrap();
    let empty = s.list_of(&ana, "Someday").await;
    let bobs = s.list_of(&bob, "Groceries").await;
    let bobs = s.add(&bobs.list_id, &milk, 1, "").await.unwrap();

    s.customers
        .delete_customer(customers_pb::DeleteCustomerRequest {
            customer_id: ana.clone(),
            etag: String::new(),
        })
        .await
        .expect("customer deleted");
    let probe = s.shopping_as(&ana);
    let gone = wait_until(BOUND, || {
        let mut probe = probe.clone();
        let request =
            pb::ListShoppingListsRequest { customer_id: ana.clone(), page_size: 10, page_token: String::new() };
        async move { probe.list_shopping_lists(request).await.unwrap().into_inner().shopping_lists.is_empty() }
    })
    .await;
    assert!(gone, "the deleted customer's lists are still listed");
    for list in [&groceries, &empty] {
        // A list that is gone is refused as another customer's is (AIP-211).
        let err = s.get(&list.list_id).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    }
    assert_eq!(s.get(&bobs.list_id).await.unwrap(), bobs, "another customer's list is untouched");
    let page = s.page(&bob, 10, "").await.unwrap();
    assert_eq!(page.shopping_lists, [bobs]);
}

/// Shopping dies while a burst of discontinuations streams in, and a new
/// process resumes from the stored cursor. Every item ends unavailable, and
/// each list's revision moved exactly once per discontinued product it
/// held: no event was lost, none applied twice, none applied again after
/// the restart.
async fn a_consumer_killed_in_a_burst_resumes_and_applies_every_event_once(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let mut products = Vec::new();
    for i in 0..20 {
        products.push(s.product(&format!("Product {i}")).await);
    }
    // List k holds every (k+1)-th product: 20, 10, 7 and 5 of them.
    let mut lists = Vec::new();
    for k in 0..4 {
        let mut list = s.list_of(&ana, &format!("List {k}")).await;
        for product in products.iter().step_by(k + 1) {
            list = s.add(&list.list_id, product, 1, "").await.unwrap();
        }
        lists.push(list);
    }
    // The burst goes on while shopping is killed and restarted; it says
    // when half of it was sent.
    let mut catalog = s.catalog.clone();
    let (half_sent, on_half_sent) = tokio::sync::oneshot::channel();
    let burst = tokio::spawn({
        let products = products.clone();
        async move {
            let mut half_sent = Some(half_sent);
            for (i, product_id) in products.into_iter().enumerate() {
                let request = catalog_pb::DiscontinueProductRequest { product_id, etag: String::new() };
                catalog.discontinue_product(request).await.expect("product discontinued");
                if i == 9 {
                    let _ = half_sent.take().expect("sent once").send(());
                }
            }
        }
    });

    // Kill shopping in the middle of the burst, once it has applied some.
    tokio::time::timeout(BOUND, on_half_sent).await.expect("half the burst sent in time").unwrap();
    let first = lists[0].list_id.clone();
    let some = wait_for_list(&s, &first, BOUND, |l| l.items.iter().any(|i| !i.available)).await;
    assert!(some, "no discontinuation was applied");
    s.restart_shopping_after(async |db| {
        let db = shopping_database(db);
        let row = db
            .query("SELECT COUNT(*) AS n FROM list_items WHERE available = 0")
            .fetch_one()
            .await
            .expect("the items count");
        let marked: i64 = row.get("n").expect("a count");
        eprintln!("{marked} of 42 items marked when shopping was killed");
    })
    .await;
    burst.await.expect("the burst was sent");

    for before in &lists {
        let all = wait_for_list(&s, &before.list_id, BOUND, |l| l.items.iter().all(|i| !i.available)).await;
        assert!(all, "{} still holds available items after the restart", before.title);
    }
    for before in &lists {
        let now = s.get(&before.list_id).await.unwrap();
        assert_eq!(now.items.len(), before.items.len(), "{}: items are kept", before.title);
        assert_eq!(
            revision(&now),
            revision(before) + before.items.len() as i64,
            "{}: one revision per discontinued product on it",
            before.title
        );
    }
}

/// With its cursors lost, a restarted shopping reads both feeds again from
/// the start and applies every event a second time, which changes nothing:
/// a marked item is not marked again, a deleted customer's lists are not
/// there to delete. Lists keep their etag and update time.
async fn replaying_the_feeds_from_the_start_changes_nothing(db: TestDatabase) {
    let mut s = start(db).await;
    let ana = s.customer("ana@example.com").await;
    let bob = s.customer("bob@example.com").await;
    let screen = s.product("Screen").await;
    let lamp = s.product("Lamp").await;
    let home = s.list_of(&ana, "Home").await;
    s.add(&home.list_id, &screen, 1, "").await.unwrap();
    s.add(&home.list_id, &lamp, 1, "").await.unwrap();
    let bobs = s.list_of(&bob, "Office").await;
    s.add(&bobs.list_id, &screen, 1, "").await.unwrap();

    s.discontinue(&screen).await;
    s.customers
        .delete_customer(customers_pb::DeleteCustomerRequest {
            customer_id: bob.clone(),
            etag: String::new(),
        })
        .await
        .expect("customer deleted");
    assert!(
        wait_for_list(&s, &home.list_id, BOUND, unavailable(&screen)).await,
        "the product was not marked"
    );
    let (shop, bobs_id) = (&s, &bobs.list_id);
    let bob_gone = wait_until(BOUND, || async move {
        let mut probe = shop.shopping_of(bobs_id);
        probe.get_shopping_list(pb::GetShoppingListRequest { list_id: bobs_id.clone() }).await.is_err()
    })
    .await;
    assert!(bob_gone, "the deleted customer's list is still there");
    let applied = s.get(&home.list_id).await.unwrap();
    let cursors = (s.cursor("catalog").await, s.cursor("customers").await);
    assert!(cursors.0 > 0 && cursors.1 > 0, "{cursors:?}");

    s.restart_shopping_after(async |db| {
        let db = shopping_database(db);
        db.query("DELETE FROM feed_cursors").execute().await.expect("the cursors are forgotten");
    })
    .await;
    let shop = &s;
    let replayed = wait_until(BOUND, || async move {
        (shop.cursor("catalog").await, shop.cursor("customers").await) == cursors
    })
    .await;
    assert!(replayed, "the feeds were not read again up to {cursors:?}");
    assert_eq!(s.get(&home.list_id).await.unwrap(), applied, "the replay changed the list");
    assert_eq!(s.get(&bobs.list_id).await.unwrap_err().code(), Code::PermissionDenied);
}

/// The catalog goes away and comes back on the same address and database;
/// a product discontinued after its return reaches shopping through the
/// reconnected feed.
#[tokio::test]
async fn the_consumer_reconnects_and_catches_up_after_the_catalog_returns() {
    let mut s = start(TestDatabase::sqlite()).await;
    let ana = s.customer("ana@example.com").await;
    let screen = s.product("Screen").await;
    let list = s.list_of(&ana, "Home").await;
    s.add(&list.list_id, &screen, 1, "").await.unwrap();
    let addr = s.stop_catalog().await;
    s.restart_catalog(addr).await;
    s.discontinue(&screen).await;
    // The consumer may be in its longest backoff (5 s) when the catalog returns.
    let caught_up = wait_for_list(&s, &list.list_id, Duration::from_secs(20), unavailable(&screen)).await;
    assert!(caught_up, "the consumer did not catch up after the catalog returned");
}

/// A product and a customer shopping has heard of (from the feeds, or
/// from an answer it kept) are not asked of their upstreams again.
async fn a_product_and_a_customer_heard_of_need_no_upstream(db: TestDatabase) {
    let (mut s, [catalog_proxy, customers_proxy]) = start_unfed(db).await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let first = s.list_of(&ana, "First").await;
    s.add(&first.list_id, &milk, 1, "").await.expect("asked of the catalog");
    let (products, customers) =
        (catalog_proxy.calls_of("GetProduct"), customers_proxy.calls_of("GetCustomer"));
    assert_eq!((products, customers), (1, 1));
    let second = s.list_of(&ana, "Second").await;
    s.add(&second.list_id, &milk, 2, "").await.expect("kept");
    assert_eq!(catalog_proxy.calls_of("GetProduct"), products, "the catalog was asked again");
    assert_eq!(customers_proxy.calls_of("GetCustomer"), customers, "customers was asked again");
}

/// The defined answer within the feed's lag: a product discontinued after
/// shopping last heard of it may still be added to a list, and the
/// discontinuation, when the feed brings it, marks it unavailable there
/// as on every list; from then on the product is refused.
async fn an_item_added_within_the_feeds_lag_goes_unavailable_with_its_product(db: TestDatabase) {
    let (mut s, [catalog_proxy, _customers_proxy]) = start_unfed(db).await;
    let ana = s.customer("ana@example.com").await;
    let lamp = s.product("Lamp").await;
    let home = s.list_of(&ana, "Home").await;
    s.add(&home.list_id, &lamp, 1, "").await.expect("on sale");
    s.discontinue(&lamp).await;
    let office = s.list_of(&ana, "Office").await;
    s.add(&office.list_id, &lamp, 1, "").await.expect("shopping has not heard yet");

    catalog_proxy.stop_refusing();
    for list in [&home, &office] {
        assert!(
            wait_for_list(&s, &list.list_id, BOUND * 2, unavailable(&lamp)).await,
            "{} kept it",
            list.title
        );
    }
    let err = s.add(&office.list_id, &lamp, 1, "").await.unwrap_err();
    assert_eq!(precondition(&err), "PRODUCT_STATE");
}
