//! Built for failure: the shopping service while catalog or customers is
//! down. The writes that need the missing upstream fail fast with
//! UNAVAILABLE naming it; everything else keeps working, health stays
//! SERVING, and a restarted upstream is used again without restarting
//! shopping.

use std::time::{Duration, Instant};

use crate::common::*;
use agora_testing::{health_status, wait_until};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const SHOPPING: &str = "agora.shopping.v1.ShoppingListService";

/// Failing fast means well under this, once the breaker is open.
const FAST: Duration = Duration::from_millis(50);

/// Calls `attempt` until its error says the circuit is open (bounded), then
/// times one more failing call and returns how long it took.
async fn time_a_call_once_the_breaker_opened<F, Fut>(mut attempt: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<pb::ShoppingList, Status>>,
{
    let opened = wait_until(BOUND, || {
        let call = attempt();
        async move { call.await.expect_err("the upstream is down").message().contains("circuit open") }
    })
    .await;
    assert!(opened, "the breaker never opened");
    let started = Instant::now();
    let err = attempt().await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    eprintln!("failing fast took {took:?}");
    took
}

async fn assert_still_serving(s: &Shop) {
    for service in ["", SHOPPING] {
        assert_eq!(
            health_status(&s.shopping_server.channel, service).await,
            Some(ServingStatus::Serving),
            "health of {service:?} while an upstream is down"
        );
    }
}

/// With the catalog stopped, AddItem of a product shopping has not heard
/// of fails with UNAVAILABLE naming the catalog, in well under 50 ms once
/// the breaker opened; a product shopping knows is added without the
/// catalog, reading, removing and deleting work, and shopping stays
/// SERVING. A catalog restarted on its old address is used again without
/// restarting shopping.
#[tokio::test]
async fn with_the_catalog_down_adding_fails_fast_and_works_again_after_a_restart() {
    let (mut s, _proxies) = start_unfed(TestDatabase::sqlite()).await;
    let ana = s.customer("ana@example.com").await;
    let (milk, bread, cheese) =
        (s.product("Milk").await, s.product("Bread").await, s.product("Cheese").await);
    let list = s.list_of(&ana, "Groceries").await;
    s.add(&list.list_id, &milk, 1, "").await.unwrap();
    s.add(&list.list_id, &bread, 1, "").await.unwrap();
    let doomed = s.list_of(&ana, "Doomed").await;
    let catalog_addr = s.stop_catalog().await;

    let err = s.add(&list.list_id, &cheese, 1, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("catalog"), "the upstream is named: {err:?}");
    let client = s.shopping.clone();
    let (list_id, product) = (list.list_id.clone(), cheese.clone());
    let took = time_a_call_once_the_breaker_opened(|| {
        let (mut client, list_id, product) = (client.clone(), list_id.clone(), product.clone());
        async move { add(&mut client, &list_id, &product, 1, "").await }
    })
    .await;
    assert!(took < FAST, "failing fast took {took:?}");

    // What shopping knows of the catalog's products is enough to add one.
    let with_both = s.add(&list.list_id, &milk, 1, "").await.expect("a known product needs no catalog");
    assert_eq!(items(&with_both), [(milk.clone(), 2), (bread.clone(), 1)]);
    // Nothing else needs the catalog.
    assert_eq!(s.get(&list.list_id).await.expect("reads still work"), with_both);
    assert_eq!(s.page(&ana, 0, "").await.expect("listing still works").shopping_lists.len(), 2);
    let removed = s.remove(&list.list_id, &bread, "").await.expect("removing still works");
    assert_eq!(items(&removed), [(milk.clone(), 2)]);
    s.delete(&doomed.list_id, "").await.expect("deleting still works");
    assert_still_serving(&s).await;

    s.restart_catalog(catalog_addr).await;
    let recovered = wait_until(BOUND, || {
        let (mut client, list_id, product) = (s.shopping.clone(), list.list_id.clone(), cheese.clone());
        async move { add(&mut client, &list_id, &product, 2, "").await.is_ok() }
    })
    .await;
    assert!(recovered, "shopping did not use the restarted catalog");
    assert_eq!(items(&s.get(&list.list_id).await.unwrap()), [(milk, 2), (cheese, 2)]);
}

/// With customers stopped, CreateShoppingList for a customer shopping has
/// not heard of fails with UNAVAILABLE naming customers, in well under
/// 50 ms once the breaker opened; a customer shopping knows gets a list
/// without customers, the other calls work, and shopping stays SERVING.
/// Customers restarted on its old address is used again without
/// restarting shopping.
#[tokio::test]
async fn with_customers_down_creating_fails_fast_and_works_again_after_a_restart() {
    let (mut s, _proxies) = start_unfed(TestDatabase::sqlite()).await;
    let bea = s.customer("bea@example.com").await;
    let ana = s.customer("ana@example.com").await;
    let milk = s.product("Milk").await;
    let list = s.list_of(&ana, "Groceries").await;
    let customers_addr = s.stop_customers().await;

    let err = s.create(&bea, "Another").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("customers"), "the upstream is named: {err:?}");
    let client = s.shopping.clone();
    let owner = bea.clone();
    let took = time_a_call_once_the_breaker_opened(|| {
        let (mut client, customer_id) = (client.clone(), owner.clone());
        async move {
            let list = pb::ShoppingList { customer_id, title: "Another".into(), ..Default::default() };
            client
                .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) })
                .await
                .map(|r| r.into_inner().shopping_list.expect("list in response"))
        }
    })
    .await;
    assert!(took < FAST, "failing fast took {took:?}");

    // A customer shopping knows needs no customers.
    let second = s.list_of(&ana, "Second").await;
    // Nothing else needs customers.
    let added = s.add(&list.list_id, &milk, 3, "").await.expect("adding needs only the catalog");
    assert_eq!(s.get(&list.list_id).await.expect("reads still work"), added);
    assert_eq!(
        s.page(&ana, 0, "").await.expect("listing still works").shopping_lists,
        [added, second.clone()]
    );
    s.remove(&list.list_id, &milk, "").await.expect("removing still works");
    s.delete(&list.list_id, "").await.expect("deleting still works");
    s.delete(&second.list_id, "").await.expect("deleting still works");
    assert_still_serving(&s).await;

    s.restart_customers(customers_addr).await;
    let recovered = wait_until(BOUND, || {
        let (mut client, customer_id) = (s.shopping_as(&bea), bea.clone());
        async move {
            let list = pb::ShoppingList { customer_id, title: "Back".into(), ..Default::default() };
            client
                .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) })
                .await
                .is_ok()
        }
    })
    .await;
    assert!(recovered, "shopping did not use the restarted customers");
    let titles: Vec<_> =
        s.page(&bea, 0, "").await.unwrap().shopping_lists.into_iter().map(|l| l.title).collect();
    assert_eq!(titles, ["Back"]);
}

/// A catalog that answers GetProduct OK but without the product breaks its
/// contract: the call is INTERNAL, never a guess at what the catalog meant,
/// and the list is left as it was. Offers answers the same (its own test).
#[tokio::test]
async fn a_catalog_answer_without_its_product_is_an_internal_error() {
    let (mut s, [catalog_proxy, _customers_proxy]) = start_unfed(TestDatabase::sqlite()).await;
    let product = s.product("Lamp").await;
    let customer = s.customer("ana@example.com").await;
    let list = s.list_of(&customer, "Home").await;
    catalog_proxy.answer_empty("GetProduct");
    let err = s.add(&list.list_id, &product, 1, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(err.message(), "internal error", "no detail leaks");
    assert!(s.get(&list.list_id).await.unwrap().items.is_empty(), "the list is as it was");
}
