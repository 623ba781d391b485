//! The runtime contract, seen from a client of the shopping service:
//! reflection that lists what is served, health that does not depend on
//! the upstreams, and configuration errors that name the bad variable. The
//! platform's own tests cover the rest of the contract; these prove the
//! shopping service is wired into it.

use std::process::Command;

use crate::common::*;
use agora_platform::upstream::UpstreamSettings;
use agora_shopping::ShoppingSettings;
use agora_testing::health_status;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const SHOPPING: &str = "agora.shopping.v1.ShoppingListService";

/// `grpcurl list` works without proto files: reflection names the shopping
/// service, health and reflection itself, and describes the methods.
#[tokio::test]
async fn reflection_lists_the_services_of_this_server() {
    let s = start(TestDatabase::sqlite()).await;
    let (names, files) =
        agora_testing::reflect(&s.shopping_server.channel, &format!("{SHOPPING}.AddItem")).await;
    assert_eq!(
        names,
        [
            SHOPPING,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"
        ]
    );
    assert!(files > 0, "the service's methods are described");
}

/// Shopping starts, turns SERVING and answers what needs no upstream while
/// catalog and customers have never been up: its health is its own
/// database's. The calls that need an upstream say which one is missing.
#[tokio::test]
async fn shopping_serves_without_its_upstreams() {
    let nowhere = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        agora_testing::url(listener.local_addr().unwrap())
    };
    let db = TestDatabase::sqlite();
    let upstreams = ShoppingSettings {
        catalog: UpstreamSettings::for_tests("catalog", vec![nowhere.clone()]),
        customers: UpstreamSettings::for_tests("customers", vec![nowhere]),
    };
    let app = agora_shopping::build_with(agora_testing::settings("shopping", &db), upstreams).await.unwrap();
    let server = TestServer::start(app).await;
    for service in ["", SHOPPING] {
        assert_eq!(
            health_status(&server.channel, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
    let mut client = pb::shopping_list_service_client::ShoppingListServiceClient::new(
        server.channel_as(&agora_testing::Who::customer("cus_x")),
    );
    let err =
        client.get_shopping_list(pb::GetShoppingListRequest { list_id: "lst_x".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let lists = client
        .list_shopping_lists(pb::ListShoppingListsRequest {
            customer_id: "cus_x".into(),
            ..Default::default()
        })
        .await
        .expect("listing needs no upstream");
    assert!(lists.into_inner().shopping_lists.is_empty());

    let list =
        pb::ShoppingList { customer_id: "cus_x".into(), title: "Groceries".into(), ..Default::default() };
    let err = client
        .create_shopping_list(pb::CreateShoppingListRequest { shopping_list: Some(list) })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("customers"), "{err:?}");
    // A list of cus_x's (made while customers was up, say): adding to it
    // needs the catalog.
    db.execute(
        "INSERT INTO shopping_lists (list_id, customer_id, title, revision, create_time, update_time) \
         VALUES ('lst_x', 'cus_x', 'Groceries', 1, 0, 0)",
    )
    .await;
    let err = add(&mut client, "lst_x", "prd_x", 1, "").await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("catalog"), "{err:?}");
}

/// A bad upstream address stops the process at start, with exit code 2 and
/// a message naming every bad variable.
#[test]
fn bad_upstream_addresses_stop_the_process_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_agora-shopping"))
        .envs(agora_testing::pki().env("shopping"))
        .env("AGORA_GRPC_ADDR", "127.0.0.1:0")
        .env("AGORA_ADMIN_ADDR", "127.0.0.1:0")
        .env("AGORA_CATALOG_ADDRS", "catalog:50051")
        .env("AGORA_CUSTOMERS_ADDRS", "http://customers:50052,ftp://elsewhere")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("AGORA_CATALOG_ADDRS") && stderr.contains("AGORA_CUSTOMERS_ADDRS"), "{stderr}");
}
