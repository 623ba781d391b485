//! The change feeds shopping follows, translated into what they mean here:
//! a product that left the catalog's sale stays on the lists that hold it,
//! marked unavailable, and a customer who left takes their lists with them.
//! Every other event only moves the cursor.

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

use crate::store::ShoppingStore;

/// What a catalog event means for shopping.
#[derive(Debug)]
pub enum CatalogChange {
    /// The product is no longer sold: it is marked unavailable on every
    /// list that holds it.
    ProductDiscontinued(String),
    /// Nothing shopping cares about.
    Irrelevant,
}

/// What a customers event means for shopping.
#[derive(Debug)]
pub enum CustomerChange {
    /// The customer is gone: their lists are deleted.
    CustomerDeleted(String),
    /// Nothing shopping cares about.
    Irrelevant,
}

/// The catalog's change feed, applied to shopping's store.
pub struct CatalogFeed {
    client: CatalogServiceClient<Channel>,
    store: ShoppingStore,
}

impl CatalogFeed {
    pub fn new(settings: &UpstreamSettings, store: ShoppingStore) -> anyhow::Result<Self> {
        Ok(Self { client: CatalogServiceClient::new(feed_channel(settings)?), store })
    }
}

/// The customers change feed, applied to shopping's store.
pub struct CustomersFeed {
    client: CustomerServiceClient<Channel>,
    store: ShoppingStore,
}

impl CustomersFeed {
    pub fn new(settings: &UpstreamSettings, store: ShoppingStore) -> anyhow::Result<Self> {
        Ok(Self { client: CustomerServiceClient::new(feed_channel(settings)?), store })
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
            let lists = self.store.mark_unavailable(tx, &product_id).await?;
            tracing::info!(%product_id, lists, "product discontinued: marked unavailable on its lists");
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
            let lists = self.store.delete_lists_of(tx, &customer_id).await?;
            tracing::info!(%customer_id, lists, "customer deleted: their lists deleted");
        }
        Ok(())
    }
}
