//! The gRPC adapter of the customers service: each handler converts the
//! request into domain values (every invalid field reported at once), asks
//! the store, and converts the answer back. Handlers stay short; the rules
//! live in `domain`, the SQL in `store`.
//!
//! The email is personal data: handlers log customer ids only, and no
//! answer but the customer's own record carries the address.

use std::pin::Pin;

use agora_contracts::agora::customers::v1::{self as pb, customer_service_server::CustomerService};
use agora_platform::{
    Error, Shutdown, Violations,
    outbox::{Outbox, StoredEvent},
    wire::{PageToken, page_size, timestamp_from_micros},
};
use futures_util::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use crate::{
    domain::{self, Customer, CustomerEvent, CustomerPatch, Email, NewCustomer},
    store::CustomerStore,
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What page tokens of ListCustomers are bound to: it has no filter, but a
/// token of another list must still be refused.
const LIST_FILTER: &str = "customers";

/// The customers' `CustomerService` implementation.
#[derive(Debug, Clone)]
pub struct CustomersApi {
    store: CustomerStore,
    outbox: Outbox,
    /// Ends open Watch streams when the server shuts down.
    shutdown: Shutdown,
}

impl CustomersApi {
    pub fn new(store: CustomerStore, outbox: Outbox, shutdown: Shutdown) -> Self {
        Self { store, outbox, shutdown }
    }
}

/// A stored outbox event as the published language tells it.
fn event_to_pb(stored: StoredEvent) -> Result<pb::CustomerEvent, Status> {
    let event: CustomerEvent = serde_json::from_str(&stored.payload).map_err(|e| {
        Status::from(Error::Internal(anyhow::Error::new(e).context("decoding an outbox event")))
    })?;
    let kind = match event {
        CustomerEvent::CustomerRegistered { customer_id } => {
            pb::customer_event::Kind::CustomerRegistered(pb::CustomerRegistered { customer_id })
        }
        CustomerEvent::CustomerDeleted { customer_id } => {
            pb::customer_event::Kind::CustomerDeleted(pb::CustomerDeleted { customer_id })
        }
    };
    Ok(pb::CustomerEvent {
        sequence: stored.sequence,
        occur_time: Some(timestamp_from_micros(stored.occur_time)),
        kind: Some(kind),
    })
}

fn customer_to_pb(c: Customer) -> pb::Customer {
    pb::Customer {
        etag: c.etag(),
        customer_id: c.id,
        given_name: c.given_name,
        family_name: c.family_name,
        email: c.email.as_str().to_owned(),
        create_time: Some(timestamp_from_micros(c.create_time)),
        update_time: Some(timestamp_from_micros(c.update_time)),
    }
}

impl TryFrom<pb::CreateCustomerRequest> for NewCustomer {
    type Error = Error;

    /// The customer to register; its id, etag and times are ignored.
    fn try_from(request: pb::CreateCustomerRequest) -> Result<Self, Error> {
        let Some(c) = request.customer else {
            return Err(Error::invalid("customer", "is required"));
        };
        let mut v = Violations::new();
        let given_name = v.check("customer.given_name", domain::parse_name(&c.given_name));
        let family_name = v.check("customer.family_name", domain::parse_name(&c.family_name));
        let email = v.check("customer.email", Email::parse(&c.email));
        v.finish()?;
        Ok(Self {
            given_name: given_name.unwrap_or_default(),
            family_name: family_name.unwrap_or_default(),
            email: email.expect("checked by finish"),
        })
    }
}

/// What an UpdateCustomer asks for: which customer, the etag the caller
/// read it at, and the fields to change.
#[derive(Debug)]
struct Update {
    id: String,
    etag: String,
    patch: CustomerPatch,
}

impl TryFrom<pb::UpdateCustomerRequest> for Update {
    type Error = Error;

    /// The id, the mask and the new values are checked together, so one
    /// answer names every problem. With no mask, every updatable field set
    /// in the request is updated (AIP-134).
    fn try_from(request: pb::UpdateCustomerRequest) -> Result<Self, Error> {
        let Some(c) = request.customer else {
            return Err(Error::invalid("customer", "is required"));
        };
        let mut v = Violations::new();
        let id = v.check("customer.customer_id", domain::parse_id(&c.customer_id));
        let paths: Vec<String> = match request.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths,
            _ => [
                (!c.given_name.is_empty(), "given_name"),
                (!c.family_name.is_empty(), "family_name"),
                (!c.email.is_empty(), "email"),
            ]
            .into_iter()
            .filter(|(set, _)| *set)
            .map(|(_, path)| path.to_owned())
            .collect(),
        };
        let mut patch = CustomerPatch::default();
        for path in &paths {
            match path.as_str() {
                "given_name" => {
                    patch.given_name = v.check("customer.given_name", domain::parse_name(&c.given_name))
                }
                "family_name" => {
                    patch.family_name = v.check("customer.family_name", domain::parse_name(&c.family_name))
                }
                "email" => patch.email = v.check("customer.email", Email::parse(&c.email)),
                "customer_id" | "create_time" | "update_time" | "etag" => {
                    v.add("update_mask", format!("{path:?} cannot be updated"))
                }
                other => v.add("update_mask", format!("{other:?} is not a field of Customer")),
            }
        }
        if paths.is_empty() {
            v.add("update_mask", "names no field to update");
        }
        v.finish()?;
        Ok(Self { id: id.unwrap_or_default(), etag: c.etag, patch })
    }
}

