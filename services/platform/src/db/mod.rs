//! The service's own database: a SQLite file by default, PostgreSQL when the
//! URL says so, chosen once at start.
//!
//! Each backend has its own typed sqlx pool, so binding a value and reading
//! a column go straight to the driver (sqlx's `Any` driver converted every
//! value twice, and showed in the profile). A service never sees sqlx: it
//! writes its SQL once, with `$1` placeholders that both drivers accept, and
//! runs it through a [`Statement`] on the pool (reads) or in a
//! [`UnitOfWork`] (writes). Where the dialects differ (DDL, row locks) the
//! difference is in the SQL text a service picks by [`Backend`] or in the
//! migration files, never in a second copy of its store.
//!
//! # Layout
//! - this module: [`Database`], the pool and its life cycle.
//! - [`breaker`]: the database as a dependency with a breaker: calls fail
//!   at once while it is known to be out of reach, and no wait for a
//!   connection outlasts the call's deadline.
//! - [`statement`]: [`Statement`], [`Row`] and the values they carry.
//! - [`unit`]: [`UnitOfWork`]: one transaction with its outbox events and
//!   idempotency key.
//! - [`migrate`]: [`Migrations`]: the platform's tables and the service's.
//! - [`page`]: [`Page`]: keyset pagination over a `seq` column.

mod breaker;
mod migrate;
mod page;
mod statement;
mod unit;

use std::{path::Path, str::FromStr as _, sync::Arc, time::Duration};

use anyhow::Context as _;
use sqlx::{
    postgres::{PgConnectOptions, PgPool},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous},
};
use tokio::sync::watch;

pub use migrate::{LegacyHistory, Migrations, Step};
pub use page::{Filter, Page, keyset, page};
pub use statement::{Column, Executor, Row, Statement, Unique, Value};
pub use unit::{DomainEvent, IdempotencyKey, UnitOfWork};

/// Runs a read to its end on a task of its own and returns its result.
/// For the reads of a stream: a stream is polled only while its reader
/// takes data, and a query suspended half-way keeps its pooled connection,
/// so a few hundred stalled readers would hold the whole pool (and health
/// would go NOT_SERVING). Detached, the read finishes and gives its
/// connection back at once; its result waits for the reader.
pub async fn detached<T: Send + 'static>(
    read: impl Future<Output = Result<T, crate::Error>> + Send + 'static,
) -> Result<T, crate::Error> {
    use tracing::Instrument as _;
    match tokio::spawn(read.in_current_span()).await {
        Ok(result) => result,
        Err(err) => Err(crate::Error::Internal(anyhow::anyhow!("a detached read failed: {err}"))),
    }
}

/// Microseconds since the Unix epoch: how every service stores time (an
/// integer compares and indexes the same in SQLite and PostgreSQL).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

use crate::{
    Error,
    config::{DatabaseUrl, Settings, SqliteSync},
};
use breaker::Breaker;

/// Which SQL dialect the database speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One typed pool per backend.
#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// A pool on the service's database. Cheap to clone: clones share the pool.
#[derive(Debug, Clone)]
pub struct Database {
    pool: Pool,
    /// The newest outbox sequence this process committed: a unit of work
    /// that recorded events announces them here after its commit, and the
    /// change-feed streams of this process wait on it.
    committed: watch::Sender<i64>,
    /// SQLite's one write connection (see [`Database::begin`]); PostgreSQL
    /// writes on its pool.
    writer: Option<Arc<unit::Writer>>,
    /// The outbox events this process committed last, in sequence order:
    /// what its change-feed streams serve without reading the database.
    recent: Arc<std::sync::Mutex<std::collections::VecDeque<OutboxEvent>>>,
    /// Whether the database is known to be out of reach; and how long a
    /// wait for a connection may last.
    breaker: Arc<Breaker>,
}

