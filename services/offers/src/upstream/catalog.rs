//! What offers needs to know of the catalog: can a product be put on offer?

use agora_contracts::agora::catalog::v1 as catalog;
use agora_platform::{Error, middleware::Deadline, upstream::hosts};

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
    catalog: &hosts::Catalog,
    id: &str,
    deadline: Option<Deadline>,
) -> Result<Offerable, Error> {
    Ok(match catalog.get_product(id, deadline).await?.map(|p| p.state()) {
        Some(catalog::ProductState::Active) => Offerable::Yes,
        Some(_) => Offerable::Discontinued,
        None => Offerable::Unknown,
    })
}
