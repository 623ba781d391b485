//! What offers needs to know of the catalog: can a product be put on offer?

use agora_contracts::agora::catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient};
use agora_platform::{
    Error,
    middleware::Deadline,
    upstream::{Upstream, UpstreamChannel, UpstreamSettings},
};

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

#[derive(Debug, Clone)]
pub struct Catalog(Upstream<CatalogServiceClient<UpstreamChannel>>);

impl Catalog {
    pub fn connect(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self(Upstream::connect(settings, CatalogServiceClient::new)?))
    }

    pub async fn offerable(&self, product_id: &str, deadline: Option<Deadline>) -> Result<Offerable, Error> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        let answer = self.0.ask(deadline, request, |mut c, r| async move { c.get_product(r).await }).await?;
        let Some(answer) = answer else { return Ok(Offerable::Unknown) };
        Ok(match self.0.required("GetProduct", "product", answer.product)?.state() {
            catalog::ProductState::Active => Offerable::Yes,
            _ => Offerable::Discontinued,
        })
    }
}
