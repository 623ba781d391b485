//! The catalog's own database: families, products and idempotency keys.
//! Returns domain types; the same SQL serves SQLite and PostgreSQL.

use agora_platform::{
    Database, Error,
    db::{Page, paginate},
    idempotency,
    outbox::Outbox,
    wire::{new_id, now_micros},
};
use futures_util::Stream;
use sqlx::{Any, AssertSqlSafe, Row as _, Transaction, any::AnyRow};

use crate::domain::{
    self, CatalogEvent, Family, Money, NewFamily, NewProduct, Product, ProductPatch, ProductState, Refusal,
};

/// Columns of a product row, in the order `product_from_row` reads them.
macro_rules! product_columns {
    () => {
        "seq, product_id, display_name, description, family_id, currency_code, amount_minor, state, revision, create_time, update_time"
    };
}

/// Which products a list or stream wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductFilter {
    pub family_id: Option<String>,
    pub state: Option<ProductState>,
}

impl ProductFilter {
    /// A canonical rendering, bound into page tokens.
    pub fn fingerprint(&self) -> String {
        format!(
            "family={};state={}",
            self.family_id.as_deref().unwrap_or(""),
            self.state.map_or("", ProductState::as_str)
        )
    }
}

/// What CreateProduct did.
#[derive(Debug)]
pub enum Created {
    New(Product),
    /// The idempotency key was seen before with the same request.
    Replayed(Product),
}

#[derive(Debug, Clone)]
pub struct CatalogStore {
    db: Database,
    /// Every change leaves an event here, in the change's transaction.
    outbox: Outbox,
}

fn family_from_row(row: &AnyRow) -> Result<Family, sqlx::Error> {
    Ok(Family {
        id: row.try_get("family_id")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        create_time: row.try_get("create_time")?,
    })
}

