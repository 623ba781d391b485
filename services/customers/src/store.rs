//! The customers' own database. Returns domain types; the same SQL serves
//! SQLite and PostgreSQL.
//!
//! Email uniqueness is the database's job: the UNIQUE constraint on
//! `email_key` decides, and a refused write becomes ALREADY_EXISTS. A check
//! with a SELECT first would let two concurrent registrations of one address
//! both pass.

use agora_platform::{
    Database, Error,
    db::{Page, paginate},
    outbox::Outbox,
    wire::now_micros,
};
use sqlx::{Any, Row as _, Transaction, any::AnyRow};

use crate::domain::{self, Customer, CustomerEvent, CustomerPatch, Email, NewCustomer, StaleEtag};

/// Columns of a customer row, in the order `customer_from_row` reads them.
macro_rules! customer_columns {
    () => {
        "seq, customer_id, given_name, family_name, email, revision, create_time, update_time"
    };
}

/// The constraint that keeps emails unique, as the migrations name it.
const EMAIL_CONSTRAINT: &str = "customers_email_key_unique";

#[derive(Debug, Clone)]
pub struct CustomerStore {
    db: Database,
    /// Registrations and deletions leave an event here, in their transaction.
    outbox: Outbox,
}

fn customer_from_row(row: &AnyRow) -> Result<Customer, sqlx::Error> {
    Ok(Customer {
        id: row.try_get("customer_id")?,
        given_name: row.try_get("given_name")?,
        family_name: row.try_get("family_name")?,
        email: Email::trusted(row.try_get("email")?),
        revision: row.try_get("revision")?,
        create_time: row.try_get("create_time")?,
        update_time: row.try_get("update_time")?,
    })
}

/// Whether the database refused a write because another customer has the
/// email. PostgreSQL names the constraint; SQLite names the column in its
/// message (`UNIQUE constraint failed: customers.email_key`). Any other
/// unique violation stays an internal error instead of a misleading answer.
fn is_email_taken(err: &sqlx::Error) -> bool {
    err.as_database_error().is_some_and(|e| {
        e.is_unique_violation()
            && match e.constraint() {
                Some(name) => name == EMAIL_CONSTRAINT,
                None => e.message().contains("customers.email_key"),
            }
    })
}

/// The answer to a duplicate email. It names neither the address nor the
/// customer who has it: both are personal data.
fn email_taken() -> Error {
    Error::AlreadyExists("another customer already uses this email".into())
}

/// A write's database error, with a duplicate email told apart.
fn write_error(err: sqlx::Error) -> Error {
    if is_email_taken(&err) { email_taken() } else { err.into() }
}

fn stale(id: &str) -> Error {
    Error::stale_etag("customer", id)
}

fn not_found(id: &str) -> Error {
    Error::NotFound { resource: "customer", id: id.to_owned() }
}

impl CustomerStore {
    pub fn new(db: Database, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Records `event` in the transaction of its change and commits, then
    /// wakes the change-feed watchers.
    async fn commit_with(
        &self,
        mut tx: Transaction<'static, Any>,
        event: CustomerEvent,
    ) -> Result<(), Error> {
        let payload = serde_json::to_string(&event).map_err(|e| Error::Internal(e.into()))?;
        let sequence = self.outbox.append(&mut tx, event.kind(), &payload).await?;
        tx.commit().await?;
        self.outbox.committed(sequence);
        Ok(())
    }

    /// Registers a customer; ALREADY_EXISTS when the email is taken.
    pub async fn create_customer(&self, new: NewCustomer) -> Result<Customer, Error> {
        let now = now_micros();
        let customer = Customer {
            id: agora_platform::wire::new_id("cus"),
            given_name: new.given_name,
            family_name: new.family_name,
            email: new.email,
            revision: 1,
            create_time: now,
            update_time: now,
        };
        let mut tx = self.db.begin_write().await?;
        sqlx::query(concat!(
            "INSERT INTO customers (customer_id, given_name, family_name, email, email_key, ",
            "revision, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&customer.id)
        .bind(&customer.given_name)
        .bind(&customer.family_name)
        .bind(customer.email.as_str())
        .bind(customer.email.key())
        .bind(customer.revision)
        .bind(customer.create_time)
        .bind(customer.update_time)
        .execute(&mut *tx)
        .await
        .map_err(write_error)?;
        self.commit_with(tx, CustomerEvent::CustomerRegistered { customer_id: customer.id.clone() }).await?;
        Ok(customer)
    }

    pub async fn get_customer(&self, id: &str) -> Result<Customer, Error> {
        fetch_customer(self.db.pool(), id).await
    }

    /// One page of customers after the cursor `after`, in creation order.
    pub async fn list_customers(&self, after: Option<i64>, limit: u32) -> Result<Page<Customer>, Error> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            customer_columns!(),
            " FROM customers WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.pool())
        .await?;
        paginate(rows, limit, customer_from_row)
    }

    /// Applies `patch` to the customer if `etag` (when given) is current;
    /// ALREADY_EXISTS when the new email is another customer's.
    pub async fn update_customer(
        &self,
        id: &str,
        etag: &str,
        patch: &CustomerPatch,
    ) -> Result<Customer, Error> {
        let mut tx = self.db.begin_write().await?;
        let current = fetch_customer(&mut *tx, id).await?;
        domain::check_etag(&current, etag).map_err(|StaleEtag| stale(id))?;
        let mut next = patch.apply(&current);
        next.revision = current.revision + 1;
        next.update_time = now_micros().max(current.update_time);
        let changed = sqlx::query(
            "UPDATE customers SET given_name = $1, family_name = $2, email = $3, email_key = $4, \
             revision = $5, update_time = $6 WHERE customer_id = $7 AND revision = $8",
        )
        .bind(&next.given_name)
        .bind(&next.family_name)
        .bind(next.email.as_str())
        .bind(next.email.key())
        .bind(next.revision)
        .bind(next.update_time)
        .bind(id)
        .bind(current.revision)
        .execute(&mut *tx)
        .await
        .map_err(write_error)?
        .rows_affected();
        if changed == 0 {
            // Another writer got in between the read and the write.
            return Err(stale(id));
        }
        tx.commit().await?;
        Ok(next)
    }

    /// Deletes the customer for good if `etag` (when given) is current.
    pub async fn delete_customer(&self, id: &str, etag: &str) -> Result<(), Error> {
        // One transaction for the deletion and its outbox event.
        let mut tx = self.db.begin_write().await?;
        let deleted = if etag.is_empty() {
            sqlx::query("DELETE FROM customers WHERE customer_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            let current = fetch_customer(&mut *tx, id).await?;
            domain::check_etag(&current, etag).map_err(|StaleEtag| stale(id))?;
            let deleted = sqlx::query("DELETE FROM customers WHERE customer_id = $1 AND revision = $2")
                .bind(id)
                .bind(current.revision)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if deleted == 0 {
                // Another writer got in between the read and the delete.
                return Err(stale(id));
            }
            deleted
        };
        if deleted == 0 {
            return Err(not_found(id));
        }
        self.commit_with(tx, CustomerEvent::CustomerDeleted { customer_id: id.to_owned() }).await
    }
}

/// One customer through any executor: the pool, or an open transaction.
async fn fetch_customer<'e, E>(executor: E, id: &str) -> Result<Customer, Error>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(concat!("SELECT ", customer_columns!(), " FROM customers WHERE customer_id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await?;
    match row {
        Some(row) => Ok(customer_from_row(&row)?),
        None => Err(not_found(id)),
    }
}
