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
pub mod cache;
pub mod domain;
pub mod store;

use agora_contracts::{
    FILE_DESCRIPTOR_SET,
    agora::catalog::v1::{WatchCatalogEventsResponse, catalog_service_server::CatalogServiceServer},
};
use agora_platform::{Application, Migrations, ServiceSpec, Settings, limited, server::OpenHost};

/// Name and default ports of the catalog.
pub const SPEC: ServiceSpec = ServiceSpec { name: "catalog", grpc_port: 50051, admin_port: 9101 };

/// The catalog's tables, per dialect (the platform adds its own).
pub const MIGRATIONS: Migrations = agora_platform::migrations!(
    [(1, "0001_catalog")],
    legacy [(1, "0001_catalog"), (2, "0002_idempotency_keys"), (3, "0003_outbox")] replaced through 1
);

/// The catalog service, bound to its ports and ready to run.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    let host = OpenHost::new(&settings, SPEC.name, FILE_DESCRIPTOR_SET)
        .await?
        .publishing::<domain::CatalogEvent, WatchCatalogEventsResponse>(api::convert::event_kind);
    let OpenHost { database, outbox, services, .. } = host;
    let cache = cache::ProductCache::new();
    let services = services.task(cache.following(outbox.clone()));
    let api = api::CatalogApi::new(database.clone(), outbox, cache, services.shutdown());
    let services = services.with(limited!(CatalogServiceServer::new(api), settings), api::POLICY);
    Application::build(SPEC, settings, database, MIGRATIONS, services).await
}
