//! The change feeds offers follows, and what their events mean here: a
//! product that left the catalog's sale takes its offers with it, and a
//! customer who left takes their personal offers. Every other event only
//! moves the cursor.

use agora_contracts::agora::{catalog::v1::catalog_event, customers::v1::customer_event};
use agora_platform::{
    Database, Error, UnitOfWork,
    feed::{Apply, consumer},
    server::Task,
    upstream::hosts,
    wire::now_micros,
};

use crate::store::{self, Withdrawn};

/// The consumers of both feeds, as background tasks.
pub fn follow(catalog: &hosts::Catalog, customers: &hosts::Customers, db: &Database) -> [Task; 2] {
    [
        consumer(catalog.watch_catalog_events(), Offers, db.clone()),
        consumer(customers.watch_customer_events(), Offers, db.clone()),
    ]
}

/// The offers context, as the feeds change it.
struct Offers;

#[tonic::async_trait]
impl Apply<catalog_event::Kind> for Offers {
    async fn apply(&self, uow: &mut UnitOfWork, event: catalog_event::Kind) -> Result<(), Error> {
        match event {
            catalog_event::Kind::ProductDiscontinued(e) => {
                withdraw(uow, Withdrawn::OfProduct(&e.product_id)).await
            }
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl Apply<customer_event::Kind> for Offers {
    async fn apply(&self, uow: &mut UnitOfWork, event: customer_event::Kind) -> Result<(), Error> {
        match event {
            customer_event::Kind::CustomerDeleted(e) => {
                withdraw(uow, Withdrawn::OfCustomer(&e.customer_id)).await
            }
            _ => Ok(()),
        }
    }
}

/// Withdraws the offers an event takes away.
async fn withdraw(uow: &mut UnitOfWork, which: Withdrawn<'_>) -> Result<(), Error> {
    let withdrawn = store::withdraw_all(uow, which, now_micros()).await?;
    tracing::info!(?which, withdrawn, "offers withdrawn");
    Ok(())
}
