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

use super::{
    Credentials, Upstream, UpstreamChannel, UpstreamSettings,
    known::{self, Fact},
};
use crate::{
    Database, Error, Precondition, UnitOfWork,
    config::{ConfigError, EnvReader},
    deadline::Deadline,
    events::{Events, partitions},
    feed::{Effects, Feed, Translate, consumer},
    security::SecuritySettings,
    task::Task,
};

/// The catalog, as a downstream context reaches it.
pub type Catalog = Upstream<CatalogClient<UpstreamChannel>>;
/// Customers, as a downstream context reaches them.
pub type Customers = Upstream<CustomersClient<UpstreamChannel>>;

/// An answer about one thing: None when the upstream has no such thing.
pub type Found<T> = Result<Option<T>, Error>;

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
    /// feed, each with its own cursor. What each event says of its product
    /// or customer is kept first ([`known`]), in the same unit of work.
    ///
    /// With `events` on JetStream the feeds are read from the upstreams'
    /// streams instead, this replica applying its share of their partitions
    /// ([`partitions`](crate::events::partitions)); the translation and the
    /// effects are the same.
    pub fn follow<A>(&self, context: A, db: &Database, events: &Events) -> [Task; 2]
    where
        A: Translate<catalog_event::Kind> + Translate<customer_event::Kind> + Clone,
    {
        [self.catalog.follow(context.clone(), db, events), self.customers.follow(context, db, events)]
    }

    /// Begins a unit of work in which what `needs` names is so, and stays
    /// so until it ends: the product on sale, the customer registered.
    ///
    /// Each is read from what this context keeps of the upstreams
    /// ([`known`]), inside the unit of work, so the feed's change of the
    /// same product or customer either came first (the write is refused)
    /// or waits for this commit and then undoes what it must (withdraws
    /// the offer, deletes the list). Only what the context has not heard
    /// of yet is asked of its upstream, with no transaction open
    /// meanwhile, and the answer is kept: one question per new id. The
    /// answer is kept the monotone way, so a deletion or discontinuation
    /// the feed brought while the question was out wins over it.
    pub async fn begin_checked(
        &self,
        db: &Database,
        needs: Needs<'_>,
        deadline: Option<Deadline>,
    ) -> Result<UnitOfWork, Refusal> {
        checked(db, needs, |question| async move {
            match question {
                Question::Customer(id) => {
                    customer_fact(&id, self.customers.get_customer(&id, deadline).await?)
                }
                Question::Product(id) => product_fact(&id, self.catalog.get_product(&id, deadline).await?),
            }
        })
        .await
    }
}

/// What [`checked`] asks an upstream: about a customer, or a product.
#[derive(Debug)]
enum Question {
    Customer(String),
    Product(String),
}

/// What an answer of customers says of `id`, kept as a fact.
fn customer_fact(id: &str, found: Option<customers::Customer>) -> Result<Fact, Refusal> {
    match found {
        Some(_) => Ok(Fact::Customer { customer_id: id.to_owned(), deleted: false }),
        None => Err(Refusal::CustomerUnknown(id.to_owned())),
    }
}

/// What an answer of the catalog says of `id`, kept as a fact.
fn product_fact(id: &str, found: Option<catalog::Product>) -> Result<Fact, Refusal> {
    match found {
        Some(product) => Ok(Fact::of_product(&product)),
        None => Err(Refusal::ProductUnknown(id.to_owned())),
    }
}

/// A question a downstream that follows one upstream only cannot ask: its
/// code named a need of the other.
fn not_followed(question: Question) -> Refusal {
    Refusal::Failed(Error::Internal(anyhow::anyhow!(
        "{question:?} needs an upstream this context does not use"
    )))
}

