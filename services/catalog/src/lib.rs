//! The catalog service: products and the families they belong to. An
//! upstream context: it publishes product ids and, through its Watch RPC,
//! what happens to them.
//!
//! # Layout
//! - [`domain`]: families, products, prices and their rules.
//! - [`store`]: the repository: the catalog's own database (SQLite or PostgreSQL).
//! - [`api`]: the `agora.catalog.v1.CatalogService` gRPC adapter.
//! - [`build`]: wires them into a runnable [`Application`].
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod store;

use agora_contracts::{
    FILE_DESCRIPTOR_SET, agora::catalog::v1::catalog_service_server::CatalogServiceServer,
};
use agora_platform::{
    Application, Database, Migrations, ServiceSpec, Services, Settings, db::LegacyHistory, outbox::Outbox,
};

/// Name and default ports of the catalog.
pub const SPEC: ServiceSpec = ServiceSpec { name: "catalog", grpc_port: 50051, admin_port: 9101 };

/// The catalog's tables, per dialect (the platform adds its own).
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[(1, "catalog", include_str!("../migrations/sqlite/0001_catalog.sql"))],
    postgres: &[(1, "catalog", include_str!("../migrations/postgres/0001_catalog.sql"))],
    legacy: Some(LegacyHistory {
        sqlite: &[
            (1, "catalog", include_str!("../migrations/legacy/sqlite/0001_catalog.sql")),
            (2, "idempotency keys", include_str!("../migrations/legacy/sqlite/0002_idempotency_keys.sql")),
            (3, "outbox", include_str!("../migrations/legacy/sqlite/0003_outbox.sql")),
        ],
        postgres: &[
            (1, "catalog", include_str!("../migrations/legacy/postgres/0001_catalog.sql")),
            (2, "idempotency keys", include_str!("../migrations/legacy/postgres/0002_idempotency_keys.sql")),
            (3, "outbox", include_str!("../migrations/legacy/postgres/0003_outbox.sql")),
        ],
        replaced_through: 1,
    }),
};

/// The catalog service, bound to its ports and ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let database = Database::connect_lazy(&settings)?;
    let services = Services::new(FILE_DESCRIPTOR_SET);
    let outbox = Outbox::new(database.clone(), settings.outbox_poll_interval);
    let api = api::CatalogApi::new(database.clone(), outbox.clone(), services.shutdown());
    let catalog = CatalogServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    let services = services.with(catalog).task(outbox.pruning(settings.outbox_retention));
    Application::build(SPEC, settings, database, MIGRATIONS, services).await
}
