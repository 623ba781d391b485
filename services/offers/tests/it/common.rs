//! The offers service among its upstreams: real catalog and customers
//! servers, each on its own fresh database, with the catalog reached
//! through a test proxy that can fail calls and records deadlines.
#![allow(dead_code)]

use std::time::Duration;

pub use agora_contracts::agora::{
    catalog::v1 as catalog_pb, common::v1::Money, customers::v1 as customers_pb, offers::v1 as pb,
};
use agora_offers::{OffersSettings, fallback::Fallback};
use agora_platform::{
    Settings,
    events::Transport,
    upstream::{UpstreamSettings, hosts::Addresses},
};
use agora_testing::Channel;
pub use agora_testing::{Proxy, TestDatabase, TestServer};
use catalog_pb::catalog_service_client::CatalogServiceClient;
use customers_pb::customer_service_client::CustomerServiceClient;
use pb::offer_service_client::OfferServiceClient;

pub const FALLBACK: &str =
    r#"[{"offer_id": "fallback-1", "product_id": "prd_house", "kind": "SPEED", "discount_percent": 5}]"#;

pub struct System {
    pub offers: OfferServiceClient<Channel>,
    pub catalog: CatalogServiceClient<Channel>,
    pub customers: CustomerServiceClient<Channel>,
    pub offers_server: TestServer,
    pub catalog_server: Option<TestServer>,
    pub customers_server: TestServer,
    pub catalog_proxy: Proxy,
    /// Between offers and customers, as the catalog's.
    pub customers_proxy: Proxy,
    pub offers_db: TestDatabase,
    pub catalog_db: TestDatabase,
    pub customers_db: TestDatabase,
    /// How the feeds travel, for every service of the system.
    pub events: Transport,
}

pub async fn start(offers_db: TestDatabase) -> System {
    start_with(offers_db, |_, _| {}).await
}

pub async fn start_with(
    offers_db: TestDatabase,
    tweak: impl FnOnce(&mut Settings, &mut OffersSettings),
) -> System {
    start_fed(offers_db, true, Transport::Watch, tweak).await
}

/// A system whose feeds travel on JetStream (`events`): the catalog and
/// customers relay their outboxes, offers reads the streams.
pub async fn start_on(offers_db: TestDatabase, events: Transport) -> System {
    start_fed(offers_db, true, events, |_, _| {}).await
}

/// A system whose offers cannot follow the upstreams' change feeds (the
/// proxies refuse them): offers hears of no product and no customer from
/// the feeds, so a new offer's product and customer are asked of their
/// upstreams, and the tests of those calls (retries, deadlines, the
/// breaker) do not race the feeds.
pub async fn start_unfed(offers_db: TestDatabase) -> System {
    start_with_unfed(offers_db, |_, _| {}).await
}

/// [`start_unfed`], with settings changed by `tweak`.
pub async fn start_with_unfed(
    offers_db: TestDatabase,
    tweak: impl FnOnce(&mut Settings, &mut OffersSettings),
) -> System {
    start_fed(offers_db, false, Transport::Watch, tweak).await
}

async fn start_fed(
    offers_db: TestDatabase,
    fed: bool,
    events: Transport,
    tweak: impl FnOnce(&mut Settings, &mut OffersSettings),
) -> System {
    let catalog_db = offers_db.another().await;
    let customers_db = offers_db.another().await;
    let on = |service, db: &TestDatabase| Settings {
        events: events.clone(),
        ..agora_testing::settings(service, db)
    };
    let catalog_server =
        TestServer::start(agora_catalog::build(on("catalog", &catalog_db)).await.expect("catalog builds"))
            .await;
    let customers_server = TestServer::start(
        agora_customers::build(on("customers", &customers_db)).await.expect("customers builds"),
    )
    .await;
    let catalog_proxy = Proxy::start(catalog_server.grpc_addr, "offers").await;
    let customers_proxy = Proxy::start(customers_server.grpc_addr, "offers").await;
    if !fed {
        catalog_proxy.refuse("WatchCatalogEvents");
        customers_proxy.refuse("WatchCustomerEvents");
    }

    let mut settings = on("offers", &offers_db);
    let mut offers = offers_settings(catalog_proxy.addr, customers_proxy.addr);
    tweak(&mut settings, &mut offers);
    let offers_server =
        TestServer::start(agora_offers::build_with(settings, offers).await.expect("offers builds")).await;
    System {
        offers: OfferServiceClient::new(offers_server.channel.clone()),
        catalog: CatalogServiceClient::new(catalog_server.channel.clone()),
        customers: CustomerServiceClient::new(customers_server.channel.clone()),
        offers_server,
        catalog_server: Some(catalog_server),
        customers_server,
        catalog_proxy,
        customers_proxy,
        offers_db,
        catalog_db,
        customers_db,
        events,
    }
}

