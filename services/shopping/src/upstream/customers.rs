//! What shopping needs to know of customers: does a customer exist? Their
//! names and email stay with customers.

use agora_contracts::agora::customers::v1::{
    self as customers, customer_service_client::CustomerServiceClient,
};
use agora_platform::{
    Error,
    middleware::Deadline,
    upstream::{Upstream, UpstreamChannel, UpstreamSettings},
};

#[derive(Debug, Clone)]
pub struct Customers(Upstream<CustomerServiceClient<UpstreamChannel>>);

impl Customers {
    pub fn connect(settings: &UpstreamSettings) -> anyhow::Result<Self> {
        Ok(Self(Upstream::connect(settings, CustomerServiceClient::new)?))
    }

    /// Whether the customer exists, so a list can be made for them. The
    /// answer's personal data is dropped here: a list keeps the id only.
    pub async fn exists(&self, customer_id: &str, deadline: Option<Deadline>) -> Result<bool, Error> {
        let request = customers::GetCustomerRequest { customer_id: customer_id.to_owned() };
        let answer = self.0.ask(deadline, request, |mut c, r| async move { c.get_customer(r).await }).await?;
        Ok(answer.is_some())
    }
}