fn required_id(field: &str, raw: &str) -> Result<String, Error> {
    domain::parse_id(raw).map_err(|d| Error::invalid(field, d))
}

#[tonic::async_trait]
impl CustomerService for CustomersApi {
    async fn create_customer(
        &self,
        request: Request<pb::CreateCustomerRequest>,
    ) -> Result<Response<pb::CreateCustomerResponse>, Status> {
        let new = NewCustomer::try_from(request.into_inner())?;
        let customer = self.store.create_customer(new).await?;
        tracing::info!(customer_id = %customer.id, "customer registered");
        Ok(Response::new(pb::CreateCustomerResponse { customer: Some(customer_to_pb(customer)) }))
    }

    async fn get_customer(
        &self,
        request: Request<pb::GetCustomerRequest>,
    ) -> Result<Response<pb::GetCustomerResponse>, Status> {
        let id = required_id("customer_id", &request.into_inner().customer_id)?;
        let customer = self.store.get_customer(&id).await?;
        Ok(Response::new(pb::GetCustomerResponse { customer: Some(customer_to_pb(customer)) }))
    }

    async fn list_customers(
        &self,
        request: Request<pb::ListCustomersRequest>,
    ) -> Result<Response<pb::ListCustomersResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let limit = v.check("page_size", page_size(req.page_size));
        let after = v.check("page_token", PageToken::decode(&req.page_token, LIST_FILTER));
        v.finish()?;
        let page = self.store.list_customers(after.flatten(), limit.unwrap_or_default()).await?;
        Ok(Response::new(pb::ListCustomersResponse {
            customers: page.items.into_iter().map(customer_to_pb).collect(),
            next_page_token: page
                .next_after
                .map(|after| PageToken { after, filter: LIST_FILTER.into() }.encode())
                .unwrap_or_default(),
        }))
    }

    async fn update_customer(
        &self,
        request: Request<pb::UpdateCustomerRequest>,
    ) -> Result<Response<pb::UpdateCustomerResponse>, Status> {
        let update = Update::try_from(request.into_inner())?;
        let customer = self.store.update_customer(&update.id, &update.etag, &update.patch).await?;
        tracing::info!(customer_id = %customer.id, "customer updated");
        Ok(Response::new(pb::UpdateCustomerResponse { customer: Some(customer_to_pb(customer)) }))
    }

    async fn delete_customer(
        &self,
        request: Request<pb::DeleteCustomerRequest>,
    ) -> Result<Response<pb::DeleteCustomerResponse>, Status> {
        let req = request.into_inner();
        let id = required_id("customer_id", &req.customer_id)?;
        self.store.delete_customer(&id, &req.etag).await?;
        tracing::info!(customer_id = %id, "customer deleted");
        Ok(Response::new(pb::DeleteCustomerResponse {}))
    }

    type WatchCustomerEventsStream = ResponseStream<pb::WatchCustomerEventsResponse>;

    async fn watch_customer_events(
        &self,
        request: Request<pb::WatchCustomerEventsRequest>,
    ) -> Result<Response<Self::WatchCustomerEventsStream>, Status> {
        let after = request.into_inner().after_sequence;
        self.outbox.check_cursor(after).await?;
        let stream = self.outbox.watch(after, self.shutdown.clone()).map(|item| {
            let (stored, head) = item?;
            Ok(pb::WatchCustomerEventsResponse { event: Some(event_to_pb(stored)?), head_sequence: head })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
