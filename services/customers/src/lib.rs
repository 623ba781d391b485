//! The customers service: the people who shop. An upstream context: it
//! publishes customer ids, and keeps the personal data behind them (names,
//! email) to itself.
//!
//! # Layout
//! - [`domain`]: customers, their email and the rules of their fields.
//! - [`store`]: the repository: the customers' own database (SQLite or PostgreSQL).
//! - [`api`]: the `agora.customers.v1.CustomerService` gRPC adapter.
//! - [`build`]: wires them into a runnable [`Application`].
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod store;

use agora_contracts::{
    FILE_DESCRIPTOR_SET,
    agora::customers::v1::{WatchCustomerEventsResponse, customer_service_server::CustomerServiceServer},
};
use agora_platform::{Application, Migrations, ServiceSpec, Settings, limited, server::OpenHost};

/// Name and default ports of the customers service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "customers", grpc_port: 50052, admin_port: 9102 };

/// The customers' tables, per dialect (the platform adds its own).
pub const MIGRATIONS: Migrations = agora_platform::migrations!(
    [(1, "0001_customers")],
    legacy [(1, "0001_customers"), (2, "0002_outbox")] replaced through 1
);

/// The customers service, bound to its ports and ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let host = OpenHost::new(&settings, SPEC.name, FILE_DESCRIPTOR_SET)
        .await?
        .publishing::<domain::CustomerEvent, WatchCustomerEventsResponse>(api::event_kind);
    let OpenHost { database, outbox, services, .. } = host;
    let api = api::CustomersApi::new(database.clone(), outbox, services.shutdown());
    let services = services.with(limited!(CustomerServiceServer::new(api), settings), api::POLICY);
    Application::build(SPEC, settings, database, MIGRATIONS, services).await
}
