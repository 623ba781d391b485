//! The anti-corruption layer of the shopping context: the only code that
//! speaks the catalog's and customers' languages, and says what their
//! answers and events mean here. The questions themselves are asked, and
//! their answers read, by the platform's one upstream core
//! ([`hosts`](agora_platform::upstream::hosts)); shopping only asks and
//! follows, never writes to an upstream, and keeps nothing of the answers
//! (a product's name and price, a customer's email) but the ids it had and,
//! kept by the platform ([`known`](agora_platform::upstream::known)),
//! whether each product is on sale and each customer registered.

use agora_contracts::agora::{catalog::v1::catalog_event, customers::v1::customer_event};
use agora_platform::{
    Error, UnitOfWork,
    feed::{Effects, Translate},
    wire::now_micros,
};

use crate::store;

/// What the feeds change on shopping lists.
#[derive(Debug)]
pub enum Change {
    /// The product is no longer sold: unavailable on every list.
    Discontinued(String),
    /// The customer is gone: their lists go too.
    CustomerDeleted(String),
}

/// Shopping lists, as the catalog's and customers' feeds change them: a
/// product that left the catalog's sale stays on the lists that hold it,
/// marked unavailable, and a customer who left takes their lists with them.
/// Every other event only moves the cursor.
#[derive(Clone)]
pub struct Lists;

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
