//! What shopping needs to know of the catalog: can this product go on a
//! list? Its name, price and family stay with the catalog.

use agora_contracts::agora::catalog::v1 as catalog;
use agora_platform::{Error, middleware::Deadline, upstream::hosts};

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
    catalog: &hosts::Catalog,
    id: &str,
    deadline: Option<Deadline>,
) -> Result<Listable, Error> {
    Ok(match catalog.get_product(id, deadline).await?.map(|p| p.state()) {
        Some(catalog::ProductState::Active) => Listable::Yes,
        Some(_) => Listable::NotOnSale,
        None => Listable::Unknown,
    })
}
