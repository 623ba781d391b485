//! The shopping service: customers' shopping lists. A downstream context:
//! it keeps customer and product ids only, and asks customers ("does this
//! customer exist?") and the catalog ("can this product go on a list?")
//! through its anti-corruption layer. Reads and removals need neither, so
//! they keep working while an upstream is down. It follows both upstreams'
//! change feeds: a discontinued product is marked unavailable on every list
//! that holds it, and a deleted customer's lists are deleted.
//!
//! # Layout
//! - [`domain`]: lists, their items and the rules of quantities and etags.
//! - [`store`]: the repository: the shopping database (SQLite or PostgreSQL).
//! - [`upstream`]: the anti-corruption layer: catalog and customers clients
//!   and the handlers of their change feeds.
//! - [`api`]: the `agora.shopping.v1.ShoppingListService` gRPC adapter.
//! - [`build`]: wires them into a runnable [`Application`].
#![forbid(unsafe_code)]

pub mod api;
pub mod domain;
pub mod store;
pub mod upstream;

use agora_contracts::{
    FILE_DESCRIPTOR_SET, agora::shopping::v1::shopping_list_service_server::ShoppingListServiceServer,
};
use agora_platform::{
    Application, Database, Migrations, ServiceSpec, Services, Settings,
    config::{ConfigError, EnvReader},
    db::LegacyHistory,
    feed,
    upstream::UpstreamSettings,
};

/// Name and default ports of the shopping service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "shopping", grpc_port: 50054, admin_port: 9104 };

/// The shopping tables, per dialect (the platform adds its own).
pub const MIGRATIONS: Migrations = Migrations {
    sqlite: &[(1, "shopping", include_str!("../migrations/sqlite/0001_shopping.sql"))],
    postgres: &[(1, "shopping", include_str!("../migrations/postgres/0001_shopping.sql"))],
    legacy: Some(LegacyHistory {
        sqlite: &[
            (1, "shopping", include_str!("../migrations/legacy/sqlite/0001_shopping.sql")),
            (2, "feed cursors", include_str!("../migrations/legacy/sqlite/0002_feed_cursors.sql")),
            (3, "items by product", include_str!("../migrations/legacy/sqlite/0003_items_by_product.sql")),
        ],
        postgres: &[
            (1, "shopping", include_str!("../migrations/legacy/postgres/0001_shopping.sql")),
            (2, "feed cursors", include_str!("../migrations/legacy/postgres/0002_feed_cursors.sql")),
            (3, "items by product", include_str!("../migrations/legacy/postgres/0003_items_by_product.sql")),
        ],
        replaced_through: 1,
    }),
};

/// What shopping needs beyond the shared settings: where its upstreams are.
#[derive(Debug, Clone)]
pub struct ShoppingSettings {
    /// The catalog (`AGORA_CATALOG_ADDRS`, default `http://127.0.0.1:50051`),
    /// asked whether a product can go on a list, and followed for
    /// discontinued products.
    pub catalog: UpstreamSettings,
    /// Customers (`AGORA_CUSTOMERS_ADDRS`, default `http://127.0.0.1:50052`),
    /// asked whether a list's owner exists, and followed for deleted
    /// customers.
    pub customers: UpstreamSettings,
}

impl ShoppingSettings {
    /// From the process environment: `AGORA_CATALOG_ADDRS`,
    /// `AGORA_CUSTOMERS_ADDRS` and the shared `AGORA_UPSTREAM_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(|name| std::env::var(name).ok());
        let settings = Self::read(&mut env);
        env.finish()?;
        Ok(settings)
    }

    /// From any lookup; problems are collected in `env`.
    pub fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        Self {
            catalog: UpstreamSettings::read(env, "catalog", "http://127.0.0.1:50051"),
            customers: UpstreamSettings::read(env, "customers", "http://127.0.0.1:50052"),
        }
    }
}

/// The shopping service from the environment.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    build_with(settings, ShoppingSettings::from_env()?).await
}

/// The shopping service, bound to its ports and ready to run. The upstream
/// channels connect on first use: shopping starts, and serves what needs no
/// upstream, while catalog or customers are still down; their feeds are
/// followed in the background and caught up with when they return.
pub async fn build_with(settings: Settings, shopping: ShoppingSettings) -> anyhow::Result<Application> {
    let database = Database::connect_lazy(&settings)?;
    let api = api::ShoppingApi {
        db: database.clone(),
        catalog: upstream::catalog::Catalog::connect(&shopping.catalog)?,
        customers: upstream::customers::Customers::connect(&shopping.customers)?,
    };
    let server = ShoppingListServiceServer::new(api)
        .max_decoding_message_size(settings.max_message_bytes)
        .max_encoding_message_size(settings.max_message_bytes);
    // Follow the upstreams' change feeds in the background.
    let catalog_feed = upstream::feeds::CatalogFeed::connect(&shopping.catalog)?;
    let customers_feed = upstream::feeds::CustomersFeed::connect(&shopping.customers)?;
    let services = Services::new(FILE_DESCRIPTOR_SET)
        .with(server)
        .task(feed::consumer(catalog_feed, database.clone()))
        .task(feed::consumer(customers_feed, database.clone()));
    Application::build(SPEC, settings, database, MIGRATIONS, services).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(vars: &[(&str, &str)]) -> Result<ShoppingSettings, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut env = EnvReader::new(move |k| map.get(k).cloned());
        let settings = ShoppingSettings::read(&mut env);
        env.finish().map(|()| settings)
    }

    #[test]
    fn upstreams_default_to_the_local_catalog_and_customers() {
        let s = read(&[]).unwrap();
        assert_eq!((s.catalog.name, s.customers.name), ("catalog", "customers"));
        assert_eq!(s.catalog.addrs, ["http://127.0.0.1:50051"]);
        assert_eq!(s.customers.addrs, ["http://127.0.0.1:50052"]);
    }

    #[test]
    fn every_bad_upstream_address_is_reported() {
        let s = read(&[("AGORA_CATALOG_ADDRS", "http://a:1, http://b:2")]).unwrap();
        assert_eq!(s.catalog.addrs, ["http://a:1", "http://b:2"]);
        let err =
            read(&[("AGORA_CATALOG_ADDRS", "catalog:50051"), ("AGORA_CUSTOMERS_ADDRS", " , ")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("AGORA_CATALOG_ADDRS") && text.contains("AGORA_CUSTOMERS_ADDRS"), "{text}");
    }
}