/// [`Hosts::begin_checked`], with the questions asked by `ask`: whatever
/// upstreams the context has.
async fn checked<F>(
    db: &Database,
    needs: Needs<'_>,
    ask: impl Fn(Question) -> F,
) -> Result<UnitOfWork, Refusal>
where
    F: Future<Output = Result<Fact, Refusal>>,
{
    let mut uow = db.begin().await?;
    let (customer, product) = needs.read(&mut uow).await?;
    needs.refused(customer, product)?;
    let ask_customer = needs.customer.filter(|_| customer.is_none());
    let ask_product = needs.product_on_sale.filter(|_| product.is_none());
    if ask_customer.is_none() && ask_product.is_none() {
        return Ok(uow);
    }
    // Asked with no transaction open (and, on SQLite, the write turn
    // given back): the feeds go on meanwhile.
    drop(uow);
    let mut heard = Vec::new();
    if let Some(id) = ask_customer {
        heard.push(ask(Question::Customer(id.to_owned())).await?);
    }
    if let Some(id) = ask_product {
        heard.push(ask(Question::Product(id.to_owned())).await?);
    }
    // Kept, and read again, in a new unit of work.
    let mut uow = db.begin().await?;
    for fact in &heard {
        known::keep(&mut uow, fact).await?;
    }
    let (customer, product) = needs.read(&mut uow).await?;
    needs.refused(customer, product)?;
    if customer.is_none() && ask_customer.is_some() || product.is_none() && ask_product.is_some() {
        return Err(Refusal::Failed(Error::Internal(anyhow::anyhow!(
            "an upstream's answer was kept and then not found in the same transaction"
        ))));
    }
    Ok(uow)
}

/// What a write of a downstream context needs its upstreams to say of the
/// ids it takes (see [`Hosts::begin_checked`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Needs<'a> {
    /// A product that must be on sale.
    pub product_on_sale: Option<&'a str>,
    /// A customer who must be registered.
    pub customer: Option<&'a str>,
}

impl Needs<'_> {
    /// What the context knows of each id needed, in `uow`: None for what
    /// it has not heard of, or does not need.
    async fn read(&self, uow: &mut UnitOfWork) -> Result<(Option<bool>, Option<bool>), Error> {
        let customer = match self.customer {
            Some(id) => known::customer_registered(uow, id).await?,
            None => None,
        };
        let product = match self.product_on_sale {
            Some(id) => known::product_on_sale(uow, id).await?,
            None => None,
        };
        Ok((customer, product))
    }

    /// The refusal, if what is known refuses the write: a customer deleted,
    /// a product not on sale. What is not known refuses nothing yet.
    fn refused(&self, customer: Option<bool>, product: Option<bool>) -> Result<(), Refusal> {
        if let (Some(id), Some(false)) = (self.customer, customer) {
            return Err(Refusal::CustomerUnknown(id.to_owned()));
        }
        if let (Some(id), Some(false)) = (self.product_on_sale, product) {
            return Err(Refusal::ProductNotOnSale(id.to_owned()));
        }
        Ok(())
    }
}

/// Why [`Hosts::begin_checked`] did not begin the write.
#[derive(Debug)]
pub enum Refusal {
    /// Customers has no such customer: never had, or deleted it.
    CustomerUnknown(String),
    /// The catalog has no such product.
    ProductUnknown(String),
    /// The catalog has the product, but does not sell it (discontinued).
    ProductNotOnSale(String),
    /// The check itself failed: the database, or an upstream that could
    /// not answer.
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        Self::Failed(err)
    }
}

impl Refusal {
    /// The caller's error: NOT_FOUND for a customer or product that does not
    /// exist, FAILED_PRECONDITION (`PRODUCT_STATE`) with the context's own
    /// words, `not_on_sale(product_id)`, for a product not on sale.
    pub fn error(self, not_on_sale: impl FnOnce(&str) -> String) -> Error {
        match self {
            Self::CustomerUnknown(id) => Error::NotFound { resource: "customer", id },
            Self::ProductUnknown(id) => Error::NotFound { resource: "product", id },
            Self::ProductNotOnSale(id) => Error::FailedPrecondition {
                kind: Precondition::ProductState,
                subject: format!("product/{id}"),
                description: not_on_sale(&id),
            },
            Self::Failed(err) => err,
        }
    }
}

/// A context's translation of the open hosts' feeds, with what each event
/// says of its product or customer kept first, in the same unit of work:
/// on PostgreSQL its row lock comes before any the context's effect takes,
/// in the order [`Hosts::begin_checked`] takes them.
#[derive(Clone)]
struct Keeping<A>(A);

#[tonic::async_trait]
impl<A: Effects> Effects for Keeping<A> {
    type Change = (Option<Fact>, Option<A::Change>);

    async fn apply(&self, uow: &mut UnitOfWork, (fact, change): Self::Change) -> Result<(), Error> {
        if let Some(fact) = fact {
            known::keep(uow, &fact).await?;
        }
        match change {
            Some(change) => self.0.apply(uow, change).await,
            None => Ok(()),
        }
    }
}

