//! What a downstream context knows of the open hosts' entities: whether
//! each product it heard of is on sale, and whether each customer it heard
//! of still exists. Kept from the upstreams' change feeds
//! ([`Hosts::follow`](super::hosts::Hosts::follow) keeps them before the
//! context's own effects) and from their answers, and read inside the unit
//! of work that acts on an id ([`Hosts::begin_checked`](super::hosts::Hosts::begin_checked)),
//! so a decision and the feed's change of the same entity never interleave.
//!
//! Two tables, which every downstream context's migrations create:
//!
//! ```sql
//! catalog_products (product_id TEXT PRIMARY KEY, on_sale BOOLEAN NOT NULL)
//! known_customers  (customer_id TEXT PRIMARY KEY, deleted BOOLEAN NOT NULL)
//! ```
//!
//! Both only ever move one way: a product never returns to sale and a
//! deleted customer never comes back, so "not on sale" and the deletion's
//! tombstone always win over what was kept before. Events and answers may
//! then arrive in any order, and a row ends where the upstream's last word
//! put it.

use agora_contracts::agora::{
    catalog::v1::{Product, ProductState, catalog_event},
    customers::v1::customer_event,
};

use crate::{Backend, Error, UnitOfWork};

/// One thing an upstream said of one of its entities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// The catalog sells the product, or no longer does.
    Product { product_id: String, on_sale: bool },
    /// The customer is registered, or was deleted.
    Customer { customer_id: String, deleted: bool },
}

impl Fact {
    /// What a catalog event says of its product. The catalog's published
    /// language puts only an active product on sale: any other state, one
    /// added after this was written included, is not.
    pub fn of_catalog(event: &catalog_event::Kind) -> Option<Self> {
        match event {
            catalog_event::Kind::ProductCreated(e) => e.product.as_ref().map(Self::of_product),
            catalog_event::Kind::ProductUpdated(e) => e.product.as_ref().map(Self::of_product),
            catalog_event::Kind::ProductDiscontinued(e) => {
                Some(Self::Product { product_id: e.product_id.clone(), on_sale: false })
            }
        }
    }

    /// What the catalog's answer says of a product.
    pub fn of_product(product: &Product) -> Self {
        Self::Product {
            product_id: product.product_id.clone(),
            on_sale: product.state == ProductState::Active as i32,
        }
    }

    /// What a customers event says of its customer.
    pub fn of_customers(event: &customer_event::Kind) -> Option<Self> {
        let (customer_id, deleted) = match event {
            customer_event::Kind::CustomerRegistered(e) => (e.customer_id.clone(), false),
            customer_event::Kind::CustomerDeleted(e) => (e.customer_id.clone(), true),
        };
        Some(Self::Customer { customer_id, deleted })
    }
}

/// Keeps `fact`, in the unit of work of the event or the check it came
/// with: a row is added, or moved the one way it may move.
pub async fn keep(uow: &mut UnitOfWork, fact: &Fact) -> Result<(), Error> {
    let statement = match fact {
        Fact::Product { product_id, on_sale } => uow
            .query(
                "INSERT INTO catalog_products (product_id, on_sale) VALUES ($1, $2) \
                 ON CONFLICT (product_id) DO UPDATE SET on_sale = excluded.on_sale WHERE NOT excluded.on_sale",
            )
            .bind(product_id.as_str())
            .bind(*on_sale),
        Fact::Customer { customer_id, deleted } => uow
            .query(
                "INSERT INTO known_customers (customer_id, deleted) VALUES ($1, $2) \
                 ON CONFLICT (customer_id) DO UPDATE SET deleted = excluded.deleted WHERE excluded.deleted",
            )
            .bind(customer_id.as_str())
            .bind(*deleted),
    };
    statement.execute().await.map(drop)
}

/// Whether the catalog sells `product_id`, as last heard; None: not heard
/// of. On PostgreSQL the row stays locked (`FOR SHARE`) until the unit of
/// work ends, so the feed's change of it waits for the commit; SQLite has
/// one writer at a time and needs no lock.
pub async fn product_on_sale(uow: &mut UnitOfWork, product_id: &str) -> Result<Option<bool>, Error> {
    let sql = match uow.backend() {
        Backend::Sqlite => "SELECT on_sale AS known FROM catalog_products WHERE product_id = $1",
        Backend::Postgres => "SELECT on_sale AS known FROM catalog_products WHERE product_id = $1 FOR SHARE",
    };
    read(uow, sql, product_id).await
}

/// Whether `customer_id` is registered, as last heard (false: deleted);
/// None: not heard of. Locked as [`product_on_sale`] locks.
pub async fn customer_registered(uow: &mut UnitOfWork, customer_id: &str) -> Result<Option<bool>, Error> {
    let sql = match uow.backend() {
        Backend::Sqlite => "SELECT NOT deleted AS known FROM known_customers WHERE customer_id = $1",
        Backend::Postgres => {
            "SELECT NOT deleted AS known FROM known_customers WHERE customer_id = $1 FOR SHARE"
        }
    };
    read(uow, sql, customer_id).await
}

async fn read(uow: &mut UnitOfWork, sql: &'static str, id: &str) -> Result<Option<bool>, Error> {
    uow.query(sql).bind(id).fetch_optional().await?.map(|row| row.get("known")).transpose()
}
