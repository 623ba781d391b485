//! What downstream contexts ask of the open host services, catalog and
//! customers, and the feeds they follow: asked, and read, once here for
//! every context. Each answer has one meaning everywhere (an OK answer
//! without the thing asked for is the upstream's bug: INTERNAL; a product
//! not active is not on sale); what it means to a context (which error a
//! caller gets, which rows an event changes) is that context's own
//! anti-corruption layer's to say.

use agora_contracts::agora::{
    catalog::v1::{
        self as catalog, catalog_event, catalog_service_client::CatalogServiceClient as CatalogClient,
    },
    customers::v1::{
        self as customers, customer_event, customer_service_client::CustomerServiceClient as CustomersClient,
    },
};
use tonic::{Response, Status, Streaming};

use super::{Credentials, Upstream, UpstreamChannel, UpstreamSettings};
use crate::{
    Database, Error,
    config::{ConfigError, EnvReader},
    feed::{Feed, Translate, consumer},
    middleware::Deadline,
    security::SecuritySettings,
    server::Task,
};

/// The catalog, as a downstream context reaches it.
pub type Catalog = Upstream<CatalogClient<UpstreamChannel>>;
/// Customers, as a downstream context reaches them.
pub type Customers = Upstream<CustomersClient<UpstreamChannel>>;

/// An answer about one thing: None when the upstream has no such thing.
pub type Found<T> = Result<Option<T>, Error>;

/// A product, as every downstream context sees it. The catalog's published
/// language puts only an active product on sale; any other state, one added
/// after this was written included, is not on sale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sale {
    OnSale,
    /// Known, but not on sale (discontinued): no new offers, no new list items.
    NotOnSale,
    /// The catalog has no such product.
    Unknown,
}

/// Where the open host services are, and how hard to try them.
#[derive(Debug, Clone)]
pub struct Addresses {
    /// The catalog (`AGORA_CATALOG_ADDRS`, default `https://127.0.0.1:50051`).
    pub catalog: UpstreamSettings,
    /// Customers (`AGORA_CUSTOMERS_ADDRS`, default `https://127.0.0.1:50052`).
    pub customers: UpstreamSettings,
}

impl Addresses {
    /// From the process environment: `AGORA_CATALOG_ADDRS`,
    /// `AGORA_CUSTOMERS_ADDRS` and the shared `AGORA_UPSTREAM_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut env = EnvReader::new(|name| std::env::var(name).ok());
        let addresses = Self::read(&mut env);
        env.finish().map(|()| addresses)
    }

    /// From any lookup; problems are collected in `env`.
    pub fn read<F: Fn(&str) -> Option<String>>(env: &mut EnvReader<F>) -> Self {
        Self {
            catalog: UpstreamSettings::read(env, "catalog", "https://127.0.0.1:50051"),
            customers: UpstreamSettings::read(env, "customers", "https://127.0.0.1:50052"),
        }
    }

    /// Both upstreams, reached with the certificate and token of
    /// `security`. Connections are made on first use, so a downstream
    /// starts while they are still down.
    pub fn connect(&self, security: &SecuritySettings) -> anyhow::Result<Hosts> {
        let credentials = Credentials::start(security)?;
        Ok(Hosts {
            catalog: Upstream::connect(&self.catalog, &credentials, CatalogClient::new)?,
            customers: Upstream::connect(&self.customers, &credentials, CustomersClient::new)?,
        })
    }
}

/// Both open host services, as a downstream context reaches them.
#[derive(Debug, Clone)]
pub struct Hosts {
    pub catalog: Catalog,
    pub customers: Customers,
}

impl Hosts {
    /// Follows both feeds in the background, each event translated by
    /// `context` (its anti-corruption layer) and applied to `db`: one task a
    /// feed, each with its own cursor.
    pub fn follow<A>(&self, context: A, db: &Database) -> [Task; 2]
    where
        A: Translate<catalog_event::Kind> + Translate<customer_event::Kind> + Clone,
    {
        [
            consumer(self.catalog.watch_catalog_events(), context.clone(), db.clone()),
            consumer(self.customers.watch_customer_events(), context, db.clone()),
        ]
    }
}

impl Catalog {
    /// GetProduct: the product, or None when the catalog has none.
    pub async fn get_product(&self, product_id: &str, deadline: Option<Deadline>) -> Found<catalog::Product> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        let answer = self.ask(deadline, request, |mut c, r| async move { c.get_product(r).await }).await?;
        answer.map(|a| self.required("GetProduct", "product", a.product)).transpose()
    }

    /// Whether the product is on sale: the one question every downstream
    /// context asks before it takes a product id.
    pub async fn sale(&self, product_id: &str, deadline: Option<Deadline>) -> Result<Sale, Error> {
        Ok(match self.get_product(product_id, deadline).await?.map(|p| p.state()) {
            Some(catalog::ProductState::Active) => Sale::OnSale,
            Some(_) => Sale::NotOnSale,
            None => Sale::Unknown,
        })
    }

    /// WatchCatalogEvents: the catalog's change feed.
    pub fn watch_catalog_events(&self) -> Feed<catalog::WatchCatalogEventsResponse> {
        self.feed(CatalogClient::new, |mut c, after_sequence| async move {
            c.watch_catalog_events(catalog::WatchCatalogEventsRequest { after_sequence }).await
        })
    }
}

impl Customers {
    /// GetCustomer: the customer, or None when there is no such customer.
    pub async fn get_customer(
        &self,
        customer_id: &str,
        deadline: Option<Deadline>,
    ) -> Found<customers::Customer> {
        let request = customers::GetCustomerRequest { customer_id: customer_id.to_owned() };
        let found = self.ask(deadline, request, |mut c, r| async move { c.get_customer(r).await }).await?;
        found.map(|f| self.required("GetCustomer", "customer", f.customer)).transpose()
    }

    /// Whether the customer exists.
    pub async fn exists(&self, customer_id: &str, deadline: Option<Deadline>) -> Result<bool, Error> {
        Ok(self.get_customer(customer_id, deadline).await?.is_some())
    }

    /// WatchCustomerEvents: customers' change feed.
    pub fn watch_customer_events(&self) -> Feed<customers::WatchCustomerEventsResponse> {
        self.feed(CustomersClient::new, |mut c, after_sequence| async move {
            c.watch_customer_events(customers::WatchCustomerEventsRequest { after_sequence }).await
        })
    }
}

impl<C: Clone> Upstream<C> {
    /// The upstream's change feed, opened by `watch` on a client of the
    /// feed's own channel.
    fn feed<F, M, W, Fut>(&self, client: fn(UpstreamChannel) -> F, watch: W) -> Feed<M>
    where
        F: Clone + Send + Sync + 'static,
        M: agora_contracts::feed::ChangeFeedMessage,
        W: Fn(F, i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<Streaming<M>>, Status>> + Send + 'static,
    {
        let client = client(self.feed.clone());
        Feed::new(self.name, move |after| {
            let answer = watch(client.clone(), after);
            async move { answer.await.map(Response::into_inner) }
        })
    }
}
