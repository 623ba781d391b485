//! The change feeds shopping follows, and what their events mean here: a
//! product that left the catalog's sale stays on the lists that hold it,
//! marked unavailable, and a customer who left takes their lists with them.
//! Every other event only moves the cursor.

use agora_contracts::agora::{catalog::v1::catalog_event, customers::v1::customer_event};
use agora_platform::{
    Database, Error, UnitOfWork,
    feed::{Apply, consumer},
    server::Task,
    upstream::hosts,
    wire::now_micros,
};

use crate::store;

/// The consumers of both feeds, as background tasks.
pub fn follow(catalog: &hosts::Catalog, customers: &hosts::Customers, db: &Database) -> [Task; 2] {
    [
        consumer(catalog.watch_catalog_events(), Lists, db.clone()),
        consumer(customers.watch_customer_events(), Lists, db.clone()),
    ]
}

/// Shopping lists, as the feeds change them.
struct Lists;

#[tonic::async_trait]
impl Apply<catalog_event::Kind> for Lists {
    async fn apply(&self, uow: &mut UnitOfWork, event: catalog_event::Kind) -> Result<(), Error> {
        if let catalog_event::Kind::ProductDiscontinued(e) = event {
            let lists = store::mark_unavailable(uow, &e.product_id, now_micros()).await?;
            tracing::info!(product_id = %e.product_id, lists, "product discontinued: marked unavailable on its lists");
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Apply<customer_event::Kind> for Lists {
    async fn apply(&self, uow: &mut UnitOfWork, event: customer_event::Kind) -> Result<(), Error> {
        if let customer_event::Kind::CustomerDeleted(e) = event {
            let lists = store::delete_lists_of(uow, &e.customer_id).await?;
            tracing::info!(customer_id = %e.customer_id, lists, "customer deleted: their lists deleted");
        }
        Ok(())
    }
}