impl Database {
    /// Builds the pool without connecting: the server answers health checks
    /// (NOT_SERVING) while the database is still out of reach.
    pub fn connect_lazy(settings: &Settings) -> anyhow::Result<Self> {
        let (pool, writer) = match prepare_url(&settings.database_url)? {
            (url, Backend::Sqlite) => {
                // WAL lets readers run beside the one writer; the setting is
                // stored in the file.
                let synchronous = match settings.sqlite_sync {
                    SqliteSync::Normal => SqliteSynchronous::Normal,
                    SqliteSync::Full => SqliteSynchronous::Full,
                };
                let options = SqliteConnectOptions::from_str(&url)
                    .context("database URL")?
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(synchronous)
                    // Rows cross from the connection's thread to the reader
                    // through a channel of this many: at sqlx's 50, a batch
                    // of a stream (128 rows) stopped the thread twice on the
                    // way (StreamProducts: 195,000 rows/s at 5.1 µs of CPU a
                    // row, with 512 262,000 at 3.8 µs).
                    .row_buffer_size(512);
                // The write connection's savepoints (one per unit of work of
                // a batch, see `unit::Writer`) keep the pages they change in
                // a sub-journal; in memory, not in a temporary file made and
                // deleted at each commit (that file took 20 % of the CPU of
                // CreateProduct).
                let writer = unit::Writer::new(
                    options.clone().pragma("temp_store", "memory"),
                    settings.db_acquire_timeout,
                );
                (Pool::Sqlite(pool_options(settings).connect_lazy_with(options)), Some(Arc::new(writer)))
            }
            (url, Backend::Postgres) => {
                let options = PgConnectOptions::from_str(&url).context("database URL")?;
                (Pool::Postgres(pool_options(settings).connect_lazy_with(options)), None)
            }
        };
        let breaker = Arc::new(Breaker::new(settings.db_acquire_timeout));
        let recent = Arc::new(std::sync::Mutex::new(std::collections::VecDeque::new()));
        Ok(Self { pool, committed: watch::channel(0).0, writer, breaker, recent })
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// A statement on the pool: each runs on a connection of its own, so
    /// two statements may see two states of the database. Reads that must
    /// agree go in one statement, or in a [`UnitOfWork`].
    pub fn query(&self, sql: &'static str) -> Statement<'_> {
        Statement::on_pool(&self.pool, &self.breaker, sqlx::SqlStr::from_static(sql))
    }

    /// A statement whose text is put together at run time, such as an `IN`
    /// list of as many `$n` placeholders as there are values. Only
    /// placeholders may be formatted into `sql`: every value is bound.
    pub fn query_built(&self, sql: String) -> Statement<'_> {
        Statement::on_pool(
            &self.pool,
            &self.breaker,
            sqlx::SqlSafeStr::into_sql_str(sqlx::AssertSqlSafe(sql)),
        )
    }

    /// Runs the platform's migrations and the service's.
    pub async fn migrate(&self, migrations: &Migrations) -> anyhow::Result<()> {
        migrations.run(self).await
    }

    /// Asks the database a trivial question, even while the breaker is
    /// open (this is how it learns the database is back): health and the
    /// breaker are built on the answer, which they are told of here.
    pub async fn ping(&self) -> Result<(), Error> {
        let answer = match &self.pool {
            Pool::Sqlite(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
            Pool::Postgres(p) => sqlx::query("SELECT 1").execute(p).await.map(drop),
        };
        self.breaker.probed(answer.is_ok());
        answer.map_err(failure)
    }

    /// The probe got no answer within its time: the database is out of reach.
    pub(crate) fn probe_timed_out(&self) {
        self.breaker.probed(false);
    }

    /// When the health probe should next ask, `interval` being its
    /// period: sooner while the database is known to be out of reach, so
    /// that calls are served again soon after it is back.
    pub(crate) fn next_probe(&self, interval: Duration) -> Duration {
        if self.breaker.is_open() { interval.min(breaker::PROBE_WHILE_OPEN) } else { interval }
    }

    /// Resolves when the database, known to be out of reach, answers
    /// again: background work waiting to retry wakes on it.
    pub(crate) fn back(&self) -> impl Future<Output = ()> + Send + 'static {
        self.breaker.closing()
    }

    /// Resolves when the database is next found out of reach by the
    /// calls: the probe asks at once.
    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.breaker.opening()
    }

