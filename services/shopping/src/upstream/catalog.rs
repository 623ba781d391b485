//! What shopping needs to know of the catalog: can this product go on a
//! list? Its name, price and family stay with the catalog.

use agora_contracts::agora::catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient};
use agora_platform::{
    Error,
    middleware::Deadline,
    upstream::{Upstream, UpstreamChannel, UpstreamSettings},
};

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

#[derive(Debug, Clone)]
pub struct Catalog(Upstream<CatalogServiceClient<UpstreamChannel>>);

impl Catalog {
    pub fn connect(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self(Upstream::connect(settings, CatalogServiceClient::new)?))
    }

    /// Whether the product may be added to a list now.
    pub async fn listable(&self, product_id: &str, deadline: Option<Deadline>) -> Result<Listable, Error> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        let answer = self.0.ask(deadline, request, |mut c, r| async move { c.get_product(r).await }).await?;
        let Some(answer) = answer else { return Ok(Listable::Unknown) };
        Ok(match self.0.required("GetProduct", "product", answer.product)?.state() {
            catalog::ProductState::Active => Listable::Yes,
            _ => Listable::NotOnSale,
        })
    }
}
