//! The offers context's own database. Returns domain types; the same SQL
//! serves SQLite and PostgreSQL.

use agora_platform::{
    Database, Error,
    db::{Page, paginate},
    idempotency,
    wire::{new_id, now_micros},
};
use sqlx::{Any, Row as _, Transaction, any::AnyRow};

use crate::domain::{NewOffer, Offer, OfferKind, OfferState};

macro_rules! offer_columns {
    () => {
        "seq, offer_id, product_id, customer_id, kind, discount_percent, start_time, end_time, state, \
         revision, create_time"
    };
}

/// Which offers a list wants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OfferFilter {
    pub product_id: Option<String>,
    pub state: Option<OfferState>,
}

impl OfferFilter {
    /// A canonical rendering, bound into page tokens.
    pub fn fingerprint(&self) -> String {
        format!(
            "product={};state={}",
            self.product_id.as_deref().unwrap_or(""),
            self.state.map_or("", OfferState::as_str)
        )
    }
}

#[derive(Debug, Clone)]
pub struct OfferStore {
    db: Database,
}

fn offer_from_row(row: &AnyRow) -> Result<Offer, sqlx::Error> {
    let decode = |what: &str, value: String| sqlx::Error::Decode(format!("unknown {what} {value:?}").into());
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    let customer_id: String = row.try_get("customer_id")?;
    Ok(Offer {
        id: row.try_get("offer_id")?,
        product_id: row.try_get("product_id")?,
        customer_id: (!customer_id.is_empty()).then_some(customer_id),
        kind: OfferKind::parse(&kind).ok_or_else(|| decode("offer kind", kind))?,
        discount_percent: i32::try_from(row.try_get::<i64, _>("discount_percent")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
        start_time: row.try_get("start_time")?,
        end_time: row.try_get("end_time")?,
        state: OfferState::parse(&state).ok_or_else(|| decode("offer state", state))?,
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
    })
}

impl OfferStore {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Creates an offer, or returns the one an earlier call with the same
    /// idempotency key created.
    pub async fn create(&self, request_id: Option<&str>, new: NewOffer) -> Result<Offer, Error> {
        let now = now_micros();
        let offer = Offer {
            id: new_id("off"),
            product_id: new.product_id.clone(),
            customer_id: new.customer_id.clone(),
            kind: new.kind,
            discount_percent: new.discount_percent,
            start_time: new.start_time,
            end_time: new.end_time,
            state: OfferState::Active,
            revision: 1,
            create_time: now,
        };
        let mut tx = self.db.begin_write().await?;
        if let Some(request_id) = request_id
            && !idempotency::claim(&mut tx, request_id, &new.fingerprint(), &offer.id).await?
        {
            tx.rollback().await?;
            let id = idempotency::replay(&self.db, request_id, &new.fingerprint(), "offer").await?;
            return self.get(&id).await;
        }
        sqlx::query(
            "INSERT INTO offers (offer_id, product_id, customer_id, kind, discount_percent, start_time, \
             end_time, state, revision, create_time, update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)",
        )
        .bind(&offer.id)
        .bind(&offer.product_id)
        .bind(offer.customer_id.as_deref().unwrap_or(""))
        .bind(offer.kind.as_str())
        .bind(i64::from(offer.discount_percent))
        .bind(offer.start_time)
        .bind(offer.end_time)
        .bind(offer.state.as_str())
        .bind(offer.revision)
        .bind(offer.create_time)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(offer)
    }

    pub async fn get(&self, id: &str) -> Result<Offer, Error> {
        let row = sqlx::query(concat!("SELECT ", offer_columns!(), " FROM offers WHERE offer_id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        match row {
            Some(row) => Ok(offer_from_row(&row)?),
            None => Err(Error::NotFound { resource: "offer", id: id.to_owned() }),
        }
    }

    /// One page of offers after the cursor `after`, in creation order.
    pub async fn list(
        &self,
        filter: &OfferFilter,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Page<Offer>, Error> {
        // One statement per filter shape, so each can use its index.
        let sql = match (&filter.product_id, &filter.state) {
            (None, None) => {
                concat!("SELECT ", offer_columns!(), " FROM offers WHERE seq > $1 ORDER BY seq LIMIT $2")
            }
            (Some(_), None) => concat!(
                "SELECT ",
                offer_columns!(),
                " FROM offers WHERE seq > $1 AND product_id = $3 ORDER BY seq LIMIT $2"
            ),
            (None, Some(_)) => concat!(
                "SELECT ",
                offer_columns!(),
                " FROM offers WHERE seq > $1 AND state = $3 ORDER BY seq LIMIT $2"
            ),
            (Some(_), Some(_)) => concat!(
                "SELECT ",
                offer_columns!(),
                " FROM offers WHERE seq > $1 AND product_id = $3 AND state = $4 ORDER BY seq LIMIT $2"
            ),
        };
        let mut query = sqlx::query(sql).bind(after.unwrap_or(0)).bind(i64::from(limit) + 1);
        if let Some(product) = &filter.product_id {
            query = query.bind(product.clone());
        }
        if let Some(state) = filter.state {
            query = query.bind(state.as_str());
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        paginate(rows, limit, offer_from_row)
    }

    /// Withdraws an offer; withdrawing twice changes nothing.
    pub async fn withdraw(&self, id: &str, etag: &str) -> Result<Offer, Error> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(concat!("SELECT ", offer_columns!(), " FROM offers WHERE offer_id = $1"))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(current) = row.as_ref().map(offer_from_row).transpose()? else {
            return Err(Error::NotFound { resource: "offer", id: id.to_owned() });
        };
        if !etag.is_empty() && etag != current.etag() {
            return Err(Error::stale_etag("offer", id));
        }
        if current.state == OfferState::Withdrawn {
            return Ok(current);
        }
        let next = Offer { state: OfferState::Withdrawn, revision: current.revision + 1, ..current };
        sqlx::query("UPDATE offers SET state = $1, revision = $2, update_time = $3 WHERE offer_id = $4")
            .bind(next.state.as_str())
            .bind(next.revision)
            .bind(now_micros())
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// Withdraws, inside a feed consumer's transaction, every active offer
    /// whose `column` (product_id or customer_id) is `id`. Withdrawn offers
    /// are left alone, so applying the same event twice changes nothing.
    pub async fn withdraw_where(
        tx: &mut Transaction<'static, Any>,
        column: &'static str,
        id: &str,
    ) -> Result<u64, Error> {
        let sql = match column {
            "product_id" => {
                "UPDATE offers SET state = 'WITHDRAWN', revision = revision + 1, update_time = $2 \
                 WHERE product_id = $1 AND state = 'ACTIVE'"
            }
            "customer_id" => {
                "UPDATE offers SET state = 'WITHDRAWN', revision = revision + 1, update_time = $2 \
                 WHERE customer_id = $1 AND state = 'ACTIVE'"
            }
            other => return Err(Error::Internal(anyhow::anyhow!("offers cannot be withdrawn by {other}"))),
        };
        Ok(sqlx::query(sql).bind(id).bind(now_micros()).execute(&mut **tx).await?.rows_affected())
    }

    /// The core query: offers a customer can use at `now` (their personal
    /// ones and those for everyone), soonest ending first.
    pub async fn available(
        &self,
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
                 AND start_time <= $2 AND end_time > $2 ORDER BY end_time, seq LIMIT $3"
            ),
            Some(_) => concat!(
                "SELECT ",
                offer_columns!(),
                " FROM offers WHERE state = 'ACTIVE' AND customer_id IN ('', $1) \
                 AND start_time <= $2 AND end_time > $2 AND product_id = $4 ORDER BY end_time, seq LIMIT $3"
            ),
        };
        let mut query = sqlx::query(sql).bind(customer_id.unwrap_or("")).bind(now).bind(i64::from(limit));
        if let Some(product) = product_id {
            query = query.bind(product.to_owned());
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        Ok(rows.iter().map(offer_from_row).collect::<Result<_, _>>()?)
    }
}
