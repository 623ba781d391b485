//! The change feeds shopping follows, and what their events mean here: a
//! product that left the catalog's sale stays on the lists that hold it,
//! marked unavailable, and a customer who left takes their lists with them.
//! Every other event only moves the cursor.

use agora_contracts::agora::{
    catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient},
    customers::v1::{self as customers, customer_service_client::CustomerServiceClient},
};
use agora_platform::{
    Error, UnitOfWork,
    feed::Follower,
    upstream::{UpstreamSettings, feed_channel},
    wire::now_micros,
};
use tonic::{Status, Streaming, transport::Channel};

use crate::store;

/// The catalog's feed: a discontinued product is marked unavailable on
/// every list that holds it.
pub struct CatalogFeed(CatalogServiceClient<Channel>);

impl CatalogFeed {
    pub fn connect(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self(CatalogServiceClient::new(feed_channel(settings)?)))
    }
}

#[tonic::async_trait]
impl Follower for CatalogFeed {
    type Message = catalog::WatchCatalogEventsResponse;

    fn feed(&self) -> &'static str {
        "catalog"
    }

    async fn open(&self, after: i64) -> Result<Streaming<Self::Message>, Status> {
        let request = catalog::WatchCatalogEventsRequest { after_sequence: after };
        Ok(self.0.clone().watch_catalog_events(request).await?.into_inner())
    }

    async fn apply(&self, uow: &mut UnitOfWork, event: catalog::catalog_event::Kind) -> Result<(), Error> {
        if let catalog::catalog_event::Kind::ProductDiscontinued(e) = event {
            let lists = store::mark_unavailable(uow, &e.product_id, now_micros()).await?;
            tracing::info!(product_id = %e.product_id, lists, "product discontinued: marked unavailable on its lists");
        }
        Ok(())
    }
}

/// The customers feed: a deleted customer's lists are deleted.
pub struct CustomersFeed(CustomerServiceClient<Channel>);

impl CustomersFeed {
    pub fn connect(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self(CustomerServiceClient::new(feed_channel(settings)?)))
    }
}

#[tonic::async_trait]
impl Follower for CustomersFeed {
    type Message = customers::WatchCustomerEventsResponse;

    fn feed(&self) -> &'static str {
        "customers"
    }

    async fn open(&self, after: i64) -> Result<Streaming<Self::Message>, Status> {
        let request = customers::WatchCustomerEventsRequest { after_sequence: after };
        Ok(self.0.clone().watch_customer_events(request).await?.into_inner())
    }

    async fn apply(&self, uow: &mut UnitOfWork, event: customers::customer_event::Kind) -> Result<(), Error> {
        if let customers::customer_event::Kind::CustomerDeleted(e) = event {
            let lists = store::delete_lists_of(uow, &e.customer_id).await?;
            tracing::info!(customer_id = %e.customer_id, lists, "customer deleted: their lists deleted");
        }
        Ok(())
    }
}