    /// Connections open and idle, for the pool gauges.
    pub fn pool_stats(&self) -> (u32, usize) {
        match &self.pool {
            Pool::Sqlite(p) => (p.size(), p.num_idle()),
            Pool::Postgres(p) => (p.size(), p.num_idle()),
        }
    }

    /// Closes every connection: the last step of shutdown.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
        }
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
    }

    /// Waits until this process holds the lock `name`, and holds it for as
    /// long as the returned [`Leadership`] lives: a session advisory lock
    /// on a PostgreSQL connection of its own, which goes with the
    /// connection when its holder dies. A follower waits on that one
    /// connection, in bounded waits (`lock_timeout`), so it opens no new
    /// sessions while it waits and takes over as soon as the lock is free.
    /// On SQLite, one process's file, the lock is always ours at once.
    pub(crate) async fn lead(&self, name: &str) -> Result<Leadership, Error> {
        let Some(mut conn) = self.session().await? else {
            return Ok(Leadership(None));
        };
        // A wait ends after a second; a process that stopped waiting leaves
        // a session that gives up within that second.
        sqlx::query("SET lock_timeout = '1s'").execute(&mut conn).await.map_err(failure)?;
        loop {
            match sqlx::query("SELECT pg_advisory_lock(hashtext($1))").bind(name).execute(&mut conn).await {
                Ok(_) => return Ok(Leadership(Some(conn))),
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LOCK_NOT_AVAILABLE) => {}
                Err(other) => return Err(failure(other)),
            }
        }
    }

    /// A PostgreSQL session of its own, beside the pool, for locks held
    /// as long as it lives; None on SQLite. It does not log its
    /// statements: waiting for a lock is its job, not a slow statement.
    /// Its connection gets the acquire timeout: a database whose packets
    /// are dropped would hold it for minutes.
    pub(crate) async fn session(&self) -> Result<Option<sqlx::PgConnection>, Error> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        self.breaker.check()?;
        let options = sqlx::ConnectOptions::disable_statement_logging((*pool.connect_options()).clone());
        let connecting = async { sqlx::ConnectOptions::connect(&options).await.map_err(failure) };
        breaker::within(self.breaker.wait(), connecting).await.map(Some)
    }

    /// The newest outbox sequence committed by this process, to wait on.
    pub(crate) fn committed(&self) -> watch::Receiver<i64> {
        self.committed.subscribe()
    }

    /// Keeps `events`, just committed by this process, for its change-feed
    /// streams ([`Database::recent_after`]), at most [`RECENT_EVENTS`].
    fn remember(&self, events: Vec<OutboxEvent>) {
        let mut recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for event in events {
            // Units of work commit in sequence order but may get here out of
            // it: each goes to its place.
            let at = recent.iter().rposition(|e| e.sequence < event.sequence).map_or(0, |i| i + 1);
            recent.insert(at, event);
        }
        while recent.len() > RECENT_EVENTS {
            recent.pop_front();
        }
    }

    /// The events after `after`, at most `limit`, from those this process
    /// committed last, if they hold the one that follows `after` and as many
    /// as follow it without a gap; empty when they do not (the database has
    /// it: an older event, another replica's, or a sequence left unused).
    pub(crate) fn recent_after(&self, after: i64, limit: usize) -> Vec<OutboxEvent> {
        let recent = self.recent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = recent.partition_point(|e| e.sequence <= after);
        // A cursor at the end of the numbers has nothing after it.
        let Some(mut next) = after.checked_add(1) else { return Vec::new() };
        recent
            .range(start..)
            .take(limit)
            .take_while(|e| {
                let follows = e.sequence == next;
                next = next.saturating_add(1);
                follows
            })
            .cloned()
            .collect()
    }

    /// Wakes this process's change-feed streams: `sequence` is committed.
    pub(crate) fn announce(&self, sequence: i64) {
        self.committed.send_if_modified(|newest| {
            let newer = sequence > *newest;
            if newer {
                *newest = sequence;
            }
            newer
        });
    }
}

