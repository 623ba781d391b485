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

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use sqlx::{ConnectOptions as _, Connection as _, Postgres, Transaction, sqlite::SqliteConnectOptions};
use sqlx::{Executor as _, sqlite::SqliteConnection};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

use super::{Backend, Database, OutboxEvent, Pool, Statement, acquire, breaker, failure, unreachable};
use serde::{Serialize, de::DeserializeOwned};

use super::now_micros;
use crate::Error;

enum Tx {
    Sqlite(Writing),
    Postgres(Transaction<'static, Postgres>),
}

/// A domain event a service publishes on its change feed: stored as JSON in
/// the outbox, with its kind beside it.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + 'static {
    /// The event's name (`ProductDiscontinued`).
    fn kind(&self) -> &'static str;

    /// The id of the aggregate the event is about (the product, the
    /// customer): a broker keeps the order of the events of one key
    /// ([`events`](crate::events)).
    fn key(&self) -> &str;
}

/// SQLite's write connection: the writers of a process take turns on it,
/// in the order they came, and commit together.
///
/// Kept apart from sqlx's pool, by hand (no pool does this): SQLite has
/// one writer at a time, and a writer that finds the lock taken polls for
/// it with sleeps that grow to 100 ms (its busy handler); queued here, a
/// writer finds the lock free. A connection that alone writes also keeps
/// its page cache (one that finds the file changed by another drops it and
/// reads the pages again), and is never pinged as sqlx pings a connection
/// given back to its pool. Measured with eight writers of CreateProduct,
/// offers following the catalog's feed on the same core: writes round the
/// pool 1,766 a second at 410 µs of CPU each, on one connection 2,040 at
/// 360 µs, on this one 2,188 at 326 µs.
///
/// Group commit. A commit writes every page the transaction changed to the
/// write-ahead log, and a third of the write connection's time went there
/// (eight writers of CreateProduct, `perf`). So a unit of work that ends
/// while another waits for its turn does not commit: it leaves the
/// transaction open for the next one, which runs in a savepoint of its own
/// (one that fails rolls back to it, and the others keep their changes),
/// and the last of the batch, the one nobody waits behind, commits them
/// all. Each unit's `commit` returns only once that commit is done, with
/// its outcome, so an acknowledged write is as durable as before, and
/// one the batch failed to commit is reported failed. sqlx's transaction
/// manager nests savepoints but cannot leave a transaction open across
/// turns, hence the statements here.
#[derive(Debug)]
pub(crate) struct Writer {
    slot: Arc<Mutex<Slot>>,
    options: SqliteConnectOptions,
    /// The longest wait for the turn (`AGORA_DB_ACQUIRE_TIMEOUT_MS`).
    wait: Duration,
    /// Units of work waiting for the turn: one that ends while one waits
    /// leaves its changes to the batch's commit.
    waiting: AtomicUsize,
    /// Commits, and the units of work they carried, as `agora_db_commits_total`
    /// and `agora_db_committed_units_total` count them.
    commits: AtomicUsize,
    committed_units: AtomicUsize,
}

/// The most units of work one commit carries: a bound on the wait of the
/// first of a batch.
const MAX_BATCH: usize = 32;

/// The write connection and the transaction open on it.
#[derive(Debug, Default)]
struct Slot {
    conn: Option<SqliteConnection>,
    /// The transaction the units of work of a batch share until it commits.
    batch: Option<Batch>,
    /// What a unit of work dropped before its end left to roll back, done
    /// before the next statement (a drop cannot wait for the database).
    undo: Option<Undo>,
}

#[derive(Debug)]
struct Batch {
    /// The units of work that began in it: the first began the transaction,
    /// each other one a savepoint.
    units: usize,
    /// The units of work that ended in it, their changes kept.
    ended: usize,
    /// The outbox events of the units that ended in it, in sequence order.
    events: Vec<OutboxEvent>,
    /// How it ended, for the units waiting on its commit.
    outcome: Arc<watch::Sender<Option<Outcome>>>,
}

impl Batch {
    fn new() -> Self {
        Self { units: 1, ended: 0, events: Vec::new(), outcome: Arc::new(watch::channel(None).0) }
    }
}

