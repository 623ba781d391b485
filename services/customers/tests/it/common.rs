//! Shared by the customers' integration tests: a real customers server on a
//! loopback port against a fresh database, and small helpers to call it.
#![allow(dead_code)]

pub use agora_contracts::agora::customers::v1 as pb;
use agora_platform::Settings;
use agora_testing::Channel;
pub use agora_testing::{TestDatabase, TestServer};
use pb::customer_service_client::CustomerServiceClient;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A running customers service, its client and its database (dropped last).
pub struct Customers {
    /// As staff.
    pub client: CustomerServiceClient<Channel>,
    /// As the offers service (mTLS), which follows the change feed.
    pub follower: CustomerServiceClient<Channel>,
    pub server: TestServer,
    pub db: TestDatabase,
}

pub async fn start(db: TestDatabase) -> Customers {
    start_with(db, |_| {}).await
}

pub async fn start_with(db: TestDatabase, tweak: impl FnOnce(&mut Settings)) -> Customers {
    let mut settings = agora_testing::settings("customers", &db);
    tweak(&mut settings);
    let app = agora_customers::build(settings).await.expect("customers builds");
    let server = TestServer::start(app).await;
    let client = CustomerServiceClient::new(server.channel.clone());
    let follower = CustomerServiceClient::new(server.channel_of_service("offers"));
    Customers { client, follower, server, db }
}

pub fn new_customer(given_name: &str, family_name: &str, email: &str) -> pb::Customer {
    pb::Customer {
        given_name: given_name.into(),
        family_name: family_name.into(),
        email: email.into(),
        ..Default::default()
    }
}

/// Registers a customer and returns it as the service answered.
pub async fn customer(
    client: &mut CustomerServiceClient<Channel>,
    given_name: &str,
    family_name: &str,
    email: &str,
) -> pb::Customer {
    client
        .create_customer(pb::CreateCustomerRequest {
            customer: Some(new_customer(given_name, family_name, email)),
        })
        .await
        .expect("customer created")
        .into_inner()
        .customer
        .expect("customer in response")
}

/// The fields named by the status's google.rpc.BadRequest, after checking
/// the code is INVALID_ARGUMENT.
pub fn bad_fields(status: &Status) -> Vec<String> {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("INVALID_ARGUMENT carries google.rpc.BadRequest")
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}
