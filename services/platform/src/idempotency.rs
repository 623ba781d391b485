//! Idempotency keys for create calls (AIP-155): a client retrying a create
//! with the same `request_id` gets the resource the first call made, never
//! a second one. Every service keeps its keys in its own database, in a
//! table named `idempotency_keys` (request_id, fingerprint, resource_id,
//! create_time) that its migrations create.

use sqlx::{Any, Row as _, Transaction};

use crate::{Database, Error, wire::now_micros};

/// Claims `request_id` for a new resource inside the creating transaction.
/// Returns false when the key was claimed before: roll back and
/// [`replay`]. A concurrent duplicate waits on the key (the write lock in
/// SQLite, the key's row in PostgreSQL) and then finds it claimed.
pub async fn claim(
    tx: &mut Transaction<'static, Any>,
    request_id: &str,
    fingerprint: &str,
    resource_id: &str,
) -> Result<bool, Error> {
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (request_id, fingerprint, resource_id, create_time) \
         VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
    )
    .bind(request_id)
    .bind(fingerprint)
    .bind(resource_id)
    .bind(now_micros())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(claimed == 1)
}

/// The id of the resource an earlier call with `request_id` created; an
/// INVALID_ARGUMENT on `request_id` when that call asked for something else.
pub async fn replay(db: &Database, request_id: &str, fingerprint: &str, what: &str) -> Result<String, Error> {
    let row = sqlx::query("SELECT fingerprint, resource_id FROM idempotency_keys WHERE request_id = $1")
        .bind(request_id)
        .fetch_one(db.pool())
        .await?;
    let stored: String = row.try_get("fingerprint")?;
    if stored != fingerprint {
        return Err(Error::invalid(
            "request_id",
            format!("was already used for a different {what}; use a new request_id for a new {what}"),
        ));
    }
    Ok(row.try_get("resource_id")?)
}
