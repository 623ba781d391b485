//! The runtime contract, seen from a client of the customers service:
//! health that tells the truth and reflection that lists what is served.
//! The platform's own tests cover the rest of the contract (deadlines, load
//! shedding, shutdown); these prove the customers service is wired into it.

mod common;

use std::time::Duration;

use agora_platform::testing::{health_status, wait_for_health};
use common::*;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const CUSTOMERS: &str = "agora.customers.v1.CustomerService";

/// Once started, the whole server and the customers service report SERVING.
#[tokio::test]
async fn health_is_serving_once_started() {
    let c = start(TestDatabase::sqlite()).await;
    for service in ["", CUSTOMERS] {
        assert_eq!(
            health_status(&c.server.channel, service).await,
            Some(ServingStatus::Serving),
            "{service:?}"
        );
    }
    let err = HealthClient::new(c.server.channel.clone())
        .check(HealthCheckRequest { service: "agora.catalog.v1.CatalogService".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "the catalog is not served here");
}

/// Health is NOT_SERVING while the database is missing, turns SERVING once
/// it answers and the migrations ran, and NOT_SERVING again when it goes.
#[tokio::test]
async fn health_follows_the_database() {
    let Some(db) = TestDatabase::postgres().await else {
        return;
    };
    db.drop_now().await;
    let app = agora_customers::build(agora_platform::testing::settings(&db)).await.unwrap();
    let server = TestServer::start_unready(app).await;
    let ch = server.channel.clone();
    wait_for_health(&ch, CUSTOMERS, ServingStatus::NotServing, Duration::from_secs(10)).await;
    db.create_now().await;
    wait_for_health(&ch, CUSTOMERS, ServingStatus::Serving, Duration::from_secs(20)).await;
    let mut client = pb::customer_service_client::CustomerServiceClient::new(ch.clone());
    customer(&mut client, "Ana", "Lima", "ana@example.com").await;
    db.drop_now().await;
    wait_for_health(&ch, CUSTOMERS, ServingStatus::NotServing, Duration::from_secs(10)).await;
    server.stop().await.unwrap();
}

/// `grpcurl list` works without proto files: reflection names the customers
/// service, health and reflection itself, and describes the methods.
#[tokio::test]
async fn reflection_lists_the_services_of_this_server() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let c = start(TestDatabase::sqlite()).await;
    let mut client = ServerReflectionClient::new(c.server.channel.clone());
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol(format!("{CUSTOMERS}.CreateCustomer")),
    ]
    .map(|m| ServerReflectionRequest { host: String::new(), message_request: Some(m) });
    let mut responses =
        client.server_reflection_info(tokio_stream::iter(requests)).await.unwrap().into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let mut names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            CUSTOMERS,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ]
    );
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected file descriptors");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
