//! The unit of work: one write transaction, with the outbox events and the
//! idempotency key of the change recorded in it, committed at once.
//!
//! A use case reads: begin, load the aggregate, let it decide, save it,
//! record its events, commit.
//!
//! ```ignore
//! let mut uow = db.begin().await?;
//! let mut product = store::product(&mut uow, &id).await?;
//! let event = product.discontinue(&etag, now_micros())?;
//! store::save_product(&mut uow, &product).await?;
//! uow.record(&event).await?;
//! uow.commit().await?;
//! ```
//!
//! Dropping a unit of work without committing rolls it back.

use sqlx::{Postgres, Sqlite, Transaction};

use super::{Backend, Database, Pool, Statement, failure};
use crate::{Error, outbox::DomainEvent, wire::now_micros};

enum Tx {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// One write transaction on the service's database.
pub struct UnitOfWork {
    tx: Tx,
    db: Database,
    /// The newest outbox sequence recorded, announced after the commit.
    recorded: Option<i64>,
}

impl Database {
    /// Begins a unit of work that will write.
    ///
    /// SQLite takes the write lock at the first write of a deferred
    /// transaction and cannot wait for it there when it already read
    /// (SQLITE_BUSY at once); `BEGIN IMMEDIATE` takes it up front. SQLite
    /// has one writer at a time, and a writer that finds the lock taken
    /// polls for it with sleeps that grow to 100 ms (its busy handler), so
    /// the writers of a process take turns on the one write connection
    /// instead, queued in the order they came, for at most
    /// `AGORA_DB_ACQUIRE_TIMEOUT_MS`. PostgreSQL locks rows as it goes.
    pub async fn begin(&self) -> Result<UnitOfWork, Error> {
        let tx = match &self.pool {
            Pool::Sqlite(_) => {
                let writer = self.writer.as_ref().expect("a SQLite database has a write connection");
                Tx::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await.map_err(failure)?)
            }
            Pool::Postgres(pool) => Tx::Postgres(pool.begin().await.map_err(failure)?),
        };
        Ok(UnitOfWork { tx, db: self.clone(), recorded: None })
    }
}

/// The idempotency key of a create call (AIP-155): a client retrying a
/// create with the same `request_id` gets the resource the first call
/// made, never a second one.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub request_id: String,
    /// A stable rendering of the request: a retry must ask for exactly the
    /// same thing.
    pub fingerprint: String,
    /// What the call creates ("product"), for the refusal's message.
    pub resource: &'static str,
}

impl IdempotencyKey {
    /// The key of a create call that sent `request_id` (none sent: no key),
    /// for a request `fingerprint` renders.
    pub fn of(
        request_id: Option<String>,
        resource: &'static str,
        fingerprint: impl FnOnce() -> String,
    ) -> Option<Self> {
        request_id.map(|request_id| Self { request_id, fingerprint: fingerprint(), resource })
    }
}

impl UnitOfWork {
    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// A statement inside this unit of work's transaction.
    pub fn query(&mut self, sql: &'static str) -> Statement<'_> {
        match &mut self.tx {
            Tx::Sqlite(tx) => Statement::on_sqlite(tx, sqlx::SqlStr::from_static(sql)),
            Tx::Postgres(tx) => Statement::on_postgres(tx, sqlx::SqlStr::from_static(sql)),
        }
    }

    /// Records a domain event in the outbox, in this transaction: the event
    /// exists exactly when the change it tells of does.
    ///
    /// Sequences commit in order: SQLite has one writer, and on PostgreSQL
    /// an advisory transaction lock serializes appends until commit, so a
    /// change-feed consumer never skips an event that commits late.
    pub async fn record<E: DomainEvent>(&mut self, event: &E) -> Result<(), Error> {
        let payload = serde_json::to_string(event)
            .map_err(|e| Error::Internal(anyhow::Error::new(e).context("encoding an outbox event")))?;
        if self.backend() == Backend::Postgres {
            self.query("SELECT pg_advisory_xact_lock(72110)").execute().await?;
        }
        let sequence: i64 = self
            .query(
                "INSERT INTO outbox_events (kind, payload, occur_time, trace_context) \
                 VALUES ($1, $2, $3, $4) RETURNING sequence",
            )
            .bind(event.kind())
            .bind(payload)
            .bind(now_micros())
            // The call's trace, for the consumers' spans to link to.
            .bind(crate::telemetry::trace_context(&tracing::Span::current()))
            .fetch_one()
            .await?
            .get("sequence")?;
        self.recorded = Some(sequence);
        Ok(())
    }

    /// Claims `key` for the resource `resource_id` about to be created.
    /// None: the key is new (or there is none), go on. Some(id): an earlier
    /// call with this key created `id`; drop this unit of work and answer
    /// with that resource. The same key with another request is
    /// INVALID_ARGUMENT on `request_id`.
    ///
    /// A concurrent duplicate waits on the key (the write lock in SQLite,
    /// the key's row in PostgreSQL) and then finds it claimed.
    pub async fn claim(
        &mut self,
        key: Option<&IdempotencyKey>,
        resource_id: &str,
    ) -> Result<Option<String>, Error> {
        let Some(key) = key else { return Ok(None) };
        let claimed = self
            .query(
                "INSERT INTO idempotency_keys (request_id, fingerprint, resource_id, create_time) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (request_id) DO NOTHING",
            )
            .bind(&key.request_id)
            .bind(&key.fingerprint)
            .bind(resource_id)
            .bind(now_micros())
            .execute()
            .await?;
        if claimed == 1 {
            return Ok(None);
        }
        let row = self
            .query("SELECT fingerprint, resource_id FROM idempotency_keys WHERE request_id = $1")
            .bind(&key.request_id)
            .fetch_one()
            .await?;
        if row.get::<String>("fingerprint")? != key.fingerprint {
            let what = key.resource;
            return Err(Error::invalid(
                "request_id",
                format!("was already used for a different {what}; use a new request_id for a new {what}"),
            ));
        }
        Ok(Some(row.get("resource_id")?))
    }

    /// Commits, then wakes this process's change-feed streams for the events
    /// recorded.
    pub async fn commit(self) -> Result<(), Error> {
        match self.tx {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
        .map_err(failure)?;
        if let Some(sequence) = self.recorded {
            self.db.announce(sequence);
        }
        Ok(())
    }
}
