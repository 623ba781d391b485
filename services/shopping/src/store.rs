//! The shopping context's own database. Returns domain types; the same SQL
//! serves SQLite and PostgreSQL, save the row locks a write takes
//! (`lock_sql`, and `lock_affected_sql` for the changes the upstreams'
//! feeds bring).
//!
//! A list and its items are read together in one statement (the list left
//! joined to its items), so they always come from one snapshot, and a page
//! of lists costs one query however many items the lists hold.

use agora_platform::{
    Backend, Database, Error,
    wire::{new_id, now_micros},
};
use sqlx::{Row as _, any::AnyRow};

use crate::domain::{Addition, Item, NewList, Refusal, ShoppingList};

/// Columns of a list row and of its items, as `lists_from_rows` reads them.
macro_rules! columns {
    () => {
        "l.seq, l.list_id, l.customer_id, l.title, l.revision, l.create_time, l.update_time, \
         i.product_id, i.quantity, i.available"
    };
}

/// One list with its items in order.
macro_rules! list_with_items {
    () => {
        concat!(
            "SELECT ",
            columns!(),
            " FROM shopping_lists l LEFT JOIN list_items i ON i.list_id = l.list_id \
             WHERE l.list_id = $1 ORDER BY i.position"
        )
    };
}

/// One page of a customer's lists, with their items: the page is cut in a
/// subquery, so LIMIT counts lists, not items.
const CUSTOMER_PAGE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM (SELECT seq, list_id, customer_id, title, revision, create_time, update_time \
     FROM shopping_lists WHERE customer_id = $1 AND seq > $2 ORDER BY seq LIMIT $3) l \
     LEFT JOIN list_items i ON i.list_id = l.list_id ORDER BY l.seq, i.position"
);

/// The statement that locks a list about to change, where one is needed.
/// PostgreSQL locks the list's row until commit, so two writers of one list
/// take turns instead of one overwriting the other's change. The lock is a
/// statement of its own: a statement reads from the snapshot of its start,
/// so only a read that begins after the lock was granted sees what the
/// previous writer committed. SQLite has no `FOR UPDATE` and needs none:
/// `begin_write` already holds the database's write lock.
fn lock_sql(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some("SELECT list_id FROM shopping_lists WHERE list_id = $1 FOR UPDATE"),
    }
}

/// Which lists a feed event is about to change.
#[derive(Debug, Clone, Copy)]
enum Affected {
    /// The lists holding a product that is still available (`$1`).
    Holding,
    /// A customer's lists (`$1`).
    OwnedBy,
}

/// The statement that locks the lists a feed event changes, where one is
/// needed: on PostgreSQL, before any of their items is touched, so the
/// consumer takes its locks in the order the API does (the list, then its
/// items) and neither waits for the other in a circle. Both lock in list id
/// order, so the two feeds' consumers do not either.
fn lock_affected_sql(backend: Backend, affected: Affected) -> Option<&'static str> {
    match (backend, affected) {
        (Backend::Sqlite, _) => None,
        (Backend::Postgres, Affected::Holding) => Some(
            "SELECT list_id FROM shopping_lists WHERE list_id IN \
             (SELECT list_id FROM list_items WHERE product_id = $1 AND available = 1) \
             ORDER BY list_id FOR UPDATE",
        ),
        (Backend::Postgres, Affected::OwnedBy) => {
            Some("SELECT list_id FROM shopping_lists WHERE customer_id = $1 ORDER BY list_id FOR UPDATE")
        }
    }
}

/// One page of a keyset listing: the lists and the cursor of the next page.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct ShoppingStore {
    db: Database,
}

fn not_found(id: &str) -> Error {
    Error::NotFound { resource: "shopping_list", id: id.to_owned() }
}

/// A domain refusal as the caller sees it.
fn refused(list_id: &str, refusal: Refusal) -> Error {
    match refusal {
        Refusal::StaleEtag => Error::stale_etag("shopping_list", list_id),
        Refusal::TooMany { product_id, total } => Error::FailedPrecondition {
            kind: "QUANTITY",
            subject: format!("shopping_list/{list_id}/product/{product_id}"),
            description: format!(
                "the list would hold {total} of product {product_id}; a list holds at most {} of a product",
                crate::domain::QUANTITY.end()
            ),
        },
    }
}

