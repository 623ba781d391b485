//! The catalog's repository: families and products in the catalog's own
//! database. It loads and saves the domain's types and knows no rule; the
//! same SQL serves SQLite and PostgreSQL.

use agora_platform::{
    Database, Error, UnitOfWork,
    db::{Executor, Page, Row, keyset},
};
use futures_util::Stream;

use crate::domain::{Family, Money, Product, ProductState};

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

fn family_from_row(row: &Row) -> Result<Family, Error> {
    Ok(Family {
        id: row.get("family_id")?,
        display_name: row.get("display_name")?,
        description: row.get("description")?,
        create_time: row.get("create_time")?,
    })
}

fn product_from_row(row: &Row) -> Result<Product, Error> {
    let state: String = row.get("state")?;
    Ok(Product {
        id: row.get("product_id")?,
        display_name: row.get("display_name")?,
        description: row.get("description")?,
        family_id: row.get("family_id")?,
        price: Money { currency_code: row.get("currency_code")?, amount_minor: row.get("amount_minor")? },
        state: ProductState::parse(&state)
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("unknown product state {state:?}")))?,
        revision: row.get("revision")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
    })
}

pub async fn insert_family(db: &Database, family: &Family) -> Result<(), Error> {
    db.query(
        "INSERT INTO families (family_id, display_name, description, create_time) VALUES ($1, $2, $3, $4)",
    )
    .bind(&family.id)
    .bind(&family.display_name)
    .bind(&family.description)
    .bind(family.create_time)
    .execute()
    .await
    .map(drop)
}

pub async fn family(db: &Database, id: &str) -> Result<Family, Error> {
    let row = db
        .query("SELECT family_id, display_name, description, create_time FROM families WHERE family_id = $1")
        .bind(id)
        .fetch_optional()
        .await?;
    match row {
        Some(row) => family_from_row(&row),
        None => Err(Error::NotFound { resource: "family", id: id.to_owned() }),
    }
}

pub async fn family_exists(on: impl Executor<'_>, id: &str) -> Result<bool, Error> {
    Ok(on.query("SELECT 1 FROM families WHERE family_id = $1").bind(id).fetch_optional().await?.is_some())
}

/// One page of families after the cursor `after`, in creation order.
pub async fn list_families(db: &Database, after: Option<i64>, limit: u32) -> Result<Page<Family>, Error> {
    let rows = db
        .query(
            "SELECT seq, family_id, display_name, description, create_time FROM families \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
        )
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all()
        .await?;
    keyset(rows, limit, family_from_row)
}

/// One product, through the pool or inside a unit of work.
pub async fn product(on: impl Executor<'_>, id: &str) -> Result<Product, Error> {
    let row = on
        .query(concat!("SELECT ", product_columns!(), " FROM products WHERE product_id = $1"))
        .bind(id)
        .fetch_optional()
        .await?;
    match row {
        Some(row) => product_from_row(&row),
        None => Err(Error::NotFound { resource: "product", id: id.to_owned() }),
    }
}

/// The products among `ids` that exist, in no particular order.
pub async fn products(db: &Database, ids: &[String]) -> Result<Vec<Product>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let placeholders: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        concat!("SELECT ", product_columns!(), " FROM products WHERE product_id IN ({})"),
        placeholders.join(", ")
    );
    let mut query = db.query_built(sql);
    for id in ids {
        query = query.bind(id);
    }
    query.fetch_all().await?.iter().map(product_from_row).collect()
}

/// One page of products after the cursor `after`, in creation order.
pub async fn list_products(
    db: &Database,
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
    let mut query = db.query(sql).bind(after.unwrap_or(0)).bind(i64::from(limit) + 1);
    if let Some(family) = &filter.family_id {
        query = query.bind(family);
    }
    if let Some(state) = filter.state {
        query = query.bind(state.as_str());
    }
    keyset(query.fetch_all().await?, limit, product_from_row)
}

/// Every product matching `filter`, in creation order, as batches read one
/// at a time when the consumer wants the next: a slow reader slows the
/// reading, and memory holds one batch.
pub fn stream_products(
    db: Database,
    filter: ProductFilter,
    batch: u32,
) -> impl Stream<Item = Result<Vec<Product>, Error>> + Send + 'static {
    futures_util::stream::unfold(Some(0), move |after| {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            let after = after?;
            match list_products(&db, &filter, Some(after), batch).await {
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

pub async fn insert_product(uow: &mut UnitOfWork, product: &Product) -> Result<(), Error> {
    uow.query(concat!(
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
    .execute()
    .await
    .map(drop)
}

/// Saves a changed product over the revision it was loaded at; another
/// writer that got in between makes the etag stale.
pub async fn save_product(uow: &mut UnitOfWork, product: &Product) -> Result<(), Error> {
    let changed = uow
        .query(
            "UPDATE products SET display_name = $1, description = $2, family_id = $3, currency_code = $4, \
             amount_minor = $5, state = $6, revision = $7, update_time = $8 \
             WHERE product_id = $9 AND revision = $10",
        )
        .bind(&product.display_name)
        .bind(&product.description)
        .bind(&product.family_id)
        .bind(&product.price.currency_code)
        .bind(product.price.amount_minor)
        .bind(product.state.as_str())
        .bind(product.revision)
        .bind(product.update_time)
        .bind(&product.id)
        .bind(product.revision - 1)
        .execute()
        .await?;
    if changed == 0 {
        return Err(Error::stale_etag("product", &product.id));
    }
    Ok(())
}
