//! What shopping needs to know of customers: does a customer exist? Their
//! names and email stay with customers.

use agora_contracts::agora::customers::v1 as customers;
use agora_platform::{Error, middleware::Deadline, upstream::hosts};

/// Whether the customer exists, so a list can be made for them. The
/// answer's personal data is dropped here: a list keeps the id only.
pub async fn exists(
    customers: &hosts::Customers,
    id: &str,
    deadline: Option<Deadline>,
) -> Result<bool, Error> {
    let customer: Option<customers::Customer> = customers.get_customer(id, deadline).await?;
    Ok(customer.is_some())
}
