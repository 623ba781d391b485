//! The change feeds offers follows, translated into what they mean here:
//! a product that left the catalog's sale takes its offers with it, and a
//! customer who left takes their personal offers. Every other event only
//! moves the cursor.

use agora_contracts::agora::{
    catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient},
    customers::v1::{self as customers, customer_service_client::CustomerServiceClient},
};
use agora_platform::{
    Error,
    feed::{FeedHandler, FeedItem, FeedStream},
    upstream::{UpstreamSettings, feed_channel},
    wire::micros_from_timestamp,
};
use futures_util::StreamExt as _;
use sqlx::{Any, Transaction};
use tonic::{Status, transport::Channel};

use crate::store::OfferStore;

/// What a catalog event means for offers.
#[derive(Debug)]
pub enum CatalogChange {
    /// The product is no longer sold: its offers are withdrawn.
    ProductDiscontinued(String),
    /// Nothing offers cares about.
    Irrelevant,
}

/// What a customers event means for offers.
#[derive(Debug)]
pub enum CustomerChange {
    /// The customer is gone: their personal offers are withdrawn.
    CustomerDeleted(String),
    Irrelevant,
}

pub struct CatalogFeed {
    client: CatalogServiceClient<Channel>,
}

impl CatalogFeed {
    pub fn new(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self { client: CatalogServiceClient::new(feed_channel(settings)?) })
    }
}

pub struct CustomersFeed {
    client: CustomerServiceClient<Channel>,
}

impl CustomersFeed {
    pub fn new(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self { client: CustomerServiceClient::new(feed_channel(settings)?) })
    }
}

fn occur_time(ts: Option<&prost_types::Timestamp>) -> i64 {
    ts.and_then(micros_from_timestamp).unwrap_or(0)
}

#[tonic::async_trait]
impl FeedHandler for CatalogFeed {
    type Event = CatalogChange;

    fn feed(&self) -> &'static str {
        "catalog"
    }

    async fn open(&self, after: i64) -> Result<FeedStream<CatalogChange>, Status> {
        let request = catalog::WatchCatalogEventsRequest { after_sequence: after };
        let stream = self.client.clone().watch_catalog_events(request).await?.into_inner();
        Ok(Box::pin(stream.map(|response| {
            let response = response?;
            let event = response.event.ok_or_else(|| Status::internal("catalog sent an empty event"))?;
            let change = match event.kind {
                Some(catalog::catalog_event::Kind::ProductDiscontinued(e)) => {
                    CatalogChange::ProductDiscontinued(e.product_id)
                }
                _ => CatalogChange::Irrelevant,
            };
            Ok(FeedItem {
                sequence: event.sequence,
                occur_time: occur_time(event.occur_time.as_ref()),
                head: response.head_sequence,
                event: change,
            })
        })))
    }

    async fn apply(&self, tx: &mut Transaction<'static, Any>, change: CatalogChange) -> Result<(), Error> {
        if let CatalogChange::ProductDiscontinued(product_id) = change {
            let n = OfferStore::withdraw_where(tx, "product_id", &product_id).await?;
            tracing::info!(%product_id, withdrawn = n, "product discontinued: its offers withdrawn");
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl FeedHandler for CustomersFeed {
    type Event = CustomerChange;

    fn feed(&self) -> &'static str {
        "customers"
    }

    async fn open(&self, after: i64) -> Result<FeedStream<CustomerChange>, Status> {
        let request = customers::WatchCustomerEventsRequest { after_sequence: after };
        let stream = self.client.clone().watch_customer_events(request).await?.into_inner();
        Ok(Box::pin(stream.map(|response| {
            let response = response?;
            let event = response.event.ok_or_else(|| Status::internal("customers sent an empty event"))?;
            let change = match event.kind {
                Some(customers::customer_event::Kind::CustomerDeleted(e)) => {
                    CustomerChange::CustomerDeleted(e.customer_id)
                }
                _ => CustomerChange::Irrelevant,
            };
            Ok(FeedItem {
                sequence: event.sequence,
                occur_time: occur_time(event.occur_time.as_ref()),
                head: response.head_sequence,
                event: change,
            })
        })))
    }

    async fn apply(&self, tx: &mut Transaction<'static, Any>, change: CustomerChange) -> Result<(), Error> {
        if let CustomerChange::CustomerDeleted(customer_id) = change {
            let n = OfferStore::withdraw_where(tx, "customer_id", &customer_id).await?;
            tracing::info!(%customer_id, withdrawn = n, "customer deleted: their personal offers withdrawn");
        }
        Ok(())
    }
}
