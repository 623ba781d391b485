//! The catalog's repository: families and products in the catalog's own
//! database. It loads and saves the domain's types and knows no rule; the
//! same SQL serves SQLite and PostgreSQL.

use agora_platform::{
    Database, Error, UnitOfWork,
    db::{Executor, Filter, Page, Row, Statement, page},
};
use futures_util::Stream;

use crate::domain::{Family, Money, Product, ProductState};

/// Columns of a product row, as `product_from_row` reads them.
macro_rules! product_columns {
    () => {
        "seq, product_id, display_name, description, family_id, currency_code, amount_minor, state, revision, create_time, update_time"
    };
}

/// Families as `family_from_row` reads them.
const FAMILIES: &str = "SELECT seq, family_id, display_name, description, create_time FROM families";

/// Which products a list or stream wants: of one family, in one state.
pub fn product_filter(family_id: Option<String>, state: Option<ProductState>) -> Filter {
    Filter::new().by("family", "family_id", family_id).by("state", "state", state.map(ProductState::as_str))
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
        state: state
            .parse()
            .map_err(|_| Error::Internal(anyhow::anyhow!("unknown product state {state:?}")))?,
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
    let sql = "SELECT family_id, display_name, description, create_time FROM families WHERE family_id = $1";
    family_from_row(&db.query(sql).bind(id).fetch_found("family", id).await?)
}

pub async fn family_exists(on: impl Executor<'_>, id: &str) -> Result<bool, Error> {
    Ok(on.query("SELECT 1 FROM families WHERE family_id = $1").bind(id).fetch_optional().await?.is_some())
}

/// One page of families after the cursor `after`, in creation order.
pub async fn list_families(db: &Database, after: Option<i64>, limit: u32) -> Result<Page<Family>, Error> {
    page(db, FAMILIES, &Filter::new(), after, limit, family_from_row).await
}

/// One product, through the pool or inside a unit of work.
pub async fn product(on: impl Executor<'_>, id: &str) -> Result<Product, Error> {
    let sql = concat!("SELECT ", product_columns!(), " FROM products WHERE product_id = $1");
    product_from_row(&on.query(sql).bind(id).fetch_found("product", id).await?)
}

/// One product about to change, in the unit of work that changes it:
/// locked until it ends (see [`UnitOfWork::lock`]).
pub async fn product_to_change(uow: &mut UnitOfWork, id: &str) -> Result<Product, Error> {
    uow.lock("SELECT product_id FROM products WHERE product_id = $1 FOR UPDATE", id).await?;
    product(uow, id).await
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
    filter: &Filter,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<Product>, Error> {
    page(db, concat!("SELECT ", product_columns!(), " FROM products"), filter, after, limit, product_from_row)
        .await
}

/// Every product matching `filter`, in creation order, as batches read one
/// at a time when the consumer wants the next: a slow reader slows the
/// reading, and memory holds one batch.
pub fn stream_products(
    db: Database,
    filter: Filter,
    batch: u32,
) -> impl Stream<Item = Result<Vec<Product>, Error>> + Send + 'static {
    futures_util::stream::unfold(Some(0), move |after| {
        let (db, filter) = (db.clone(), filter.clone());
        async move {
            let after = after?;
            // Detached: a reader that stalls must not hold a pooled connection.
            let read = async move { list_products(&db, &filter, Some(after), batch).await };
            match agora_platform::db::detached(read).await {
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

/// Binds what insert and save share: `$1` the id, `$2` to `$9` the
/// fields that change.
fn bind_product<'c>(statement: Statement<'c>, p: &Product) -> Statement<'c> {
    statement
        .bind(&p.id)
        .bind(&p.display_name)
        .bind(&p.description)
        .bind(&p.family_id)
        .bind(&p.price.currency_code)
        .bind(p.price.amount_minor)
        .bind(p.state.as_str())
        .bind(p.revision)
        .bind(p.update_time)
}

/// Inserts a new product; false when its family does not exist (nothing
/// inserted).
pub async fn insert_product(uow: &mut UnitOfWork, product: &Product) -> Result<bool, Error> {
    // One statement checks the family and inserts: a round trip fewer on
    // the write path than a read before the insert.
    let sql = "INSERT INTO products (product_id, display_name, description, family_id, currency_code, \
               amount_minor, state, revision, update_time, create_time) \
               SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
               WHERE EXISTS (SELECT 1 FROM families WHERE family_id = $4)";
    Ok(bind_product(uow.query(sql), product).bind(product.create_time).execute().await? == 1)
}

/// Saves a changed product over the revision it was loaded at; another
/// writer that got in between makes the etag stale.
pub async fn save_product(uow: &mut UnitOfWork, product: &Product) -> Result<(), Error> {
    let sql = "UPDATE products SET display_name = $2, description = $3, family_id = $4, currency_code = $5, \
               amount_minor = $6, state = $7, revision = $8, update_time = $9 \
               WHERE product_id = $1 AND revision = $10";
    let changed = bind_product(uow.query(sql), product).bind(product.revision - 1).execute().await?;
    if changed == 0 {
        return Err(Error::stale_etag("product", &product.id));
    }
    Ok(())
}
