//! What offers needs to know of the catalog: can a product be put on offer?

use agora_contracts::agora::catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient};
use agora_platform::{
    Error,
    upstream::{UpstreamChannel, upstream_error},
};
use tonic::Code;

/// A product, as the offers context sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offerable {
    /// On sale: offers may be made on it.
    Yes,
    /// Discontinued: no new offers.
    Discontinued,
    /// The catalog has no such product.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Catalog {
    client: CatalogServiceClient<UpstreamChannel>,
}

impl Catalog {
    pub fn new(channel: UpstreamChannel) -> Self {
        Self { client: CatalogServiceClient::new(channel) }
    }

    pub async fn offerable(&self, product_id: &str) -> Result<Offerable, Error> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        match self.client.clone().get_product(request).await {
            Ok(response) => Ok(match response.into_inner().product.map(|p| p.state()) {
                Some(catalog::ProductState::Active) => Offerable::Yes,
                _ => Offerable::Discontinued,
            }),
            Err(status) if status.code() == Code::NotFound => Ok(Offerable::Unknown),
            Err(status) => Err(upstream_error("catalog", status)),
        }
    }
}