/// Offers' settings for a catalog and a customers service at these addresses.
pub fn offers_settings(catalog: std::net::SocketAddr, customers: std::net::SocketAddr) -> OffersSettings {
    let upstreams = Addresses {
        catalog: UpstreamSettings::for_tests("catalog", vec![agora_testing::url(catalog)]),
        customers: UpstreamSettings::for_tests("customers", vec![agora_testing::url(customers)]),
    };
    OffersSettings { upstreams, fallback: Fallback::parse(FALLBACK).unwrap() }
}

impl System {
    /// Stops the offers service and starts a new one on the same database,
    /// as a crash and a restart would.
    pub async fn restart_offers(&mut self) {
        let settings =
            Settings { events: self.events.clone(), ..agora_testing::settings("offers", &self.offers_db) };
        let offers = offers_settings(self.catalog_proxy.addr, self.customers_proxy.addr);
        let fresh = TestServer::start(agora_offers::build_with(settings, offers).await.unwrap()).await;
        let old = std::mem::replace(&mut self.offers_server, fresh);
        drop(old);
        self.offers = OfferServiceClient::new(self.offers_server.channel.clone());
    }

    /// Stops the catalog and starts a new one on the same address and
    /// database: the upstream went away and came back.
    pub async fn restart_catalog(&mut self) {
        let old = self.catalog_server.take().expect("the catalog runs");
        let addr = old.grpc_addr;
        old.stop().await.unwrap();
        let mut settings = agora_testing::settings("catalog", &self.catalog_db);
        settings.grpc_addr = addr;
        settings.events = self.events.clone();
        let fresh = TestServer::start(agora_catalog::build(settings).await.unwrap()).await;
        self.catalog = CatalogServiceClient::new(fresh.channel.clone());
        self.catalog_server = Some(fresh);
    }

    /// The offers of `product_id` in `state`.
    pub async fn offers_of(&mut self, product_id: &str, state: pb::OfferState) -> Vec<pb::Offer> {
        let request = pb::ListOffersRequest {
            product_id: product_id.into(),
            state: state.into(),
            page_size: 1000,
            ..Default::default()
        };
        self.offers.list_offers(request).await.unwrap().into_inner().offers
    }

    /// A product on sale in a new family.
    pub async fn product(&mut self) -> String {
        let family = self
            .catalog
            .create_family(catalog_pb::CreateFamilyRequest {
                family: Some(catalog_pb::Family { display_name: "Screens".into(), ..Default::default() }),
            })
            .await
            .unwrap()
            .into_inner()
            .family
            .unwrap();
        let product = catalog_pb::Product {
            display_name: "Screen".into(),
            family_id: family.family_id,
            price: Some(Money { currency_code: "EUR".into(), amount_minor: 10_000 }),
            ..Default::default()
        };
        self.catalog
            .create_product(catalog_pb::CreateProductRequest {
                request_id: String::new(),
                product: Some(product),
            })
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap()
            .product_id
    }

    pub async fn discontinue(&mut self, product_id: &str) {
        self.catalog
            .discontinue_product(catalog_pb::DiscontinueProductRequest {
                product_id: product_id.into(),
                etag: String::new(),
            })
            .await
            .unwrap();
    }

    pub async fn customer(&mut self, email: &str) -> String {
        let customer = customers_pb::Customer {
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            email: email.into(),
            ..Default::default()
        };
        self.customers
            .create_customer(customers_pb::CreateCustomerRequest { customer: Some(customer) })
            .await
            .unwrap()
            .into_inner()
            .customer
            .unwrap()
            .customer_id
    }
}

/// A timestamp `seconds` from now.
pub fn in_seconds(seconds: i64) -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    prost_types::Timestamp { seconds: now.as_secs() as i64 + seconds, nanos: 0 }
}

/// An offer on `product_id` running from a minute ago for an hour.
pub fn offer(product_id: &str, customer_id: &str, discount: i32) -> pb::Offer {
    pb::Offer {
        product_id: product_id.into(),
        customer_id: customer_id.into(),
        kind: pb::OfferKind::Speed.into(),
        discount_percent: discount,
        start_time: Some(in_seconds(-60)),
        end_time: Some(in_seconds(3600)),
        ..Default::default()
    }
}

pub fn create(offer: pb::Offer) -> pb::CreateOfferRequest {
    pb::CreateOfferRequest { request_id: String::new(), offer: Some(offer) }
}

pub const BOUND: Duration = Duration::from_secs(10);
