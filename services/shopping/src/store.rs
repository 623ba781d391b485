//! The shopping context's repository: lists and their items in its own
//! database. It loads and saves the domain's types and knows no rule; the
//! same SQL serves SQLite and PostgreSQL; the row locks a write takes
//! (`UnitOfWork::lock`: the list it changes, and the lists the upstreams'
//! feeds change) are taken on PostgreSQL only.
//!
//! A list and its items are read together in one statement (the list left
//! joined to its items), so they always come from one snapshot, and a page
//! of lists costs one query however many items the lists hold.

use agora_platform::{
    Database, Error, UnitOfWork,
    db::{Page, Row},
};

use crate::domain::{Addition, Item, ShoppingList};

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
     FROM shopping_lists WHERE customer_id = $1 AND seq > $2 ORDER BY seq LIMIT CAST($3 AS BIGINT)) l \
     LEFT JOIN list_items i ON i.list_id = l.list_id ORDER BY l.seq, i.position"
);

/// The lists a feed event changes are locked (on PostgreSQL; see
/// `UnitOfWork::lock`) before any of their items is touched, so the
/// consumer takes its locks in the order the API does (the list, then its
/// items) and neither waits for the other in a circle. Both lock in list id
/// order, so the two feeds' consumers do not either.
const LOCK_HOLDING: &str = "SELECT list_id FROM shopping_lists WHERE list_id IN \
     (SELECT list_id FROM list_items WHERE product_id = $1 AND available = 1) ORDER BY list_id FOR UPDATE";
const LOCK_OWNED_BY: &str =
    "SELECT list_id FROM shopping_lists WHERE customer_id = $1 ORDER BY list_id FOR UPDATE";

fn not_found(id: &str) -> Error {
    Error::NotFound { resource: "shopping_list", id: id.to_owned() }
}

fn list_from_row(row: &Row) -> Result<ShoppingList, Error> {
    Ok(ShoppingList {
        id: row.get("list_id")?,
        customer_id: row.get("customer_id")?,
        title: row.get("title")?,
        items: Vec::new(),
        revision: row.get("revision")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
    })
}

/// The item of a joined row; None for a list without items (the item
/// columns are NULL).
fn item_from_row(row: &Row) -> Result<Option<Item>, Error> {
    let Some(product_id) = row.get::<Option<String>>("product_id")? else {
        return Ok(None);
    };
    let quantity: i64 = row.get("quantity")?;
    let available: i64 = row.get("available")?;
    Ok(Some(Item {
        product_id,
        quantity: i32::try_from(quantity).map_err(|e| Error::Internal(e.into()))?,
        available: available != 0,
    }))
}

/// Lists, with their `seq`, from rows of lists joined to their items and
/// ordered by list: consecutive rows of one list carry its items.
fn lists_from_rows(rows: &[Row]) -> Result<Vec<(i64, ShoppingList)>, Error> {
    let mut lists: Vec<(i64, ShoppingList)> = Vec::new();
    for row in rows {
        let seq: i64 = row.get("seq")?;
        if lists.last().is_none_or(|(last, _)| *last != seq) {
            lists.push((seq, list_from_row(row)?));
        }
        if let Some(item) = item_from_row(row)? {
            lists.last_mut().expect("pushed above").1.items.push(item);
        }
    }
    Ok(lists)
}

/// The one list of `list_with_items!` rows.
fn one_list(rows: Vec<Row>, id: &str) -> Result<ShoppingList, Error> {
    match lists_from_rows(&rows)?.pop() {
        Some((_, list)) => Ok(list),
        None => Err(not_found(id)),
    }
}

