//! Who may call shopping: the authorization matrix of its policy. A list
//! is its customer's alone. Shopping calls catalog and customers itself,
//! over mTLS with its own identity, on every CreateShoppingList and AddItem.

use agora_testing::matrix;

use crate::common::*;
use pb::shopping_list_service_client::ShoppingListServiceClient;

#[tokio::test]
async fn every_rpc_answers_every_caller_as_the_policy_says() {
    let mut s = start(TestDatabase::sqlite()).await;
    let product = s.product("Milk").await;
    let owner = s.customer("matrix@example.com").await;
    let addr = s.shopping_server.grpc_addr;
    matrix::check("shopping", &agora_shopping::api::POLICY, async |method, role| {
        let mut client = ShoppingListServiceClient::new(matrix::channel(addr, role, &owner));
        let list_id = match method {
            "GetShoppingList" | "AddItem" | "RemoveItem" | "DeleteShoppingList" => {
                s.list_of(&owner, "Groceries").await.list_id
            }
            _ => String::new(),
        };
        match method {
            "CreateShoppingList" => {
                let list = pb::ShoppingList {
                    customer_id: owner.clone(),
                    title: "New".into(),
                    ..Default::default()
                };
                client
                    .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) })
                    .await
                    .map(drop)
            }
            "GetShoppingList" => {
                client.get_shopping_list(pb::GetShoppingListRequest { list_id }).await.map(drop)
            }
            "ListShoppingLists" => {
                let request =
                    pb::ListShoppingListsRequest { customer_id: owner.clone(), ..Default::default() };
                client.list_shopping_lists(request).await.map(drop)
            }
            "AddItem" => add(&mut client, &list_id, &product, 1, "").await.map(drop),
            "RemoveItem" => {
                let request =
                    pb::RemoveItemRequest { list_id, product_id: product.clone(), etag: String::new() };
                client.remove_item(request).await.map(drop)
            }
            "DeleteShoppingList" => client
                .delete_shopping_list(pb::DeleteShoppingListRequest { list_id, etag: String::new() })
                .await
                .map(drop),
            other => panic!("the matrix has no call of {other}"),
        }
    })
    .await;
}