/// An outbox event as stored, and as this process keeps the ones it
/// committed last.
#[derive(Debug, Clone)]
pub(crate) struct OutboxEvent {
    pub sequence: i64,
    pub payload: String,
    pub occur_time: i64,
    pub trace_context: String,
}

/// How many of the events it committed last a process keeps for its
/// change-feed streams: a consumer more than that behind reads the
/// database, as one that starts from an older cursor does.
const RECENT_EVENTS: usize = 1024;

/// PostgreSQL's SQLSTATE for a lock wait that ran out of `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// How often a leader makes sure its lock session is alive.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// A lock held by this process until dropped (see [`Database::lead`]).
#[derive(Debug)]
pub(crate) struct Leadership(Option<sqlx::PgConnection>);

impl Leadership {
    /// Returns when the lock is lost: its session stopped answering (it
    /// was ended, the server restarted, the network is cut), so another
    /// process may hold the lock now. The session is asked every second;
    /// writes are fenced besides (see `feed`), so a leader that has not
    /// noticed yet cannot apply anything twice. Never returns on SQLite.
    pub(crate) async fn lost(&mut self) -> Error {
        let Some(conn) = &mut self.0 else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(LEASE_CHECK).await;
            let check = tokio::time::timeout(LEASE_CHECK, sqlx::query("SELECT 1").execute(&mut *conn));
            match check.await {
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return failure(err),
                Err(_) => return Error::unavailable("the lock session did not answer within a second"),
            }
        }
    }
}

fn pool_options<DB: sqlx::Database>(settings: &Settings) -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .max_connections(settings.db_max_connections)
        .acquire_timeout(settings.db_acquire_timeout)
        // A connection unused for a while is closed, so a pool that grew
        // under load shrinks back.
        .idle_timeout(Duration::from_secs(300))
        // No ping before each use: it is a round trip per query (a thread
        // hop on SQLite), and health probes the database anyway; a dead
        // connection fails its query and is dropped.
        .test_before_acquire(false)
}

/// The URL handed to the driver, and its dialect. For SQLite the file's
/// folder is created and the file is created when missing (`mode=rwc`).
fn prepare_url(url: &DatabaseUrl) -> anyhow::Result<(String, Backend)> {
    if url.is_postgres() {
        return Ok((url.expose().to_owned(), Backend::Postgres));
    }
    let raw = url.expose();
    let rest = raw.strip_prefix("sqlite://").or_else(|| raw.strip_prefix("sqlite:")).unwrap_or(raw);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path != ":memory:"
        && let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the database folder {}", dir.display()))?;
    }
    let url = match query {
        Some(q) if q.split('&').any(|kv| kv.starts_with("mode=")) => format!("sqlite://{path}?{q}"),
        Some(q) => format!("sqlite://{path}?{q}&mode=rwc"),
        None => format!("sqlite://{path}?mode=rwc"),
    };
    Ok((url, Backend::Sqlite))
}

/// What a database failure means for the call: out of reach or saturated
/// is UNAVAILABLE (a retry may work), anything else is a bug. Nothing is
/// logged here: the error is logged once, where it is answered.
pub(crate) fn failure(err: sqlx::Error) -> Error {
    if unreachable(&err) || matches!(err, sqlx::Error::PoolClosed) {
        return Error::unavailable_because("the database is unavailable", err);
    }
    Error::Internal(anyhow::Error::new(err).context("database"))
}

