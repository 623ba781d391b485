//! The anti-corruption layer of the offers context: the only code that
//! speaks the catalog's and customers' languages, and says what their
//! answers and events mean here. The questions themselves are asked, and
//! their answers read, by the platform's one upstream core
//! ([`hosts`](agora_platform::upstream::hosts)); offers only asks and
//! follows, never writes to an upstream.

use agora_contracts::agora::{
    catalog::v1::{ProductState, catalog_event},
    customers::v1::customer_event,
};
use agora_platform::{
    Error, UnitOfWork,
    feed::{Effects, Translate},
    wire::now_micros,
};

use crate::{
    domain::OfferEvent,
    store::{self, Withdrawn},
};

/// Offers, as the catalog's and customers' feeds change them: a product
/// that left the catalog's sale takes its offers with it, and a customer
/// who left takes their personal offers. What each event says of its
/// product or customer is kept by the platform besides
/// ([`known`](agora_platform::upstream::known)): a new offer is checked
/// against that, not asked of the upstreams. Every other event only moves
/// the cursor.
#[derive(Clone)]
pub struct Offers;

/// A change of offers' data that an upstream event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The catalog stopped selling the product: its offers are withdrawn.
    ProductLeftSale(String),
    /// The customer left: their personal offers are withdrawn.
    CustomerLeft(String),
}

#[tonic::async_trait]
impl Effects for Offers {
    type Change = Change;

    async fn apply(&self, uow: &mut UnitOfWork, change: Change) -> Result<(), Error> {
        let gone = match change {
            Change::ProductLeftSale(product_id) => Withdrawn::OfProduct(product_id),
            Change::CustomerLeft(customer_id) => Withdrawn::OfCustomer(customer_id),
        };
        let withdrawn = store::withdraw_all(uow, &gone, now_micros()).await?;
        if withdrawn > 0 {
            // Told to the replicas' caches of available offers.
            uow.record(&OfferEvent::OffersWithdrawn { count: withdrawn }).await?;
        }
        tracing::info!(change = ?gone, withdrawn, "offers withdrawn");
        Ok(())
    }
}

impl Translate<catalog_event::Kind> for Offers {
    fn translate(&self, event: catalog_event::Kind) -> Option<Change> {
        let product = match event {
            catalog_event::Kind::ProductCreated(e) => e.product?,
            catalog_event::Kind::ProductUpdated(e) => e.product?,
            catalog_event::Kind::ProductDiscontinued(e) => {
                return Some(Change::ProductLeftSale(e.product_id));
            }
        };
        // Only an active product is on sale: any other state takes the
        // product's offers away too.
        (product.state != ProductState::Active as i32).then_some(Change::ProductLeftSale(product.product_id))
    }
}

impl Translate<customer_event::Kind> for Offers {
    fn translate(&self, event: customer_event::Kind) -> Option<Change> {
        let customer_event::Kind::CustomerDeleted(e) = event else { return None };
        Some(Change::CustomerLeft(e.customer_id))
    }
}
