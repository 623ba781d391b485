//! The anti-corruption layer of the offers context: the only code that
//! speaks the catalog's and customers' languages, and says what their
//! answers and events mean here. The questions themselves are asked, and
//! their answers read, by the platform's one upstream core
//! ([`hosts`](agora_platform::upstream::hosts)); offers only asks and
//! follows, never writes to an upstream.

use agora_contracts::agora::{
    catalog::v1::{self as catalog, catalog_event},
    customers::v1::{self as customers, customer_event},
};
use agora_platform::{
    Database, Error, UnitOfWork,
    feed::{Effects, Translate, consumer},
    middleware::Deadline,
    server::Task,
    upstream::hosts::Hosts,
    wire::now_micros,
};

use crate::store::{self, Withdrawn};

/// A product, as the offers context sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offerable {
    /// On sale: offers may be made on it.
    Yes,
    /// Not on sale (discontinued, or a state this context does not know):
    /// no new offers.
    Discontinued,
    /// The catalog has no such product.
    Unknown,
}

/// Whether offers may be made on the product now.
pub async fn offerable(
    hosts: &Hosts,
    product_id: &str,
    deadline: Option<Deadline>,
) -> Result<Offerable, Error> {
    let product: Option<catalog::Product> = hosts.catalog.get_product(product_id, deadline).await?;
    Ok(match product.map(|p| p.state()) {
        Some(catalog::ProductState::Active) => Offerable::Yes,
        Some(_) => Offerable::Discontinued,
        None => Offerable::Unknown,
    })
}

/// Whether a personal offer's customer exists. Nothing else of theirs is
/// kept: an offer holds the id only.
pub async fn customer_exists(hosts: &Hosts, id: &str, deadline: Option<Deadline>) -> Result<bool, Error> {
    let customer: Option<customers::Customer> = hosts.customers.get_customer(id, deadline).await?;
    Ok(customer.is_some())
}

/// Follows both feeds in the background: a product that left the catalog's
/// sale takes its offers with it, and a customer who left takes their
/// personal offers. Every other event only moves the cursor.
pub fn follow(hosts: &Hosts, db: &Database) -> [Task; 2] {
    [
        consumer(hosts.catalog.watch_catalog_events(), Offers, db.clone()),
        consumer(hosts.customers.watch_customer_events(), Offers, db.clone()),
    ]
}

/// The offers context, as the feeds change it.
struct Offers;

#[tonic::async_trait]
impl Effects for Offers {
    type Change = Withdrawn;

    async fn apply(&self, uow: &mut UnitOfWork, change: Withdrawn) -> Result<(), Error> {
        let withdrawn = store::withdraw_all(uow, &change, now_micros()).await?;
        tracing::info!(?change, withdrawn, "offers withdrawn");
        Ok(())
    }
}

impl Translate<catalog_event::Kind> for Offers {
    fn translate(&self, event: catalog_event::Kind) -> Option<Withdrawn> {
        let catalog_event::Kind::ProductDiscontinued(e) = event else { return None };
        Some(Withdrawn::OfProduct(e.product_id))
    }
}

impl Translate<customer_event::Kind> for Offers {
    fn translate(&self, event: customer_event::Kind) -> Option<Withdrawn> {
        let customer_event::Kind::CustomerDeleted(e) = event else { return None };
        Some(Withdrawn::OfCustomer(e.customer_id))
    }
}
