//! What offers needs to know of customers: does a customer exist?

use agora_contracts::agora::customers::v1 as customers;
use agora_platform::{Error, middleware::Deadline, upstream::hosts};

/// Whether the customer exists. Nothing else of theirs is kept: an offer
/// holds the id only.
pub async fn exists(
    customers: &hosts::Customers,
    id: &str,
    deadline: Option<Deadline>,
) -> Result<bool, Error> {
    let customer: Option<customers::Customer> = customers.get_customer(id, deadline).await?;
    Ok(customer.is_some())
}
