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
//! - [`upstream`]: the anti-corruption layer: what catalog's and customers'
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
    Application, Database, Migrations, ServiceSpec, Services, Settings, events::Events, limited,
    upstream::hosts::Addresses,
};

/// Name and default ports of the shopping service.
pub const SPEC: ServiceSpec = ServiceSpec { name: "shopping", grpc_port: 50054, admin_port: 9104 };

/// The shopping tables, per dialect (the platform adds its own).
pub const MIGRATIONS: Migrations = agora_platform::migrations!(
    [(1, "0001_shopping"), (2, "0002_upstream_projections")],
    legacy [(1, "0001_shopping"), (2, "0002_feed_cursors"), (3, "0003_items_by_product")] replaced through 1
);

/// What shopping needs beyond the shared settings: where catalog and
/// customers are, asked whether a list's owner exists and whether a product
/// can go on a list, and followed for deleted customers and discontinued
/// products.
pub type ShoppingSettings = Addresses;

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
    let hosts = shopping.connect(&settings.security)?;
    // Follow the upstreams' change feeds in the background.
    let events = Events::connect(&settings.events, SPEC.name).await?;
    let feeds = hosts.follow(upstream::Lists, &database, &events);
    let api = api::ShoppingApi { db: database.clone(), hosts };
    let services = Services::new(FILE_DESCRIPTOR_SET)
        .with(limited!(ShoppingListServiceServer::new(api), settings), api::POLICY);
    Application::build(SPEC, settings, database, MIGRATIONS, services.tasks(feeds)).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_platform::config::{ConfigError, EnvReader};
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
        assert_eq!(s.catalog.addrs, ["https://127.0.0.1:50051"]);
        assert_eq!(s.customers.addrs, ["https://127.0.0.1:50052"]);
    }

    #[test]
    fn a_plaintext_upstream_needs_the_insecure_opt_in() {
        let err = read(&[("AGORA_CATALOG_ADDRS", "http://a:1")]).unwrap_err();
        assert!(err.to_string().contains("AGORA_INSECURE=1"), "{err}");
        let s = read(&[("AGORA_CATALOG_ADDRS", "http://a:1"), ("AGORA_INSECURE", "1")]).unwrap();
        assert_eq!(s.catalog.addrs, ["http://a:1"]);
    }

    #[test]
    fn every_bad_upstream_address_is_reported() {
        let s = read(&[("AGORA_CATALOG_ADDRS", "https://a:1, https://b:2")]).unwrap();
        assert_eq!(s.catalog.addrs, ["https://a:1", "https://b:2"]);
        let err =
            read(&[("AGORA_CATALOG_ADDRS", "catalog:50051"), ("AGORA_CUSTOMERS_ADDRS", " , ")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("AGORA_CATALOG_ADDRS") && text.contains("AGORA_CUSTOMERS_ADDRS"), "{text}");
    }
}
