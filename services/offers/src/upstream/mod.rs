//! The anti-corruption layer of the offers context: the only code that
//! speaks the catalog's and customers' languages, and says what their
//! answers and events mean here. The questions themselves are asked, and
//! their answers read, by the platform's one upstream core
//! ([`hosts`](agora_platform::upstream::hosts)); offers only asks and
//! follows, never writes to an upstream.

use agora_contracts::agora::{catalog::v1::catalog_event, customers::v1::customer_event};
use agora_platform::{
    Error, UnitOfWork,
    feed::{Effects, Translate},
    wire::now_micros,
};

use crate::store::{self, Withdrawn};

/// Offers, as the catalog's and customers' feeds change them: a product
/// that left the catalog's sale takes its offers with it, and a customer who
/// left takes their personal offers. Every other event only moves the cursor.
#[derive(Clone)]
pub struct Offers;

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
