//! What shopping needs to know of the catalog: can this product go on a
//! list? Its name, price and family stay with the catalog.

use agora_contracts::agora::catalog::v1::{self as catalog, catalog_service_client::CatalogServiceClient};
use agora_platform::{
    Error,
    upstream::{UpstreamChannel, upstream_error},
};
use tonic::Code;

/// A product, as the shopping context sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listable {
    /// On sale: it may go on a list.
    Yes,
    /// Known but not on sale (discontinued): no list takes it any more.
    NotOnSale,
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

    /// Whether the product may be added to a list now.
    pub async fn listable(&self, product_id: &str) -> Result<Listable, Error> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        match self.client.clone().get_product(request).await {
            Ok(response) => match response.into_inner().product.map(|p| p.state()) {
                Some(catalog::ProductState::Active) => Ok(Listable::Yes),
                Some(_) => Ok(Listable::NotOnSale),
                None => {
                    Err(Error::Internal(anyhow::anyhow!("catalog answered GetProduct without a product")))
                }
            },
            Err(status) if status.code() == Code::NotFound => Ok(Listable::Unknown),
            Err(status) => Err(upstream_error("catalog", status)),
        }
    }
}