impl<A: Translate<catalog_event::Kind>> Translate<catalog_event::Kind> for Keeping<A> {
    fn translate(&self, event: catalog_event::Kind) -> Option<Self::Change> {
        let fact = Fact::of_catalog(&event);
        let change = self.0.translate(event);
        (fact.is_some() || change.is_some()).then_some((fact, change))
    }
}

impl<A: Translate<customer_event::Kind>> Translate<customer_event::Kind> for Keeping<A> {
    fn translate(&self, event: customer_event::Kind) -> Option<Self::Change> {
        let fact = Fact::of_customers(&event);
        let change = self.0.translate(event);
        (fact.is_some() || change.is_some()).then_some((fact, change))
    }
}

impl Catalog {
    /// Follows the catalog's feed in the background, as [`Hosts::follow`]
    /// does, for a context whose one upstream it is.
    pub fn follow<A: Translate<catalog_event::Kind>>(
        &self,
        context: A,
        db: &Database,
        events: &Events,
    ) -> Task {
        self.follow_feed(|| self.watch_catalog_events(), Keeping(context), db, events)
    }

    /// [`Hosts::begin_checked`] for a context that needs of its upstreams
    /// only the catalog's products.
    pub async fn begin_checked(
        &self,
        db: &Database,
        needs: Needs<'_>,
        deadline: Option<Deadline>,
    ) -> Result<UnitOfWork, Refusal> {
        checked(db, needs, |question| async move {
            match question {
                Question::Product(id) => product_fact(&id, self.get_product(&id, deadline).await?),
                other => Err(not_followed(other)),
            }
        })
        .await
    }

    /// GetProduct: the product, or None when the catalog has none.
    pub async fn get_product(&self, product_id: &str, deadline: Option<Deadline>) -> Found<catalog::Product> {
        let request = catalog::GetProductRequest { product_id: product_id.to_owned() };
        let answer = self.ask(deadline, request, |mut c, r| async move { c.get_product(r).await }).await?;
        answer.map(|a| self.required("GetProduct", "product", a.product)).transpose()
    }

    /// WatchCatalogEvents: the catalog's change feed.
    pub fn watch_catalog_events(&self) -> Feed<catalog::WatchCatalogEventsResponse> {
        self.feed(CatalogClient::new, |mut c, after_sequence| async move {
            c.watch_catalog_events(catalog::WatchCatalogEventsRequest { after_sequence }).await
        })
    }
}

impl Customers {
    /// Follows customers' feed in the background, as [`Hosts::follow`]
    /// does, for a context whose one upstream it is.
    pub fn follow<A: Translate<customer_event::Kind>>(
        &self,
        context: A,
        db: &Database,
        events: &Events,
    ) -> Task {
        self.follow_feed(|| self.watch_customer_events(), Keeping(context), db, events)
    }

    /// [`Hosts::begin_checked`] for a context that needs of its upstreams
    /// only customers.
    pub async fn begin_checked(
        &self,
        db: &Database,
        needs: Needs<'_>,
        deadline: Option<Deadline>,
    ) -> Result<UnitOfWork, Refusal> {
        checked(db, needs, |question| async move {
            match question {
                Question::Customer(id) => customer_fact(&id, self.get_customer(&id, deadline).await?),
                other => Err(not_followed(other)),
            }
        })
        .await
    }

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

    /// WatchCustomerEvents: customers' change feed.
    pub fn watch_customer_events(&self) -> Feed<customers::WatchCustomerEventsResponse> {
        self.feed(CustomersClient::new, |mut c, after_sequence| async move {
            c.watch_customer_events(customers::WatchCustomerEventsRequest { after_sequence }).await
        })
    }
}

impl<C: Clone> Upstream<C> {
    /// The background task that applies the upstream's feed with
    /// `effects`: its Watch stream (`watch`), or its stream's partitions
    /// when `events` are on JetStream.
    fn follow_feed<M, A>(
        &self,
        watch: impl FnOnce() -> Feed<M>,
        effects: A,
        db: &Database,
        events: &Events,
    ) -> Task
    where
        M: agora_contracts::feed::ChangeFeedMessage,
        A: Translate<M::Kind>,
    {
        match events {
            Events::Watch => consumer(watch(), effects, db.clone()),
            Events::JetStream(broker) => {
                partitions::consumer::<M, _>(broker.clone(), self.name(), effects, db.clone())
            }
        }
    }

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
