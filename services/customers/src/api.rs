//! The gRPC adapter of the customers service: each handler converts the
//! request into domain values (every invalid field reported at once), runs
//! the use case (a read, or a unit of work around the aggregate's own
//! method), and converts the answer back. The rules live in `domain`, the
//! SQL in `store`.
//!
//! The email is personal data: handlers log customer ids only, and no
//! answer but the customer's own record carries the address.

use agora_contracts::agora::customers::v1::{
    self as pb,
    customer_service_server::{CustomerService, SERVICE_NAME},
};
use agora_platform::{
    Database, Error, Shutdown, Violations,
    outbox::{Outbox, ResponseStream},
    security::{Access, Audit, Grant, Policy, Rule},
    wire::{
        Answer, Paging, new_id, now_micros, reply, required, required_id, timestamp_from_micros, update_paths,
    },
};
use tonic::Request;

use crate::{
    domain::{self, Customer, CustomerEvent, CustomerPatch, Email, NewCustomer},
    store,
};

/// Who may call what. Staff manage customers; a customer reads, updates and
/// deletes their own record only; offers and shopping get what the context
/// map grants them (GetCustomer and the change feed).
pub const POLICY: Policy = Policy {
    service: SERVICE_NAME,
    rules: &[
        Rule::new("CreateCustomer", Access::Staff).audited(),
        Rule::new("GetCustomer", Access::StaffOrOwner),
        Rule::new("ListCustomers", Access::Staff),
        Rule::new("UpdateCustomer", Access::StaffOrOwner).audited(),
        Rule::new("DeleteCustomer", Access::StaffOrOwner).audited(),
        Rule::new("WatchCustomerEvents", Access::Services),
    ],
};

/// What page tokens of ListCustomers are bound to: it has no filter, but a
/// token of another list must still be refused.
const LIST_FILTER: &str = "customers";

/// The customers' `CustomerService` implementation.
#[derive(Debug, Clone)]
pub struct CustomersApi {
    db: Database,
    outbox: Outbox,
    /// Ends open Watch streams when the server shuts down.
    shutdown: Shutdown,
}

impl CustomersApi {
    pub fn new(db: Database, outbox: Outbox, shutdown: Shutdown) -> Self {
        Self { db, outbox, shutdown }
    }
}

/// An event of the outbox as the change feed tells it.
pub fn event_kind(event: CustomerEvent) -> pb::customer_event::Kind {
    use pb::customer_event::Kind;
    match event {
        CustomerEvent::CustomerRegistered { customer_id } => {
            Kind::CustomerRegistered(pb::CustomerRegistered { customer_id })
        }
        CustomerEvent::CustomerDeleted { customer_id } => {
            Kind::CustomerDeleted(pb::CustomerDeleted { customer_id })
        }
    }
}

impl From<Customer> for pb::Customer {
    fn from(c: Customer) -> Self {
        Self {
            etag: c.etag(),
            customer_id: c.id,
            given_name: c.given_name,
            family_name: c.family_name,
            email: c.email.as_str().to_owned(),
            create_time: Some(timestamp_from_micros(c.create_time)),
            update_time: Some(timestamp_from_micros(c.update_time)),
        }
    }
}

impl TryFrom<pb::CreateCustomerRequest> for NewCustomer {
    type Error = Error;

    /// The customer to register; its id, etag and times are ignored.
    fn try_from(request: pb::CreateCustomerRequest) -> Result<Self, Error> {
        let c = required("customer", request.customer)?;
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
        let c = required("customer", request.customer)?;
        let mut v = Violations::new();
        let id = v.check("customer.customer_id", domain::parse_id(&c.customer_id));
        let paths = update_paths(
            request.update_mask,
            &[
                (!c.given_name.is_empty(), "given_name"),
                (!c.family_name.is_empty(), "family_name"),
                (!c.email.is_empty(), "email"),
            ],
        );
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

#[tonic::async_trait]
impl CustomerService for CustomersApi {
    async fn create_customer(
        &self,
        req: Request<pb::CreateCustomerRequest>,
    ) -> Answer<pb::CreateCustomerResponse> {
        let audit = Audit::of(&req);
        let new = NewCustomer::try_from(req.into_inner())?;
        let (customer, registered) = Customer::register(new_id("cus"), new, now_micros());
        let mut uow = self.db.begin().await?;
        store::insert(&mut uow, &customer).await?;
        uow.record(&registered).await?;
        uow.commit().await?;
        audit.resource(&customer.id);
        tracing::info!(customer_id = %customer.id, "customer registered");
        reply(pb::CreateCustomerResponse { customer: Some(customer.into()) })
    }

    async fn get_customer(&self, req: Request<pb::GetCustomerRequest>) -> Answer<pb::GetCustomerResponse> {
        let (grant, req) = Grant::split(req)?;
        let id = required_id("customer_id", &req.customer_id)?;
        grant.check_owner(&id)?;
        let customer = store::customer(&self.db, &id).await?;
        reply(pb::GetCustomerResponse { customer: Some(customer.into()) })
    }

    async fn list_customers(
        &self,
        req: Request<pb::ListCustomersRequest>,
    ) -> Answer<pb::ListCustomersResponse> {
        let req = req.into_inner();
        let paging = Paging::of(req.page_size, &req.page_token, LIST_FILTER)?;
        let page = store::list(&self.db, paging.after, paging.size).await?;
        let (customers, next_page_token) = paging.answer(page);
        reply(pb::ListCustomersResponse { customers, next_page_token })
    }

    async fn update_customer(
        &self,
        req: Request<pb::UpdateCustomerRequest>,
    ) -> Answer<pb::UpdateCustomerResponse> {
        let grant = Grant::of(&req)?.clone();
        let audit = Audit::of(&req);
        let Update { id, etag, patch } = Update::try_from(req.into_inner())?;
        audit.resource(&id);
        grant.check_owner(&id)?;
        let mut uow = self.db.begin().await?;
        let mut customer = store::customer_to_change(&mut uow, &id).await?;
        customer.update(patch, &etag, now_micros())?;
        store::save(&mut uow, &customer).await?;
        uow.commit().await?;
        tracing::info!(customer_id = %customer.id, "customer updated");
        reply(pb::UpdateCustomerResponse { customer: Some(customer.into()) })
    }

    async fn delete_customer(
        &self,
        req: Request<pb::DeleteCustomerRequest>,
    ) -> Answer<pb::DeleteCustomerResponse> {
        let grant = Grant::of(&req)?.clone();
        Audit::of(&req).resource(&req.get_ref().customer_id);
        let req = req.into_inner();
        let id = required_id("customer_id", &req.customer_id)?;
        grant.check_owner(&id)?;
        let mut uow = self.db.begin().await?;
        let customer = store::customer_to_change(&mut uow, &id).await?;
        let deleted = customer.delete(&req.etag)?;
        // Without an etag the caller deletes whatever the customer is now.
        let at = (!req.etag.is_empty()).then_some(customer.revision);
        store::delete(&mut uow, &id, at).await?;
        uow.record(&deleted).await?;
        uow.commit().await?;
        tracing::info!(customer_id = %id, "customer deleted");
        reply(pb::DeleteCustomerResponse {})
    }

    type WatchCustomerEventsStream = ResponseStream<pb::WatchCustomerEventsResponse>;

    async fn watch_customer_events(
        &self,
        req: Request<pb::WatchCustomerEventsRequest>,
    ) -> Answer<Self::WatchCustomerEventsStream> {
        let after = req.into_inner().after_sequence;
        let stream = self.outbox.serve(after, self.shutdown.clone(), event_kind).await?;
        reply(stream)
    }
}