/// A batch's commit, told to each of its units: the error as the unit
/// answers it (the sqlx error itself is not `Clone`).
#[derive(Debug, Clone)]
enum Outcome {
    Committed,
    Unavailable(String),
    Failed(String),
}

impl Outcome {
    fn of(err: &sqlx::Error) -> Self {
        if unreachable(err) {
            Outcome::Unavailable(err.to_string())
        } else {
            Outcome::Failed(err.to_string())
        }
    }

    fn into_result(self) -> Result<(), Error> {
        match self {
            Outcome::Committed => Ok(()),
            Outcome::Unavailable(cause) => {
                Err(Error::unavailable_because("the database is unavailable", cause))
            }
            Outcome::Failed(cause) => {
                Err(Error::Internal(anyhow::anyhow!("database: the commit failed: {cause}")))
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Undo {
    /// The whole transaction: its first unit of work, alone in it, failed.
    Transaction,
    /// The newest savepoint: a later unit of work failed.
    Savepoint,
}

/// Counts a unit of work among those waiting for the turn while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run(conn: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    conn.execute(sql).await.map(drop)
}

impl Writer {
    /// Connects at the first write: the database may be out of reach at start.
    pub(crate) fn new(options: SqliteConnectOptions, wait: Duration) -> Self {
        Self {
            slot: Arc::default(),
            options,
            wait,
            waiting: AtomicUsize::new(0),
            commits: AtomicUsize::new(0),
            committed_units: AtomicUsize::new(0),
        }
    }

    /// Waits for the turn (at most the acquire timeout, and never past the
    /// call's deadline), then begins the transaction, or a savepoint in the
    /// batch's.
    async fn begin(self: &Arc<Self>) -> Result<Writing, Error> {
        let bound = breaker::wait_bound(self.wait)?;
        let turn = {
            let _waiting = Waiting::new(&self.waiting);
            tokio::time::timeout(bound, Arc::clone(&self.slot).lock_owned()).await
        };
        let mut turn = turn.map_err(|_| {
            Error::unavailable(format!(
                "the database is unavailable: no turn to write within {} ms",
                bound.as_millis()
            ))
        })?;
        if turn.conn.is_none() {
            turn.conn = Some(self.options.connect().await.map_err(failure)?);
        }
        settle(&mut turn).await?;
        let first = turn.batch.is_none();
        let began = {
            let conn = turn.conn.as_mut().expect("connected");
            run(conn, if first { "BEGIN IMMEDIATE" } else { "SAVEPOINT unit" }).await
        };
        if let Err(err) = began {
            // Opened again at the next write, whatever went wrong.
            return Err(abandon(&mut turn, err));
        }
        match &mut turn.batch {
            Some(batch) => batch.units += 1,
            None => turn.batch = Some(Batch::new()),
        }
        Ok(Writing { turn: Some(turn), writer: Arc::clone(self), first, open: true })
    }

    /// Closes the connection, unless a writer holds it: the last step of
    /// shutdown.
    pub(crate) async fn close(&self) {
        let conn = match self.slot.try_lock() {
            Ok(mut turn) => turn.conn.take(),
            Err(_) => None,
        };
        if let Some(conn) = conn {
            let _ = conn.close().await;
        }
    }
}

/// Rolls back what a unit of work dropped before its end left behind.
async fn settle(turn: &mut Slot) -> Result<(), Error> {
    let Some(undo) = turn.undo.take() else { return Ok(()) };
    let Some(conn) = turn.conn.as_mut() else { return Ok(()) };
    let sql = match undo {
        Undo::Transaction => "ROLLBACK",
        Undo::Savepoint => "ROLLBACK TO unit",
    };
    match run(conn, sql).await {
        Ok(()) => Ok(()),
        Err(err) => Err(abandon(turn, err)),
    }
}

/// Drops the connection after a statement that should not fail did (the
/// transaction goes with it), and fails the batch's units that ended.
fn abandon(turn: &mut Slot, err: sqlx::Error) -> Error {
    turn.conn = None;
    turn.undo = None;
    if let Some(batch) = turn.batch.take() {
        batch.outcome.send_replace(Some(Outcome::of(&err)));
    }
    failure(err)
}

/// Commits the batch whose outcome is `which`, unless it has ended:
/// always on a task of its own, so that a caller that goes away cannot
/// leave the others of the batch waiting.
async fn commit_batch(
    mut turn: OwnedMutexGuard<Slot>,
    which: Arc<watch::Sender<Option<Outcome>>>,
    db: Database,
) -> OwnedMutexGuard<Slot> {
    if !turn.batch.as_ref().is_some_and(|b| Arc::ptr_eq(&b.outcome, &which)) {
        return turn;
    }
    if settle(&mut turn).await.is_err() {
        return turn;
    }
    let batch = turn.batch.take().expect("the batch is open");
    let committed = match turn.conn.as_mut() {
        Some(conn) => run(conn, "COMMIT").await,
        None => Err(sqlx::Error::WorkerCrashed),
    };
    db.breaker.heard(committed.as_ref().err());
    match committed {
        Ok(()) => {
            if let Some(writer) = &db.writer {
                writer.commits.fetch_add(1, Ordering::Relaxed);
                writer.committed_units.fetch_add(batch.ended, Ordering::Relaxed);
            }
            metrics::counter!("agora_db_commits_total").increment(1);
            metrics::counter!("agora_db_committed_units_total").increment(batch.ended as u64);
            if let Some(newest) = batch.events.last().map(|e| e.sequence) {
                db.remember(batch.events);
                db.announce(newest);
            }
            batch.outcome.send_replace(Some(Outcome::Committed));
        }
        Err(err) => {
            // The transaction goes with the connection, whatever state
            // the failed commit left it in.
            turn.conn = None;
            batch.outcome.send_replace(Some(Outcome::of(&err)));
        }
    }
    turn
}

/// A turn on the write connection, in the batch's transaction until the
/// unit of work ends; dropped before, it rolls back its own changes
/// (queued on the connection before the next statement).
struct Writing {
    turn: Option<OwnedMutexGuard<Slot>>,
    writer: Arc<Writer>,
    /// Whether this unit of work began the transaction (no savepoint).
    first: bool,
    open: bool,
}

impl Writing {
    fn slot(&mut self) -> &mut Slot {
        self.turn.as_mut().expect("a unit of work holds the turn until it ends")
    }

    fn conn(&mut self) -> &mut SqliteConnection {
        self.slot().conn.as_mut().expect("a turn holds a connection")
    }

    /// Ends the unit of work: its changes and `events` go to the batch,
    /// which commits now, or after the units of work waiting for the turn
    /// have had theirs; returns once it is committed.
    async fn commit(mut self, events: Vec<OutboxEvent>, db: Database) -> Result<(), Error> {
        self.open = false;
        let mut turn = self.turn.take().expect("a unit of work holds the turn until it ends");
        let batch = turn.batch.as_mut().expect("a unit of work runs in a batch");
        batch.events.extend(events);
        batch.ended += 1;
        let which = Arc::clone(&batch.outcome);
        let mut outcome = which.subscribe();
        let later = self.writer.waiting.load(Ordering::Relaxed) > 0 && batch.units < MAX_BATCH;
        let slot = Arc::clone(&self.writer.slot);
        tokio::spawn(async move {
            // Waiting behind the others lets them join the batch; the
            // first of them to end commits it, or this task does.
            let turn = if later {
                drop(turn);
                slot.lock_owned().await
            } else {
                turn
            };
            commit_batch(turn, which, db).await;
        });
        let ended = outcome.wait_for(Option::is_some).await;
        match ended.as_deref() {
            Ok(Some(outcome)) => outcome.clone().into_result(),
            _ => Err(Error::Internal(anyhow::anyhow!("the write's commit was lost"))),
        }
    }

    /// Commits the batch's other units of work now, and goes on as the
    /// first of a new transaction: for a unit of work that, having changed
    /// nothing yet, must see what the others changed as committed.
    async fn commit_others(&mut self, db: &Database) -> Result<(), Error> {
        if self.first {
            return Ok(());
        }
        let turn = self.turn.take().expect("a unit of work holds the turn until it ends");
        let which = Arc::clone(&turn.batch.as_ref().expect("a unit of work runs in a batch").outcome);
        let mut outcome = which.subscribe();
        let committing = tokio::spawn(commit_batch(turn, which, db.clone()));
        let turn = committing
            .await
            .map_err(|err| Error::Internal(anyhow::anyhow!("committing a batch failed: {err}")))?;
        self.turn = Some(turn);
        let ended = outcome.borrow_and_update().clone();
        ended.unwrap_or(Outcome::Failed("no outcome".into())).into_result()?;
        let slot = self.slot();
        let began = match slot.conn.as_mut() {
            Some(conn) => run(conn, "BEGIN IMMEDIATE").await,
            None => Err(sqlx::Error::WorkerCrashed),
        };
        if let Err(err) = began {
            // Nothing is left to roll back: the connection went with it.
            return Err(abandon(slot, err));
        }
        slot.batch = Some(Batch::new());
        self.first = true;
        Ok(())
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let first = self.first;
        let Some(mut turn) = self.turn.take() else { return };
        if first {
            // Alone in the transaction: no other unit of work began or
            // ended in it while this one held the turn.
            turn.undo = Some(Undo::Transaction);
            turn.batch = None;
        } else {
            turn.undo = Some(Undo::Savepoint);
        }
        // Rolled back now, holding the turn, so that the write lock is not
        // kept until the next writer comes (writes on the pool wait for
        // it); without a runtime, by the next writer.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = settle(&mut turn).await;
            });
        }
    }
}

