//! The customers' repository: customers in their own database. It loads
//! and saves the domain's types and knows no rule; the same SQL serves
//! SQLite and PostgreSQL.
//!
//! Email uniqueness is the database's job: the UNIQUE constraint on
//! `email_key` decides, and a refused write becomes ALREADY_EXISTS. A check
//! with a SELECT first would let two concurrent registrations of one address
//! both pass.

use agora_platform::{
    Database, Error, UnitOfWork,
    db::{Executor, Page, Row, Unique, keyset},
};

use crate::domain::{Customer, Email};

/// Columns of a customer row, in the order `customer_from_row` reads them.
macro_rules! customer_columns {
    () => {
        "seq, customer_id, given_name, family_name, email, revision, create_time, update_time"
    };
}

/// The constraint that keeps emails unique, as the migrations name it.
const EMAIL: Unique = Unique { constraint: "customers_email_key_unique", column: "customers.email_key" };

fn customer_from_row(row: &Row) -> Result<Customer, Error> {
    Ok(Customer {
        id: row.get("customer_id")?,
        given_name: row.get("given_name")?,
        family_name: row.get("family_name")?,
        email: Email::trusted(row.get("email")?),
        revision: row.get("revision")?,
        create_time: row.get("create_time")?,
        update_time: row.get("update_time")?,
    })
}

/// The answer to a duplicate email. It names neither the address nor the
/// customer who has it: both are personal data.
fn email_taken() -> Error {
    Error::AlreadyExists("another customer already uses this email".into())
}

fn not_found(id: &str) -> Error {
    Error::NotFound { resource: "customer", id: id.to_owned() }
}

/// Registers a customer; ALREADY_EXISTS when the email is taken.
pub async fn insert(uow: &mut UnitOfWork, customer: &Customer) -> Result<(), Error> {
    uow.query(concat!(
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
    .on_unique_violation(EMAIL, email_taken)
    .execute()
    .await
    .map(drop)
}

/// One customer, through the pool or inside a unit of work.
pub async fn customer(on: impl Executor<'_>, id: &str) -> Result<Customer, Error> {
    let row = on
        .query(concat!("SELECT ", customer_columns!(), " FROM customers WHERE customer_id = $1"))
        .bind(id)
        .fetch_optional()
        .await?;
    match row {
        Some(row) => customer_from_row(&row),
        None => Err(not_found(id)),
    }
}

/// One page of customers after the cursor `after`, in creation order.
pub async fn list(db: &Database, after: Option<i64>, limit: u32) -> Result<Page<Customer>, Error> {
    let rows = db
        .query(concat!(
            "SELECT ",
            customer_columns!(),
            " FROM customers WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after.unwrap_or(0))
        .bind(i64::from(limit) + 1)
        .fetch_all()
        .await?;
    keyset(rows, limit, customer_from_row)
}

/// Saves a changed customer over the revision it was loaded at; another
/// writer that got in between makes the etag stale. ALREADY_EXISTS when the
/// new email is another customer's.
pub async fn save(uow: &mut UnitOfWork, customer: &Customer) -> Result<(), Error> {
    let changed = uow
        .query(
            "UPDATE customers SET given_name = $1, family_name = $2, email = $3, email_key = $4, \
             revision = $5, update_time = $6 WHERE customer_id = $7 AND revision = $8",
        )
        .bind(&customer.given_name)
        .bind(&customer.family_name)
        .bind(customer.email.as_str())
        .bind(customer.email.key())
        .bind(customer.revision)
        .bind(customer.update_time)
        .bind(&customer.id)
        .bind(customer.revision - 1)
        .on_unique_violation(EMAIL, email_taken)
        .execute()
        .await?;
    if changed == 0 {
        return Err(Error::stale_etag("customer", &customer.id));
    }
    Ok(())
}

/// Deletes a customer; at `revision` only, when the caller named one (a
/// writer that got in between makes the etag stale).
pub async fn delete(uow: &mut UnitOfWork, id: &str, revision: Option<i64>) -> Result<(), Error> {
    let deleted = match revision {
        None => uow.query("DELETE FROM customers WHERE customer_id = $1").bind(id).execute().await?,
        Some(revision) => {
            uow.query("DELETE FROM customers WHERE customer_id = $1 AND revision = $2")
                .bind(id)
                .bind(revision)
                .execute()
                .await?
        }
    };
    match (deleted, revision) {
        (0, Some(_)) => Err(Error::stale_etag("customer", id)),
        (0, None) => Err(not_found(id)),
        _ => Ok(()),
    }
}
