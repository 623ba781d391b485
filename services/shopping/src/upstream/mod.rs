//! The anti-corruption layer of the shopping context: the only code that
//! speaks the catalog's and customers' languages, and says what their
//! answers and events mean here. The questions themselves are asked, and
//! their answers read, by the platform's one upstream core
//! ([`hosts`](agora_platform::upstream::hosts)); shopping only asks and
//! follows, never writes to an upstream, and keeps nothing of the answers
//! (a product's name and price, a customer's email) but the ids it had.

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

use crate::store;

/// A product, as the shopping context sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listable {
    /// On sale: it may go on a list.
    Yes,
    /// Known but not on sale (discontinued, or a state this context does
    /// not know): no list takes it any more.
    NotOnSale,
    /// The catalog has no such product.
    Unknown,
}

/// Whether the product may be added to a list now.
pub async fn listable(
    hosts: &Hosts,
    product_id: &str,
    deadline: Option<Deadline>,
) -> Result<Listable, Error> {
    let product: Option<catalog::Product> = hosts.catalog.get_product(product_id, deadline).await?;
    Ok(match product.map(|p| p.state()) {
        Some(catalog::ProductState::Active) => Listable::Yes,
        Some(_) => Listable::NotOnSale,
        None => Listable::Unknown,
    })
}

/// Whether a list's owner exists, so a list can be made for them.
pub async fn customer_exists(hosts: &Hosts, id: &str, deadline: Option<Deadline>) -> Result<bool, Error> {
    let customer: Option<customers::Customer> = hosts.customers.get_customer(id, deadline).await?;
    Ok(customer.is_some())
}

/// Follows both feeds in the background: a product that left the catalog's
/// sale stays on the lists that hold it, marked unavailable, and a customer
/// who left takes their lists with them. Every other event only moves the
/// cursor.
pub fn follow(hosts: &Hosts, db: &Database) -> [Task; 2] {
    [
        consumer(hosts.catalog.watch_catalog_events(), Lists, db.clone()),
        consumer(hosts.customers.watch_customer_events(), Lists, db.clone()),
    ]
}

/// What the feeds change on shopping lists.
#[derive(Debug)]
enum Change {
    /// The product is no longer sold: unavailable on every list.
    Discontinued(String),
    /// The customer is gone: their lists go too.
    CustomerDeleted(String),
}

/// Shopping lists, as the feeds change them.
struct Lists;

#[tonic::async_trait]
impl Effects for Lists {
    type Change = Change;

    async fn apply(&self, uow: &mut UnitOfWork, change: Change) -> Result<(), Error> {
        let lists = match &change {
            Change::Discontinued(product_id) => {
                store::mark_unavailable(uow, product_id, now_micros()).await?
            }
            Change::CustomerDeleted(customer_id) => store::delete_lists_of(uow, customer_id).await?,
        };
        tracing::info!(?change, lists, "lists changed by an upstream event");
        Ok(())
    }
}

impl Translate<catalog_event::Kind> for Lists {
    fn translate(&self, event: catalog_event::Kind) -> Option<Change> {
        let catalog_event::Kind::ProductDiscontinued(e) = event else { return None };
        Some(Change::Discontinued(e.product_id))
    }
}

impl Translate<customer_event::Kind> for Lists {
    fn translate(&self, event: customer_event::Kind) -> Option<Change> {
        let customer_event::Kind::CustomerDeleted(e) = event else { return None };
        Some(Change::CustomerDeleted(e.customer_id))
    }
}