/// One write transaction on the service's database.
pub struct UnitOfWork {
    tx: Tx,
    db: Database,
    /// The outbox events recorded, kept in memory after the commit for the
    /// change-feed streams of this process (`Database::recent_after`).
    recorded: Vec<OutboxEvent>,
}

impl Database {
    /// Begins a unit of work that will write.
    ///
    /// SQLite takes the write lock at the first write of a deferred
    /// transaction and cannot wait for it there when it already read
    /// (SQLITE_BUSY at once); `BEGIN IMMEDIATE` takes it up front, on the
    /// one write connection the writers of a process take turns on
    /// ([`Writer`]), for at most `AGORA_DB_ACQUIRE_TIMEOUT_MS`. PostgreSQL
    /// locks rows as it goes.
    ///
    /// While the database is known to be out of reach this is UNAVAILABLE
    /// at once, and no wait for a connection or a turn outlasts the call's
    /// deadline (see [`breaker`]).
    pub async fn begin(&self) -> Result<UnitOfWork, Error> {
        let tx = match &self.pool {
            Pool::Sqlite(_) => {
                self.breaker.check()?;
                let writer = self.writer.as_ref().expect("a SQLite database has a write connection");
                let began = writer.begin().await;
                if let Err(Error::Unavailable { .. }) = &began {
                    self.breaker.failed();
                }
                Tx::Sqlite(began?)
            }
            Pool::Postgres(pool) => {
                let conn = acquire(pool, &self.breaker).await?;
                let began = sqlx::Transaction::begin(conn, None).await;
                self.breaker.heard(began.as_ref().err());
                Tx::Postgres(began.map_err(failure)?)
            }
        };
        Ok(UnitOfWork { tx, db: self.clone(), recorded: Vec::new() })
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
        let (breaker, sql) = (&*self.db.breaker, sqlx::SqlStr::from_static(sql));
        match &mut self.tx {
            Tx::Sqlite(writing) => Statement::on_sqlite(writing.conn(), breaker, sql),
            Tx::Postgres(tx) => Statement::on_postgres(tx, breaker, sql),
        }
    }