fn decode_error(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

fn list_from_row(row: &AnyRow) -> Result<ShoppingList, sqlx::Error> {
    Ok(ShoppingList {
        id: row.try_get("list_id")?,
        customer_id: row.try_get("customer_id")?,
        title: row.try_get("title")?,
        items: Vec::new(),
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// The item of a joined row; None for a list without items (the item
/// columns are NULL).
fn item_from_row(row: &AnyRow) -> Result<Option<Item>, sqlx::Error> {
    let Some(product_id) = row.try_get::<Option<String>, _>("product_id")? else {
        return Ok(None);
    };
    let quantity: i64 = row.try_get("quantity")?;
    let available: i64 = row.try_get("available")?;
    Ok(Some(Item {
        product_id,
        quantity: i32::try_from(quantity).map_err(decode_error)?,
        available: available != 0,
    }))
}

/// Lists, with their `seq`, from rows of lists joined to their items and
/// ordered by list: consecutive rows of one list carry its items.
fn lists_from_rows(rows: &[AnyRow]) -> Result<Vec<(i64, ShoppingList)>, sqlx::Error> {
    let mut lists: Vec<(i64, ShoppingList)> = Vec::new();
    for row in rows {
        let seq: i64 = row.try_get("seq")?;
        if lists.last().is_none_or(|(last, _)| *last != seq) {
            lists.push((seq, list_from_row(row)?));
        }
        if let Some(item) = item_from_row(row)? {
            lists.last_mut().expect("pushed above").1.items.push(item);
        }
    }
    Ok(lists)
}

/// One list with its items through any executor: the pool, or an open
/// transaction.
async fn fetch_list<'e, E>(executor: E, sql: &'static str, id: &str) -> Result<ShoppingList, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(sql).bind(id).fetch_all(executor).await?;
    match lists_from_rows(&rows)?.pop() {
        Some((_, list)) => Ok(list),
        None => Err(not_found(id)),
    }
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl ShoppingStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Creates an empty list.
    pub async fn create(&self, new: NewList) -> Result<ShoppingList, Error> {
        let now = now_micros();
        let list = ShoppingList {
            id: new_id("lst"),
            customer_id: new.customer_id,
            title: new.title,
            items: Vec::new(),
            revision: 1,
            create_time: now,
            update_time: now,
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO shopping_lists (list_id, customer_id, title, revision, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&list.id)
        .bind(&list.customer_id)
        .bind(&list.title)
        .bind(list.revision)
        .bind(list.create_time)
        .bind(list.update_time)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(list)
    }

    pub async fn get(&self, id: &str) -> Result<ShoppingList, Error> {
        fetch_list(self.db.pool(), list_with_items!(), id).await
    }

    /// One page of a customer's lists after the cursor `after`, in creation
    /// order.
    pub async fn list_for_customer(
        &self,
        customer_id: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<ShoppingList>, Error> {
        let rows = sqlx::query(CUSTOMER_PAGE)
            .bind(customer_id)
            .bind(after.unwrap_or(0))
            // One more than asked: its presence says another page exists.
            .bind(i64::from(limit) + 1)
            .fetch_all(self.db.pool())
            .await?;
        let mut lists = lists_from_rows(&rows)?;
        let more = lists.len() > limit as usize;
        lists.truncate(limit as usize);
        let next_after = if more { lists.last().map(|(seq, _)| *seq) } else { None };
        Ok(Page { items: lists.into_iter().map(|(_, list)| list).collect(), next_after })
    }

    /// Adds `quantity` of a product to the list if `etag` (when given) is
    /// current. Whether the product may go on a list is the caller's
    /// question to the catalog, asked before: no transaction stays open
    /// while another service is waited for.
    pub async fn add_item(
        &self,
        list_id: &str,
        etag: &str,
        product_id: &str,
        quantity: i32,
    ) -> Result<ShoppingList, Error> {
        let (mut tx, mut list) = self.lock(list_id).await?;
        list.check_etag(etag).map_err(|r| refused(list_id, r))?;
        match list.add(product_id, quantity).map_err(|r| refused(list_id, r))? {
            Addition::NewItem => {
                // Last place: after every item the list ever had.
                sqlx::query(
                    "INSERT INTO list_items (list_id, product_id, quantity, available, position) \
                     SELECT $1, $2, $3, 1, COALESCE(MAX(position), 0) + 1 FROM list_items WHERE list_id = $1",
                )
                .bind(list_id)
                .bind(product_id)
                .bind(i64::from(quantity))
                .execute(&mut *tx)
                .await?;
            }
            Addition::MoreOf { total } => {
                sqlx::query("UPDATE list_items SET quantity = $1 WHERE list_id = $2 AND product_id = $3")
                    .bind(i64::from(total))
                    .bind(list_id)
                    .bind(product_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        save_revision(tx, &mut list).await?;
        Ok(list)
    }

    /// Takes a product off the list if `etag` (when given) is current, and
    /// says whether it was on it. A product that is not on the list leaves
    /// the list as it is, etag included.
    pub async fn remove_item(
        &self,
        list_id: &str,
        etag: &str,
        product_id: &str,
    ) -> Result<(ShoppingList, bool), Error> {
        let (mut tx, mut list) = self.lock(list_id).await?;
        list.check_etag(etag).map_err(|r| refused(list_id, r))?;
        if !list.remove(product_id) {
            // Nothing to write: dropping the transaction ends it.
            return Ok((list, false));
        }
        sqlx::query("DELETE FROM list_items WHERE list_id = $1 AND product_id = $2")
            .bind(list_id)
            .bind(product_id)
            .execute(&mut *tx)
            .await?;
        save_revision(tx, &mut list).await?;
        Ok((list, true))
    }

    /// Deletes the list and its items if `etag` (when given) is current.
    pub async fn delete(&self, list_id: &str, etag: &str) -> Result<(), Error> {
        let (mut tx, list) = self.lock(list_id).await?;
        list.check_etag(etag).map_err(|r| refused(list_id, r))?;
        // The items first, by hand: the foreign key's cascade needs SQLite's
        // `foreign_keys` pragma, which this store does not rely on.
        sqlx::query("DELETE FROM list_items WHERE list_id = $1").bind(list_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM shopping_lists WHERE list_id = $1").bind(list_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks a discontinued product unavailable on every list that holds it
    /// available, in the feed consumer's transaction `tx`. The items stay,
    /// product id and quantity included; each list changed gets a new
    /// revision (so a new etag) and update time. Returns how many lists
    /// changed: none when the product was already marked, so applying the
    /// event twice changes nothing.
    pub async fn mark_unavailable(&self, tx: &mut Tx, product_id: &str) -> Result<u64, Error> {
        if let Some(sql) = lock_affected_sql(self.db.backend(), Affected::Holding) {
            sqlx::query(sql).bind(product_id).execute(&mut **tx).await?;
        }
        // The lists bumped are exactly those whose item this statement
        // changed, even if a list took the product in the meantime.
        let changed = sqlx::query(
            "UPDATE list_items SET available = 0 WHERE product_id = $1 AND available = 1 RETURNING list_id",
        )
        .bind(product_id)
        .fetch_all(&mut **tx)
        .await?;
        let now = now_micros();
        for row in &changed {
            let list_id: String = row.try_get("list_id")?;
            // As `ShoppingList::touch`: one revision more, and an update
            // time that never goes backwards.
            sqlx::query(
                "UPDATE shopping_lists SET revision = revision + 1, \
                 update_time = CASE WHEN update_time < $2 THEN $2 ELSE update_time END \
                 WHERE list_id = $1",
            )
            .bind(&list_id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Ok(changed.len() as u64)
    }

    /// Deletes a deleted customer's lists, their items first, in the feed
    /// consumer's transaction `tx`. Returns how many lists went: none the
    /// second time, so applying the event twice changes nothing.
    pub async fn delete_lists_of(&self, tx: &mut Tx, customer_id: &str) -> Result<u64, Error> {
        if let Some(sql) = lock_affected_sql(self.db.backend(), Affected::OwnedBy) {
            sqlx::query(sql).bind(customer_id).execute(&mut **tx).await?;
        }
        // By hand, as `delete`: no reliance on the foreign key's cascade.
        sqlx::query(
            "DELETE FROM list_items WHERE list_id IN (SELECT list_id FROM shopping_lists WHERE customer_id = $1)",
        )
        .bind(customer_id)
        .execute(&mut **tx)
        .await?;
        let deleted = sqlx::query("DELETE FROM shopping_lists WHERE customer_id = $1")
            .bind(customer_id)
            .execute(&mut **tx)
            .await?;
        Ok(deleted.rows_affected())
    }

    /// Opens a write transaction and reads the list in it, locked against
    /// other writers until the transaction ends.
    async fn lock(&self, list_id: &str) -> Result<(Tx, ShoppingList), Error> {
        let mut tx = self.db.begin_write().await?;
        if let Some(sql) = lock_sql(self.db.backend()) {
            sqlx::query(sql).bind(list_id).execute(&mut *tx).await?;
        }
        let list = fetch_list(&mut *tx, list_with_items!(), list_id).await?;
        Ok((tx, list))
    }
}

/// Records a write of `list` (new revision and update time) and commits
/// the transaction that made it.
async fn save_revision(mut tx: Tx, list: &mut ShoppingList) -> Result<(), Error> {
    list.touch(now_micros());
    sqlx::query("UPDATE shopping_lists SET revision = $1, update_time = $2 WHERE list_id = $3")
        .bind(list.revision)
        .bind(list.update_time)
        .bind(&list.id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}