/// Whether `err` says the database could not be reached: no connection
/// within the acquire timeout, a connection refused, reset or cut, or a
/// PostgreSQL server that will not take the session (SQLSTATE class 08,
/// connection exceptions; 57P01 to 57P03, shutting down or starting up;
/// 53300, too many connections; 3D000, its database gone). The breaker
/// counts these; any other answer is the database reached.
pub(crate) fn unreachable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            code.starts_with("08") || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "3D000")
        }),
        _ => false,
    }
}

/// A connection from `pool` for one statement, or UNAVAILABLE: at once
/// while the database is known to be out of reach, or when none came
/// within the acquire timeout or before the call's deadline (less a
/// margin to answer in).
async fn acquire<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    breaker: &Breaker,
) -> Result<sqlx::pool::PoolConnection<DB>, Error> {
    breaker.check()?;
    // An idle connection needs no timer.
    if let Some(conn) = pool.try_acquire() {
        return Ok(conn);
    }
    let bound = breaker::wait_bound(breaker.wait())?;
    // Boxed: the wait's future (sqlx's acquire and a timer) is large, and
    // would otherwise be part of every statement's future, moved (copied)
    // whole each time one is made, even when an idle connection was there
    // (GetProduct lost 15 % of its rate to those copies).
    let acquired = Box::pin(breaker::within(bound, async { pool.acquire().await.map_err(failure) })).await;
    if acquired.is_err() {
        breaker.failed();
    }
    acquired
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file_when_missing() {
        let dir = crate::scratch_dir("db");
        let url = DatabaseUrl::new(format!("sqlite:{}/x/catalog.db", dir.display()));
        let (prepared, backend) = prepare_url(&url).unwrap();
        assert_eq!(backend, Backend::Sqlite);
        assert!(prepared.ends_with("/x/catalog.db?mode=rwc"), "{prepared}");
        assert!(dir.join("x").is_dir());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The events a process committed last are served when they follow the
    /// consumer's cursor without a gap, and only as far as they do.
    #[tokio::test]
    async fn recent_events_are_served_only_where_they_follow_on() {
        let db = Database::connect_lazy(&Settings::for_tests(DatabaseUrl::new("sqlite::memory:"))).unwrap();
        let event = |sequence| OutboxEvent {
            sequence,
            payload: format!("{{\"n\": {sequence}}}"),
            occur_time: 0,
            trace_context: String::new(),
        };
        // Committed in order, handed over out of it; 14 is another replica's.
        db.remember(vec![event(10), event(12)]);
        db.remember(vec![event(11)]);
        db.remember(vec![event(13), event(15)]);
        let sequences =
            |after, limit| db.recent_after(after, limit).iter().map(|e| e.sequence).collect::<Vec<_>>();
        assert_eq!(sequences(9, 10), [10, 11, 12, 13], "up to the gap");
        assert_eq!(sequences(11, 1), [12]);
        assert_eq!(sequences(13, 10), Vec::<i64>::new(), "14 is not here: the database has it");
        assert_eq!(sequences(14, 10), [15]);
        assert_eq!(sequences(5, 10), Vec::<i64>::new(), "6 is older than what is kept");
        db.remember((100..100 + RECENT_EVENTS as i64 + 10).map(event).collect());
        assert_eq!(sequences(99, 1), Vec::<i64>::new(), "the oldest went");
        assert_eq!(sequences(109, 1), [110]);
        assert_eq!(sequences(i64::MAX, 10), Vec::<i64>::new(), "a cursor at the end of the numbers");
    }

    #[test]
    fn an_explicit_mode_is_kept() {
        let url = DatabaseUrl::new("sqlite::memory:?mode=memory");
        let (prepared, _) = prepare_url(&url).unwrap();
        assert_eq!(prepared, "sqlite://:memory:?mode=memory");
    }
}
