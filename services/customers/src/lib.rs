//! The customers service: the people who shop. An upstream context: it
//! publishes customer ids, and keeps the personal data behind them (names,
//! email) to itself.
//!
//! # Layout
//! - [`domain`]: customers, their email and the rules of their fields.
//! - [`store`]: the customers' own database (SQLite or PostgreSQL).
//! - [`api`]: the `agora.customers.v1.CustomerService` gRPC adapter.
//! - [`build`]: wires them into a runnable [`Application`].
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod store;

use agora_contracts::{
    FILE_DESCRIPTOR_SET, agora::customers::v1::customer_service_server::CustomerServiceServer,
};
use agora_platform::{Application, Database, Migrations, ServiceSpec, Services, Settings, outbox::Outbox};

/// Name and default ports of the customers service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "customers", grpc_port: 50052, admin_port: 9102 };

/// The customers' schema, per dialect.
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[
        (1, "customers", include_str!("../migrations/sqlite/0001_customers.sql")),
        (2, "outbox", include_str!("../migrations/sqlite/0002_outbox.sql")),
    ],
    postgres: &[
        (1, "customers", include_str!("../migrations/postgres/0001_customers.sql")),
        (2, "outbox", include_str!("../migrations/postgres/0002_outbox.sql")),
    ],
};

/// The customers service, bound to its ports and ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let database = Database::connect_lazy(&settings)?;
    let services = Services::new(FILE_DESCRIPTOR_SET);
    let outbox = Outbox::new(database.clone(), settings.outbox_poll_interval);
    outbox.spawn_pruning(settings.outbox_retention, services.shutdown());
    let store = store::CustomerStore::new(database.clone(), outbox.clone());
    let api = api::CustomersApi::new(store, outbox, services.shutdown());
    let customers = CustomerServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let services = services.with(customers);
    Application::build(SPEC, settings, database, MIGRATIONS, services).await
}