    /// Locks the row of `id` that this unit of work is about to load and
    /// change: `sql` is the `SELECT … FOR UPDATE` that names it. On
    /// PostgreSQL a writer that gets in between waits for this unit of
    /// work to end, instead of making its save fail as a stale etag when
    /// the caller sent none; the lock is a statement of its own, before
    /// the load, because a statement reads from the snapshot of its start.
    /// SQLite needs none: the unit of work holds the database's write lock.
    pub async fn lock(&mut self, sql: &'static str, id: &str) -> Result<(), Error> {
        if self.backend() == Backend::Postgres {
            self.query(sql).bind(id).execute().await?;
        }
        Ok(())
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
        let (occur_time, trace_context) =
            // The call's trace, for the consumers' spans to link to.
            (now_micros(), crate::telemetry::trace_context(&tracing::Span::current()));
        let sequence: i64 = self
            .query(
                "INSERT INTO outbox_events (kind, payload, occur_time, trace_context) \
                 VALUES ($1, $2, $3, $4) RETURNING sequence",
            )
            .bind(event.kind())
            .bind(payload.as_str())
            .bind(occur_time)
            .bind(trace_context.as_str())
            .fetch_one()
            .await?
            .get("sequence")?;
        self.recorded.push(OutboxEvent { sequence, payload, occur_time, trace_context });
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
        // The key may be a unit of work's of this batch, not committed yet;
        // the caller reads the resource it names outside this transaction.
        if let Tx::Sqlite(writing) = &mut self.tx {
            writing.commit_others(&self.db).await?;
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
    /// recorded. On SQLite the commit may be shared with the units of work
    /// that waited for the turn (see [`Writer`]); it returns once that
    /// commit is done.
    pub async fn commit(self) -> Result<(), Error> {
        let tx = match self.tx {
            Tx::Sqlite(writing) => return writing.commit(self.recorded, self.db).await,
            Tx::Postgres(tx) => tx,
        };
        let committed = tx.commit().await;
        self.db.breaker.heard(committed.as_ref().err());
        committed.map_err(failure)?;
        if let Some(newest) = self.recorded.last().map(|e| e.sequence) {
            self.db.remember(self.recorded);
            self.db.announce(newest);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use tokio::task::JoinHandle;

    use super::{IdempotencyKey, UnitOfWork};
    use crate::{Database, Settings, config::DatabaseUrl};

    async fn scratch_database(name: &str) -> (Database, std::path::PathBuf) {
        let dir = crate::scratch_dir(name);
        let url = DatabaseUrl::new(format!("sqlite:{}/unit.db", dir.display()));
        let db = Database::connect_lazy(&Settings::for_tests(url)).unwrap();
        let mut uow = db.begin().await.unwrap();
        uow.query("CREATE TABLE things (n INTEGER NOT NULL)").execute().await.unwrap();
        uow.commit().await.unwrap();
        (db, dir)
    }

    /// Waits (a bounded while) until `n` units of work wait for the turn.
    async fn until_waiting(db: &Database, n: usize) {
        let writer = db.writer.as_ref().unwrap();
        for _ in 0..2000 {
            if writer.waiting.load(Ordering::Relaxed) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("{n} units of work never waited for the turn");
    }

    /// Runs `work` on a task of its own, once it waits for the turn.
    async fn waiting_behind<T, F>(db: &Database, work: impl FnOnce(Database) -> F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        let task = tokio::spawn(work(db.clone()));
        until_waiting(db, 1).await;
        task
    }

    fn commits(db: &Database) -> (usize, usize) {
        let writer = db.writer.as_ref().unwrap();
        (writer.commits.load(Ordering::Relaxed), writer.committed_units.load(Ordering::Relaxed))
    }

    async fn insert(uow: &mut UnitOfWork, n: i64) {
        uow.query("INSERT INTO things (n) VALUES ($1)").bind(n).execute().await.unwrap();
    }

    async fn sum(db: &Database) -> i64 {
        db.query("SELECT COALESCE(SUM(n), 0) AS n FROM things").fetch_one().await.unwrap().get("n").unwrap()
    }

    /// A unit of work that ends while another waits for the turn commits
    /// with it, in one commit; neither commit returns before that one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_of_work_that_ends_while_another_waits_commits_with_it() {
        let (db, dir) = scratch_database("uow-batch").await;
        let before = commits(&db);
        let mut first = db.begin().await.unwrap();
        let second = waiting_behind(&db, |db| async move {
            let mut uow = db.begin().await.unwrap();
            insert(&mut uow, 2).await;
            uow.commit().await.unwrap();
        })
        .await;
        insert(&mut first, 1).await;
        first.commit().await.unwrap();
        second.await.unwrap();
        assert_eq!(sum(&db).await, 3);
        let after = commits(&db);
        assert_eq!((after.0 - before.0, after.1 - before.1), (1, 2), "one commit of two units of work");
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A unit of work that fails in a batch rolls back its own changes
    /// only: the one that ended before it in the batch is committed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_unit_of_work_dropped_in_a_batch_takes_only_its_own_changes_back() {
        let (db, dir) = scratch_database("uow-batch-drop").await;
        let mut first = db.begin().await.unwrap();
        let second = waiting_behind(&db, |db| async move {
            let mut uow = db.begin().await.unwrap();
            insert(&mut uow, 20).await;
            insert(&mut uow, 30).await;
            drop(uow);
        })
        .await;
        insert(&mut first, 1).await;
        first.commit().await.unwrap();
        second.await.unwrap();
        assert_eq!(sum(&db).await, 1);
        // And the turn goes on: a third commits alone.
        let mut third = db.begin().await.unwrap();
        insert(&mut third, 4).await;
        third.commit().await.unwrap();
        assert_eq!(sum(&db).await, 5);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A create retried while its first attempt waits for the batch's
    /// commit finds the key, and the resource it names is committed when
    /// the retry reads it outside its transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_claimed_in_the_batch_is_committed_before_the_retry_reads_it() {
        let (db, dir) = scratch_database("uow-batch-claim").await;
        let mut uow = db.begin().await.unwrap();
        uow.query(include_str!("../../migrations/sqlite/0001_idempotency_keys.sql")).execute().await.unwrap();
        uow.commit().await.unwrap();
        let key = || IdempotencyKey::of(Some("k-1".into()), "thing", || "7".into());
        let mut first = db.begin().await.unwrap();
        let retry = waiting_behind(&db, |db| async move {
            let mut uow = db.begin().await.unwrap();
            let earlier = uow.claim(key().as_ref(), "thing-2").await.unwrap();
            drop(uow);
            (earlier, sum(&db).await)
        })
        .await;
        assert_eq!(first.claim(key().as_ref(), "thing-1").await.unwrap(), None);
        insert(&mut first, 7).await;
        let first = tokio::spawn(first.commit());
        let (earlier, seen) = retry.await.unwrap();
        assert_eq!(earlier.as_deref(), Some("thing-1"));
        assert_eq!(seen, 7, "the first attempt's change is committed when the retry reads");
        first.await.unwrap().unwrap();
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    async fn count(db: &Database) -> i64 {
        db.query("SELECT COUNT(*) AS n FROM things").fetch_one().await.unwrap().get("n").unwrap()
    }

    /// A unit of work dropped without its commit leaves nothing, and the
    /// next writer gets its turn.
    #[tokio::test]
    async fn a_dropped_unit_of_work_rolls_back_and_gives_its_turn() {
        let (db, dir) = scratch_database("uow-drop").await;
        let mut uow = db.begin().await.unwrap();
        uow.query("INSERT INTO things (n) VALUES (1)").execute().await.unwrap();
        drop(uow);
        let mut uow = db.begin().await.unwrap();
        uow.query("INSERT INTO things (n) VALUES (2)").execute().await.unwrap();
        uow.commit().await.unwrap();
        let n: i64 = db.query("SELECT SUM(n) AS n FROM things").fetch_one().await.unwrap().get("n").unwrap();
        assert_eq!(n, 2);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Concurrent writers take turns: every commit lands, none is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_take_turns() {
        let (db, dir) = scratch_database("uow-turns").await;
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let db = db.clone();
                tokio::spawn(async move {
                    for _ in 0..50 {
                        let mut uow = db.begin().await.unwrap();
                        uow.query("INSERT INTO things (n) VALUES (1)").execute().await.unwrap();
                        uow.commit().await.unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(count(&db).await, 400);
        db.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
