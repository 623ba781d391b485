//! A new list or item against a deletion or a discontinuation upstream,
//! with the race forced every time: the upstream's answer about the
//! customer (or the product) is held back at the proxy while the upstream
//! deletes the customer (discontinues the product) and shopping applies
//! that from the feed; then the answer, older than the change, reaches
//! shopping. The change wins: the write is refused, and no list of a
//! deleted customer, no available item of a discontinued product, is left.

use crate::common::*;
use agora_testing::{KEPT_DELETED, KEPT_DISCONTINUED};

agora_testing::on_both_backends!(
    a_list_is_refused_when_its_customer_is_deleted_while_customers_answers,
    an_item_is_refused_when_its_product_is_discontinued_while_the_catalog_answers,
);

async fn a_list_is_refused_when_its_customer_is_deleted_while_customers_answers(db: TestDatabase) {
    let (mut s, [_catalog_proxy, customers_proxy]) = start_unfed(db).await;
    let ana = s.customer("ana@example.com").await;
    let shopping_db = shopping_database(&s.shopping_db);

    let mut client = s.shopping_as(&ana);
    let call = {
        let list = pb::ShoppingList { customer_id: ana.clone(), title: "Week".into(), ..Default::default() };
        async move {
            client.create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) }).await
        }
    };
    let mut customers = s.customers.clone();
    let delete = async {
        let request = customers_pb::DeleteCustomerRequest { customer_id: ana.clone(), etag: String::new() };
        customers.delete_customer(request).await.expect("customer deleted");
    };
    let answer = customers_proxy.race("GetCustomer", call, delete, &shopping_db, KEPT_DELETED, &ana).await;

    let err = answer.expect_err("a list for a customer deleted before it was made");
    assert_eq!(missing(&err).0, "customer");
    let lists = s.page(&ana, 100, "").await.expect("a customer may page their lists").shopping_lists;
    assert!(lists.is_empty(), "lists of a deleted customer: {lists:?}");
}

async fn an_item_is_refused_when_its_product_is_discontinued_while_the_catalog_answers(db: TestDatabase) {
    let (mut s, [catalog_proxy, _customers_proxy]) = start_unfed(db).await;
    let ana = s.customer("ana@example.com").await;
    let list = s.list_of(&ana, "Week").await;
    let product = s.product("Kettle").await;
    let shopping_db = shopping_database(&s.shopping_db);

    let mut client = s.shopping_of(&list.list_id);
    let call = {
        let (list_id, product) = (list.list_id.clone(), product.clone());
        async move { add(&mut client, &list_id, &product, 1, "").await }
    };
    let mut catalog = s.catalog.clone();
    let discontinue = async {
        let request =
            catalog_pb::DiscontinueProductRequest { product_id: product.clone(), etag: String::new() };
        catalog.discontinue_product(request).await.expect("product discontinued");
    };
    let answer =
        catalog_proxy.race("GetProduct", call, discontinue, &shopping_db, KEPT_DISCONTINUED, &product).await;

    let err = answer.expect_err("an item of a product discontinued before it was added");
    assert_eq!(precondition(&err), "PRODUCT_STATE");
    let list = s.get(&list.list_id).await.expect("the list is there");
    assert!(availability(&list).iter().all(|(_, available)| !available), "an available item: {list:?}");
}