fn product_from_row(row: &AnyRow) -> Result<Product, sqlx::Error> {
    let state: String = row.try_get("state")?;
    Ok(Product {
        id: row.try_get("product_id")?,
        display_name: row.try_get("display_name")?,
        description: row.try_get("description")?,
        family_id: row.try_get("family_id")?,
        price: Money {
            currency_code: row.try_get("currency_code")?,
            amount_minor: row.try_get("amount_minor")?,
        },
        state: ProductState::parse(&state)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown product state {state:?}").into()))?,
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

impl CatalogStore {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Records `event` in the transaction of its change; returns its
    /// sequence, to announce once the transaction committed.
    async fn record(&self, tx: &mut Transaction<'static, Any>, event: &CatalogEvent) -> Result<i64, Error> {
        let payload = serde_json::to_string(event).map_err(|e| Error::Internal(e.into()))?;
        self.outbox.append(tx, event.kind(), &payload).await
    }

    /// Commits and wakes the change-feed watchers.
    async fn commit(&self, tx: Transaction<'static, Any>, sequence: i64) -> Result<(), Error> {
        tx.commit().await?;
        self.outbox.committed(sequence);
        Ok(())
    }

    /// Every product matching `filter`, in creation order, as batches read
    /// one at a time when the consumer wants the next: a slow reader slows
    /// the reading, and memory holds one batch.
    pub fn stream_products(
        &self,
        filter: ProductFilter,
        batch: u32,
    ) -> impl Stream<Item = Result<Vec<Product>, Error>> + Send + 'static {
        let store = self.clone();
        futures_util::stream::unfold(Some(0), move |after| {
            let (store, filter) = (store.clone(), filter.clone());
            async move {
                let after = after?;
                match store.list_products(&filter, Some(after), batch).await {
                    Ok(page) if page.items.is_empty() => None,
                    Ok(page) => {
                        metrics::counter!("agora_catalog_stream_rows_read_total")
                            .increment(page.items.len() as u64);
                        Some((Ok(page.items), page.next_after))
                    }
                    Err(err) => Some((Err(err), None)),
                }
            }
        })
    }

    pub async fn create_family(&self, new: NewFamily) -> Result<Family, Error> {
        let family = Family {
            id: new_id("fam"),
            display_name: new.display_name,
            description: new.description,
            create_time: now_micros(),
        };
        sqlx::query(
            "INSERT INTO families (family_id, display_name, description, create_time) VALUES ($1, $2, $3, $4)",
        )
        .bind(&family.id)
        .bind(&family.display_name)
        .bind(&family.description)
        .bind(family.create_time)
        .execute(self.db.pool())
        .await?;
        Ok(family)
    }

    pub async fn get_family(&self, id: &str) -> Result<Family, Error> {
        let row = sqlx::query(
            "SELECT family_id, display_name, description, create_time FROM families WHERE family_id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await?;
        match row {
            Some(row) => Ok(family_from_row(&row)?),
            None => Err(Error::NotFound { resource: "family", id: id.to_owned() }),
        }
    }

    pub async fn list_families(&self, after: Option<i64>, limit: u32) -> Result<Page<Family>, Error> {
        let rows = sqlx::query(
            "SELECT seq, family_id, display_name, description, create_time FROM families \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.pool())
        .await?;
        paginate(rows, limit, family_from_row)
    }

    /// Creates a product, or returns the one an earlier call with the same
    /// idempotency key created.
    pub async fn create_product(&self, request_id: Option<&str>, new: NewProduct) -> Result<Created, Error> {
        let now = now_micros();
        let product = Product {
            id: new_id("prd"),
            display_name: new.display_name.clone(),
            description: new.description.clone(),
            family_id: new.family_id.clone(),
            price: new.price.clone(),
            state: ProductState::Active,
            revision: 1,
            create_time: now,
            update_time: now,
        };
        let mut tx = self.db.begin_write().await?;
        if let Some(request_id) = request_id
            && !idempotency::claim(&mut tx, request_id, &new.fingerprint(), &product.id).await?
        {
            tx.rollback().await?;
            let id = idempotency::replay(&self.db, request_id, &new.fingerprint(), "product").await?;
            return Ok(Created::Replayed(self.get_product(&id).await?));
        }
        if !family_exists(&mut tx, &product.family_id).await? {
            return Err(Error::invalid("product.family_id", "no family has this id"));
        }
        sqlx::query(concat!(
            "INSERT INTO products (product_id, display_name, description, family_id, currency_code, ",
            "amount_minor, state, revision, create_time, update_time) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&product.id)
        .bind(&product.display_name)
        .bind(&product.description)
        .bind(&product.family_id)
        .bind(&product.price.currency_code)
        .bind(product.price.amount_minor)
        .bind(product.state.as_str())
        .bind(product.revision)
        .bind(product.create_time)
        .bind(product.update_time)
        .execute(&mut *tx)
        .await?;
        let sequence = self.record(&mut tx, &CatalogEvent::ProductCreated(product.clone())).await?;
        self.commit(tx, sequence).await?;
        Ok(Created::New(product))
    }

    pub async fn get_product(&self, id: &str) -> Result<Product, Error> {
        fetch_product(self.db.pool(), id).await
    }

    /// The products among `ids` that exist, in no particular order.
    pub async fn get_products(&self, ids: &[String]) -> Result<Vec<Product>, Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        // Only numbered placeholders are formatted into the text; every id is bound.
        let sql = format!(
            concat!("SELECT ", product_columns!(), " FROM products WHERE product_id IN ({})"),
            placeholders.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| product_from_row(r).map_err(Error::from)).collect()
    }

    /// One page of products after the cursor `after`, in creation order.
    pub async fn list_products(
        &self,
        filter: &ProductFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Product>, Error> {
        // One statement per filter shape, so each can use its index.
        let sql = match (&filter.family_id, &filter.state) {
            (None, None) => {
                concat!("SELECT ", product_columns!(), " FROM products WHERE seq > $1 ORDER BY seq LIMIT $2")
            }
            (Some(_), None) => concat!(
                "SELECT ",
                product_columns!(),
                " FROM products WHERE seq > $1 AND family_id = $3 ORDER BY seq LIMIT $2"
            ),
            (None, Some(_)) => concat!(
                "SELECT ",
                product_columns!(),
                " FROM products WHERE seq > $1 AND state = $3 ORDER BY seq LIMIT $2"
            ),
            (Some(_), Some(_)) => concat!(
                "SELECT ",
                product_columns!(),
                " FROM products WHERE seq > $1 AND family_id = $3 AND state = $4 ORDER BY seq LIMIT $2"
            ),
        };
        let mut query = sqlx::query(sql).bind(after.unwrap_or(0)).bind(i64::from(limit) + 1);
        if let Some(family) = &filter.family_id {
            query = query.bind(family.clone());
        }
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        paginate(rows, limit, product_from_row)
    }

    /// Applies `patch` to the product if `etag` (when given) is current.
    pub async fn update_product(&self, id: &str, etag: &str, patch: &ProductPatch) -> Result<Product, Error> {
        let mut tx = self.db.begin_write().await?;
        let current = fetch_product(&mut *tx, id).await?;
        refuse(domain::check_etag(&current, etag), id)?;
        if current.state == ProductState::Discontinued {
            refuse(Err(Refusal::Discontinued), id)?;
        }
        if let Some(family) = &patch.family_id
            && !family_exists(&mut tx, family).await?
        {
            return Err(Error::invalid("product.family_id", "no family has this id"));
        }
        let mut next = patch.apply(&current);
        next.revision = current.revision + 1;
        next.update_time = now_micros().max(current.update_time);
        let changed = sqlx::query(
            "UPDATE products SET display_name = $1, description = $2, family_id = $3, currency_code = $4, \
             amount_minor = $5, revision = $6, update_time = $7 WHERE product_id = $8 AND revision = $9",
        )
        .bind(&next.display_name)
        .bind(&next.description)
        .bind(&next.family_id)
        .bind(&next.price.currency_code)
        .bind(next.price.amount_minor)
        .bind(next.revision)
        .bind(next.update_time)
        .bind(id)
        .bind(current.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            // Another writer got in between the read and the write.
            return Err(Error::stale_etag("product", id));
        }
        let sequence = self.record(&mut tx, &CatalogEvent::ProductUpdated(next.clone())).await?;
        self.commit(tx, sequence).await?;
        Ok(next)
    }

    /// Discontinues the product; a product already discontinued is returned
    /// unchanged.
    pub async fn discontinue_product(&self, id: &str, etag: &str) -> Result<Product, Error> {
        let mut tx = self.db.begin_write().await?;
        let current = fetch_product(&mut *tx, id).await?;
        refuse(domain::check_etag(&current, etag), id)?;
        if current.state == ProductState::Discontinued {
            return Ok(current);
        }
        let mut next = current.clone();
        next.state = ProductState::Discontinued;
        next.revision += 1;
        next.update_time = now_micros().max(current.update_time);
        let changed = sqlx::query(
            "UPDATE products SET state = $1, revision = $2, update_time = $3 WHERE product_id = $4 AND revision = $5",
        )
        .bind(next.state.as_str())
        .bind(next.revision)
        .bind(next.update_time)
        .bind(id)
        .bind(current.revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(Error::stale_etag("product", id));
        }
        let event = CatalogEvent::ProductDiscontinued { product_id: id.to_owned() };
        let sequence = self.record(&mut tx, &event).await?;
        self.commit(tx, sequence).await?;
        Ok(next)
    }
}

fn refuse(result: Result<(), Refusal>, id: &str) -> Result<(), Error> {
    match result {
        Ok(()) => Ok(()),
        Err(Refusal::StaleEtag) => Err(Error::stale_etag("product", id)),
        Err(Refusal::Discontinued) => Err(Error::FailedPrecondition {
            kind: "STATE",
            subject: format!("product/{id}"),
            description: "the product is discontinued and can no longer change".into(),
        }),
    }
}

async fn family_exists(tx: &mut sqlx::Transaction<'static, sqlx::Any>, id: &str) -> Result<bool, Error> {
    Ok(sqlx::query("SELECT 1 FROM families WHERE family_id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await?
        .is_some())
}

/// One product through any executor: the pool, or an open transaction.
async fn fetch_product<'e, E>(executor: E, id: &str) -> Result<Product, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(concat!("SELECT ", product_columns!(), " FROM products WHERE product_id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await?;
    match row {
        Some(row) => Ok(product_from_row(&row)?),
        None => Err(Error::NotFound { resource: "product", id: id.to_owned() }),
    }
}
