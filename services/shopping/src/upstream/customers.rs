//! What shopping needs to know of customers: does a customer exist? Their
//! names and email stay with customers.

use agora_contracts::agora::customers::v1::{
    self as customers, customer_service_client::CustomerServiceClient,
};
use agora_platform::{
    Error,
    upstream::{UpstreamChannel, upstream_error},
};
use tonic::Code;

#[derive(Debug, Clone)]
pub struct Customers {
    client: CustomerServiceClient<UpstreamChannel>,
}

impl Customers {
    pub fn new(channel: UpstreamChannel) -> Self {
        Self { client: CustomerServiceClient::new(channel) }
    }

    /// Whether the customer exists, so a list can be made for them. The
    /// answer's personal data is dropped here: a list keeps the id only.
    pub async fn exists(&self, customer_id: &str) -> Result<bool, Error> {
        let request = customers::GetCustomerRequest { customer_id: customer_id.to_owned() };
        match self.client.clone().get_customer(request).await {
            Ok(_) => Ok(true),
            Err(status) if status.code() == Code::NotFound => Ok(false),
            Err(status) => Err(upstream_error("customers", status)),
        }
    }
}