pub async fn insert(uow: &mut UnitOfWork, list: &ShoppingList) -> Result<(), Error> {
    uow.query(
        "INSERT INTO shopping_lists (list_id, customer_id, title, revision, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&list.id)
    .bind(&list.customer_id)
    .bind(&list.title)
    .bind(list.revision)
    .bind(list.create_time)
    .bind(list.update_time)
    .execute()
    .await
    .map(drop)
}

pub async fn list(db: &Database, id: &str) -> Result<ShoppingList, Error> {
    one_list(db.query(list_with_items!()).bind(id).fetch_all().await?, id)
}

/// One page of a customer's lists after the cursor `after`, in creation
/// order.
pub async fn lists_of(
    db: &Database,
    customer_id: &str,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<ShoppingList>, Error> {
    let rows = db
        .query(CUSTOMER_PAGE)
        .bind(customer_id)
        .bind(after.unwrap_or(0))
        // One more than asked: its presence says another page exists.
        .bind(i64::from(limit) + 1)
        .fetch_all()
        .await?;
    Ok(Page::cut(lists_from_rows(&rows)?, limit))
}

/// Reads a list in a unit of work, locked against other writers until the
/// unit of work ends.
pub async fn lock(uow: &mut UnitOfWork, list_id: &str) -> Result<ShoppingList, Error> {
    // Two writers of one list take turns instead of one overwriting the
    // other's change (see `UnitOfWork::lock`).
    uow.lock("SELECT list_id FROM shopping_lists WHERE list_id = $1 FOR UPDATE", list_id).await?;
    one_list(uow.query(list_with_items!()).bind(list_id).fetch_all().await?, list_id)
}

/// Saves what [`ShoppingList::add_item`] did to `product_id`, with the
/// list's new revision.
pub async fn save_addition(
    uow: &mut UnitOfWork,
    list: &ShoppingList,
    product_id: &str,
    addition: Addition,
) -> Result<(), Error> {
    match addition {
        Addition::NewItem => {
            let quantity =
                list.items.iter().find(|item| item.product_id == product_id).map_or(0, |i| i.quantity);
            // Last place: after every item the list ever had.
            uow.query(
                "INSERT INTO list_items (list_id, product_id, quantity, available, position) \
                 SELECT $1, $2, $3, 1, COALESCE(MAX(position), 0) + 1 FROM list_items WHERE list_id = $1",
            )
            .bind(&list.id)
            .bind(product_id)
            .bind(i64::from(quantity))
            .execute()
            .await?;
        }
        Addition::MoreOf { total } => {
            uow.query("UPDATE list_items SET quantity = $1 WHERE list_id = $2 AND product_id = $3")
                .bind(i64::from(total))
                .bind(&list.id)
                .bind(product_id)
                .execute()
                .await?;
        }
    }
    save_revision(uow, list).await
}

/// Saves what [`ShoppingList::remove_item`] did, with the list's new
/// revision.
pub async fn save_removal(uow: &mut UnitOfWork, list: &ShoppingList, product_id: &str) -> Result<(), Error> {
    uow.query("DELETE FROM list_items WHERE list_id = $1 AND product_id = $2")
        .bind(&list.id)
        .bind(product_id)
        .execute()
        .await?;
    save_revision(uow, list).await
}

/// Deletes a list and its items.
pub async fn delete(uow: &mut UnitOfWork, list_id: &str) -> Result<(), Error> {
    // The items first, by hand: the foreign key's cascade needs SQLite's
    // `foreign_keys` pragma, which this store does not rely on.
    uow.query("DELETE FROM list_items WHERE list_id = $1").bind(list_id).execute().await?;
    uow.query("DELETE FROM shopping_lists WHERE list_id = $1").bind(list_id).execute().await?;
    Ok(())
}

/// Marks a discontinued product unavailable on every list that holds it
/// available, in the feed consumer's unit of work. The items stay, product
/// id and quantity included; each list changed gets a new revision (so a
/// new etag) and update time. Returns how many lists changed: none when the
/// product was already marked, so applying the event twice changes nothing.
pub async fn mark_unavailable(uow: &mut UnitOfWork, product_id: &str, now: i64) -> Result<u64, Error> {
    uow.lock(LOCK_HOLDING, product_id).await?;
    // The lists bumped are exactly those whose item this statement
    // changed, even if a list took the product in the meantime.
    let changed = uow
        .query(
            "UPDATE list_items SET available = 0 WHERE product_id = $1 AND available = 1 RETURNING list_id",
        )
        .bind(product_id)
        .fetch_all()
        .await?;
    for row in &changed {
        let list_id: String = row.get("list_id")?;
        // As `ShoppingList::touch`: one revision more, and an update
        // time that never goes backwards.
        uow.query(
            "UPDATE shopping_lists SET revision = revision + 1, \
             update_time = CASE WHEN update_time < $2 THEN $2 ELSE update_time END \
             WHERE list_id = $1",
        )
        .bind(&list_id)
        .bind(now)
        .execute()
        .await?;
    }
    Ok(changed.len() as u64)
}

/// Deletes a deleted customer's lists, their items first, in the feed
/// consumer's unit of work. Returns how many lists went: none the second
/// time, so applying the event twice changes nothing.
pub async fn delete_lists_of(uow: &mut UnitOfWork, customer_id: &str) -> Result<u64, Error> {
    uow.lock(LOCK_OWNED_BY, customer_id).await?;
    // By hand, as `delete`: no reliance on the foreign key's cascade.
    uow.query(
        "DELETE FROM list_items WHERE list_id IN (SELECT list_id FROM shopping_lists WHERE customer_id = $1)",
    )
    .bind(customer_id)
    .execute()
    .await?;
    uow.query("DELETE FROM shopping_lists WHERE customer_id = $1").bind(customer_id).execute().await
}

/// Records a write of `list` (its new revision and update time).
async fn save_revision(uow: &mut UnitOfWork, list: &ShoppingList) -> Result<(), Error> {
    uow.query("UPDATE shopping_lists SET revision = $1, update_time = $2 WHERE list_id = $3")
        .bind(list.revision)
        .bind(list.update_time)
        .bind(&list.id)
        .execute()
        .await
        .map(drop)
}
