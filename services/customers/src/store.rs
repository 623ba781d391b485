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
    db::{Executor, Filter, Page, Row, Statement, Unique, page},
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

/// Binds what insert and save share: `$1` the id, `$2` to `$7` the fields
/// that change. A duplicate email is ALREADY_EXISTS.
fn bind_customer<'c>(statement: Statement<'c>, c: &Customer) -> Statement<'c> {
    statement
        .bind(&c.id)
        .bind(&c.given_name)
        .bind(&c.family_name)
        .bind(c.email.as_str())
        .bind(c.email.key())
        .bind(c.revision)
        .bind(c.update_time)
        .on_unique_violation(EMAIL, email_taken)
}

/// Registers a customer; ALREADY_EXISTS when the email is taken.
pub async fn insert(uow: &mut UnitOfWork, customer: &Customer) -> Result<(), Error> {
    let sql = "INSERT INTO customers (customer_id, given_name, family_name, email, email_key, revision, \
               update_time, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
    bind_customer(uow.query(sql), customer).bind(customer.create_time).execute().await.map(drop)
}

/// One customer, through the pool or inside a unit of work.
pub async fn customer(on: impl Executor<'_>, id: &str) -> Result<Customer, Error> {
    let sql = concat!("SELECT ", customer_columns!(), " FROM customers WHERE customer_id = $1");
    customer_from_row(&on.query(sql).bind(id).fetch_found("customer", id).await?)
}

/// One customer about to change, in the unit of work that changes them:
/// locked until it ends (see [`UnitOfWork::lock`]).
pub async fn customer_to_change(uow: &mut UnitOfWork, id: &str) -> Result<Customer, Error> {
    uow.lock("SELECT customer_id FROM customers WHERE customer_id = $1 FOR UPDATE", id).await?;
    customer(uow, id).await
}

/// One page of customers after the cursor `after`, in creation order.
pub async fn list(db: &Database, after: Option<i64>, limit: u32) -> Result<Page<Customer>, Error> {
    let select = concat!("SELECT ", customer_columns!(), " FROM customers");
    page(db, select, &Filter::new(), after, limit, customer_from_row).await
}

/// Saves a changed customer over the revision it was loaded at; another
/// writer that got in between makes the etag stale. ALREADY_EXISTS when the
/// new email is another customer's.
pub async fn save(uow: &mut UnitOfWork, customer: &Customer) -> Result<(), Error> {
    let sql = "UPDATE customers SET given_name = $2, family_name = $3, email = $4, email_key = $5, \
               revision = $6, update_time = $7 WHERE customer_id = $1 AND revision = $8";
    let changed = bind_customer(uow.query(sql), customer).bind(customer.revision - 1).execute().await?;
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
