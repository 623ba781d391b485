//! Shared by the catalog's integration tests: a real catalog server on a
//! loopback port against a fresh database, and small helpers to call it.
#![allow(dead_code)]

pub use agora_contracts::agora::{catalog::v1 as pb, common::v1::Money};
use agora_platform::Settings;
use agora_testing::Channel;
pub use agora_testing::{TestDatabase, TestServer};
use pb::catalog_service_client::CatalogServiceClient;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// A running catalog, its client and its database (dropped last).
pub struct Catalog {
    /// As staff.
    pub client: CatalogServiceClient<Channel>,
    /// As the offers service (mTLS), which follows the change feed.
    pub follower: CatalogServiceClient<Channel>,
    pub server: TestServer,
    pub db: TestDatabase,
}

pub async fn start(db: TestDatabase) -> Catalog {
    start_with(db, |_| {}).await
}

pub async fn start_with(db: TestDatabase, tweak: impl FnOnce(&mut Settings)) -> Catalog {
    let mut settings = agora_testing::settings("catalog", &db);
    tweak(&mut settings);
    let app = agora_catalog::build(settings).await.expect("catalog builds");
    let server = TestServer::start(app).await;
    let client = CatalogServiceClient::new(server.channel.clone());
    let follower = CatalogServiceClient::new(server.channel_of_service("offers"));
    Catalog { client, follower, server, db }
}

/// A counter or gauge from the admin port, 0 when absent.
pub async fn metric(c: &Catalog, line_prefix: &str) -> f64 {
    metric_at(c.server.admin_addr, line_prefix).await
}

/// A counter or gauge from the admin port at `admin`, 0 when absent.
pub async fn metric_at(admin: std::net::SocketAddr, line_prefix: &str) -> f64 {
    let text = agora_testing::http_get(admin, "/metrics").await;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

pub async fn family(client: &mut CatalogServiceClient<Channel>, name: &str) -> pb::Family {
    client
        .create_family(pb::CreateFamilyRequest {
            family: Some(pb::Family { display_name: name.into(), ..Default::default() }),
        })
        .await
        .expect("family created")
        .into_inner()
        .family
        .expect("family in response")
}

pub fn new_product(family_id: &str, name: &str, amount_minor: i64) -> pb::Product {
    pb::Product {
        display_name: name.into(),
        description: format!("{name}, as sold"),
        family_id: family_id.into(),
        price: Some(Money { currency_code: "EUR".into(), amount_minor }),
        ..Default::default()
    }
}

pub async fn product(
    client: &mut CatalogServiceClient<Channel>,
    family_id: &str,
    name: &str,
    amount: i64,
) -> pb::Product {
    client
        .create_product(pb::CreateProductRequest {
            request_id: String::new(),
            product: Some(new_product(family_id, name, amount)),
        })
        .await
        .expect("product created")
        .into_inner()
        .product
        .expect("product in response")
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
