//! The offers context's repository: offers in its own database. It loads
//! and saves the domain's types and knows no rule, but one: the available
//! offers are asked of an index, so "available" is said here in SQL too
//! ([`available`]), held to [`Offer::is_available`] by a test that runs
//! both on the same rows. The same SQL serves SQLite and PostgreSQL.

use agora_platform::{
    Database, Error, UnitOfWork,
    db::{Executor, Filter, Page, Row, page},
};

use crate::domain::{Offer, OfferState, Window};

macro_rules! offer_columns {
    () => {
        "seq, offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time, state, \
         revision, create_time, update_time"
    };
}

/// Which offers a list wants: on one product, in one state.
pub fn offer_filter(product_id: Option<String>, state: Option<OfferState>) -> Filter {
    Filter::new().by("product", "product_id", product_id).by("state", "state", state.map(OfferState::as_str))
}

fn offer_from_row(row: &Row) -> Result<Offer, Error> {
    let unknown = |what: &str, value: String| Error::Internal(anyhow::anyhow!("unknown {what} {value:?}"));
    let kind: String = row.get("kind")?;
    let state: String = row.get("state")?;
    let customer_id: String = row.get("customer_id")?;
    let discount: i64 = row.get("discount_percent")?;
    Ok(Offer {
        id: row.get("offer_id")?,
        product_id: row.get("product_id")?,
        customer_id: (!customer_id.is_empty()).then_some(customer_id),
        kind: kind.parse().map_err(|_| unknown("offer kind", kind))?,
        discount_percent: i32::try_from(discount).map_err(|e| Error::Internal(e.into()))?,
        window: Window { start: row.get("start_time")?, end: row.get("end_time")? },
        state: state.parse().map_err(|_| unknown("offer state", state))?,
        revision: row.get("revision")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
    })
}

pub async fn insert(uow: &mut UnitOfWork, offer: &Offer) -> Result<(), Error> {
    uow.query(
        "INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, \
         end_time, state, revision, create_time, update_time) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&offer.id)
    .bind(&offer.product_id)
    .bind(offer.customer_id.as_deref().unwrap_or(""))
    .bind(offer.kind.as_str())
    .bind(i64::from(offer.discount_percent))
    .bind(offer.window.start)
    .bind(offer.window.end)
    .bind(offer.state.as_str())
    .bind(offer.revision)
    .bind(offer.create_time)
    .bind(offer.update_time)
    .execute()
    .await
    .map(drop)
}

/// One offer, through the pool or inside a unit of work.
pub async fn offer(on: impl Executor<'_>, id: &str) -> Result<Offer, Error> {
    let sql = concat!("SELECT ", offer_columns!(), " FROM offers WHERE offer_id = $1");
    offer_from_row(&on.query(sql).bind(id).fetch_found("offer", id).await?)
}

/// One offer about to change, in the unit of work that changes it: locked
/// until it ends (see [`UnitOfWork::lock`]), so the feed's withdrawals and
/// a withdrawal by staff take turns.
pub async fn offer_to_change(uow: &mut UnitOfWork, id: &str) -> Result<Offer, Error> {
    uow.lock("SELECT offer_id FROM offers WHERE offer_id = $1 FOR UPDATE", id).await?;
    offer(uow, id).await
}

/// Saves a changed offer over the revision it was loaded at.
pub async fn save(uow: &mut UnitOfWork, offer: &Offer) -> Result<(), Error> {
    let changed = uow
        .query(
            "UPDATE offers SET state = $1, revision = $2, update_time = $3 WHERE offer_id = $4 AND revision = $5",
        )
        .bind(offer.state.as_str())
        .bind(offer.revision)
        .bind(offer.update_time)
        .bind(&offer.id)
        .bind(offer.revision - 1)
        .execute()
        .await?;
    if changed == 0 {
        return Err(Error::stale_etag("offer", &offer.id));
    }
    Ok(())
}

/// One page of offers after the cursor `after`, in creation order.
pub async fn list(
    db: &Database,
    filter: &Filter,
    after: Option<i64>,
    limit: u32,
) -> Result<Page<Offer>, Error> {
    page(db, concat!("SELECT ", offer_columns!(), " FROM offers"), filter, after, limit, offer_from_row).await
}

/// Which offers a feed event withdraws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Withdrawn {
    /// Every active offer on a product.
    OfProduct(String),
    /// Every active offer of one customer's.
    OfCustomer(String),
}

/// Withdraws, inside a feed consumer's unit of work, every active offer a
/// feed event takes away, as [`Offer::withdraw`] would one by one: a new
/// revision and update time each. Withdrawn offers are left alone, so
/// applying the same event twice changes nothing. Returns how many went.
pub async fn withdraw_all(uow: &mut UnitOfWork, which: &Withdrawn, now: i64) -> Result<u64, Error> {
    let (sql, id) = match which {
        Withdrawn::OfProduct(id) => (
            "UPDATE offers SET state = 'WITHDRAWN', revision = revision + 1, \
             update_time = CASE WHEN update_time < $2 THEN $2 ELSE update_time END \
             WHERE product_id = $1 AND state = 'ACTIVE'",
            id,
        ),
        Withdrawn::OfCustomer(id) => (
            "UPDATE offers SET state = 'WITHDRAWN', revision = revision + 1, \
             update_time = CASE WHEN update_time < $2 THEN $2 ELSE update_time END \
             WHERE customer_id = $1 AND state = 'ACTIVE'",
            id,
        ),
    };
    uow.query(sql).bind(id).bind(now).execute().await
}

/// The core query: offers a customer can use at `now` (their personal
/// ones and those for everyone), soonest ending first. The SQL form of
/// [`Offer::is_available`], for the index.
pub async fn available(
    db: &Database,
    customer_id: Option<&str>,
    product_id: Option<&str>,
    now: i64,
    limit: u32,
) -> Result<Vec<Offer>, Error> {
    let sql = match product_id {
        None => concat!(
            "SELECT ",
            offer_columns!(),
            " FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', $1) \
             AND start_time <= $2 AND end_time > $2 ORDER BY end_time, seq LIMIT CAST($3 AS BIGINT)"
        ),
        Some(_) => concat!(
            "SELECT ",
            offer_columns!(),
            " FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', $1) \
             AND start_time <= $2 AND end_time > $2 AND product_id = $4 ORDER BY end_time, seq LIMIT CAST($3 AS BIGINT)"
        ),
    };
    // The LIMIT through a CAST keeps the statement prepared (see `db::page`).
    let mut query = db.query(sql).bind(customer_id.unwrap_or("")).bind(now).bind(i64::from(limit));
    if let Some(product) = product_id {
        query = query.bind(product);
    }
    query.fetch_all().await?.iter().map(offer_from_row).collect()
}

/// When the first offer a customer could use (their personal ones and
/// those for everyone) that is not available yet at `now` starts; None when
/// no such offer is waiting. What an answer of [`available`] holds until,
/// with the ends of its offers.
pub async fn next_start(
    db: &Database,
    customer_id: Option<&str>,
    product_id: Option<&str>,
    now: i64,
) -> Result<Option<i64>, Error> {
    let sql = match product_id {
        None => {
            "SELECT MIN(start_time) AS next FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', $1) \
             AND start_time > $2"
        }
        Some(_) => {
            "SELECT MIN(start_time) AS next FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', $1) \
             AND start_time > $2 AND product_id = $3"
        }
    };
    let mut query = db.query(sql).bind(customer_id.unwrap_or("")).bind(now);
    if let Some(product) = product_id {
        query = query.bind(product);
    }
    query.fetch_one().await?.get("next")
}
