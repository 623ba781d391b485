//! The offers service: timed offers on products (the timed-offer family:
//! SPEED and LAST_DAY). A downstream context: it keeps product and customer
//! ids only, asks catalog and customers through its anti-corruption layer,
//! and answers "which offers can this customer have now?", with a fallback
//! when its own database fails.
//!
//! # Layout
//! - [`domain`]: offers, their kinds, windows and availability.
//! - [`store`]: the repository: the offers database (SQLite or PostgreSQL).
//! - [`upstream`]: the anti-corruption layer: what catalog's and customers'
//!   answers and events mean here.
//! - [`fallback`]: the default offers served when the database fails.
//! - [`cache`]: ListAvailableOffers' answers, kept while they hold.
//! - [`api`]: the `agora.offers.v1.OfferService` gRPC adapter.
//! - [`build`]: wires them into a runnable [`Application`].
#![forbid(unsafe_code)]

pub mod api;
pub mod cache;
pub mod domain;
pub mod fallback;
pub mod store;
pub mod upstream;

use agora_contracts::{FILE_DESCRIPTOR_SET, agora::offers::v1::offer_service_server::OfferServiceServer};
use agora_platform::{
    Application, Database, Migrations, ServiceSpec, Services, Settings,
    config::{ConfigError, EnvReader},
    events::Events,
    limited,
    outbox::Outbox,
    upstream::hosts::Addresses,
};

pub const SPEC: ServiceSpec = ServiceSpec { name: "offers", grpc_port: 50053, admin_port: 9103 };

/// The offers table and what offers keeps of its upstreams, per dialect
/// (the platform adds its own tables).
pub const MIGRATIONS: Migrations = agora_platform::migrations!(
    [(1, "0001_offers"), (2, "0002_catalog_products"), (3, "0003_known_customers"), (4, "0004_offers_starting")],
    legacy [(1, "0001_offers"), (2, "0002_feed_cursors"), (3, "0003_available_by_product")] replaced through 1
);

/// What offers needs beyond the shared settings.
#[derive(Debug, Clone)]
pub struct OffersSettings {
    /// Where catalog and customers are.
    pub upstreams: Addresses,
    /// The default offers of a database failure.
    pub fallback: fallback::Fallback,
}

impl OffersSettings {
    /// From the process environment: `AGORA_CATALOG_ADDRS`,
    /// `AGORA_CUSTOMERS_ADDRS`, `AGORA_UPSTREAM_*`, and the fallback set from
    /// `AGORA_OFFERS_FALLBACK` (JSON) or `AGORA_OFFERS_FALLBACK_FILE`.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(|name| std::env::var(name).ok());
        let upstreams = Addresses::read(&mut env);
        let json = match (env.optional("AGORA_OFFERS_FALLBACK"), env.optional("AGORA_OFFERS_FALLBACK_FILE")) {
            (Some(inline), _) => Some(("AGORA_OFFERS_FALLBACK".to_owned(), Ok(inline))),
            (None, Some(path)) => {
                Some((format!("AGORA_OFFERS_FALLBACK_FILE={path}"), std::fs::read_to_string(&path)))
            }
            (None, None) => None,
        };
        let fallback = match json {
            None => fallback::Fallback::default(),
            Some((source, Err(e))) => {
                env.problem(format!("{source}: {e}"));
                fallback::Fallback::default()
            }
            Some((source, Ok(text))) => fallback::Fallback::parse(&text).unwrap_or_else(|e| {
                env.problem(format!("{source}: {e}"));
                fallback::Fallback::default()
            }),
        };
        env.finish()?;
        Ok(Self { upstreams, fallback })
    }
}

/// The offers service from the environment.
pub async fn build(settings: Settings) -> anyhow::Result<Application> {
    build_with(settings, OffersSettings::from_env()?).await
}

/// The offers service, bound to its ports and ready to run.
pub async fn build_with(settings: Settings, offers: OffersSettings) -> anyhow::Result<Application> {
    let database = Database::connect_lazy(&settings)?;
    let hosts = offers.upstreams.connect(&settings.security)?;
    // Follow the upstreams' change feeds in the background.
    let events = Events::connect(&settings.events, SPEC.name).await?;
    let feeds = hosts.follow(upstream::Offers, &database, &events);
    // Offers' own outbox, of its changes, for the cache of available
    // offers on every replica; not published to other contexts.
    let outbox = Outbox::new(database.clone(), settings.outbox_poll_interval);
    let cache = cache::AvailableCache::new();
    // At zero from the start: an alert on its rate sees 0, not no data.
    metrics::counter!("agora_offers_fallback_total").increment(0);
    let api = api::OffersApi { db: database.clone(), hosts, fallback: offers.fallback, cache: cache.clone() };
    let services = Services::new(FILE_DESCRIPTOR_SET)
        .with(limited!(OfferServiceServer::new(api), settings), api::POLICY)
        .task(outbox.pruning(settings.outbox_retention))
        .task(cache.following(outbox));
    Application::build(SPEC, settings, database, MIGRATIONS, services.tasks(feeds)).await
}
