//! The runtime contract, seen from a client of the customers service:
//! health that tells the truth and reflection that lists what is served.
//! The platform's own tests cover the rest of the contract (deadlines, load
//! shedding, shutdown); these prove the customers service is wired into it.

use std::time::Duration;

use crate::common::*;
use agora_testing::{health_status, wait_for_health};
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
    let app = agora_customers::build(agora_testing::settings("customers", &db)).await.unwrap();
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
    let c = start(TestDatabase::sqlite()).await;
    let (names, files) =
        agora_testing::reflect(&c.server.channel, &format!("{CUSTOMERS}.CreateCustomer")).await;
    assert_eq!(
        names,
        [
            CUSTOMERS,
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"
        ]
    );
    assert!(files > 0, "the service's methods are described");
}
