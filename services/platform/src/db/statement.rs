//! One SQL statement, its values and its rows, on either backend.
//!
//! Written here rather than taken from sqlx's `Any` driver: `Any` turns
//! every bound value and every column into its own value type and back,
//! which cost 14% of a GetProduct. A [`Statement`] holds the backend's own
//! typed query, so a value goes straight into the driver's arguments and a
//! column straight out of its row; the only price of supporting two
//! backends is one `match` per call.

use sqlx::{
    Postgres, Row as _, SqlStr, Sqlite,
    pool::PoolConnection,
    postgres::{PgArguments, PgConnection, PgRow},
    query::Query,
    sqlite::{SqliteArguments, SqliteConnection, SqliteRow},
};

use tracing::Instrument as _;

use super::{Breaker, Database, Pool, UnitOfWork, acquire, failure};
use crate::Error;

type SqliteQuery = Query<'static, Sqlite, SqliteArguments>;
type PgQuery = Query<'static, Postgres, PgArguments>;

/// Where a statement runs: on the pool (a connection is taken from it
/// when the statement runs), or on one connection (a unit of work's
/// transaction).
enum Target<'c, DB: sqlx::Database> {
    Pool(&'c sqlx::Pool<DB>),
    Pooled(PoolConnection<DB>),
    Conn(&'c mut DB::Connection),
}

enum Inner<'c> {
    Sqlite(Target<'c, Sqlite>, SqliteQuery),
    Postgres(Target<'c, Postgres>, PgQuery),
}

/// One statement with its bound values, ready to run. Placeholders are
/// `$1`, `$2`, … in both dialects.
pub struct Statement<'c> {
    inner: Inner<'c>,
    /// The statement's text, for its span: placeholders, never values.
    sql: SqlStr,
    /// A unique constraint whose violation is the caller's error, not a bug.
    unique: Option<(Unique, Box<dyn FnOnce() -> Error + Send + 'c>)>,
    /// Told whether the statement reached the database.
    breaker: &'c Breaker,
}

/// A unique constraint, as each backend reports its violation: PostgreSQL
/// by the constraint's name, SQLite by `table.column` in its message
/// (`UNIQUE constraint failed: customers.email_key`).
#[derive(Debug, Clone, Copy)]
pub struct Unique {
    pub constraint: &'static str,
    pub column: &'static str,
}

/// Where statements can run: the pool (`&Database`) or a unit of work
/// (`&mut UnitOfWork`). A store function that reads takes `impl Executor`
/// and serves both a plain read and a read inside a write.
pub trait Executor<'c> {
    fn query(self, sql: &'static str) -> Statement<'c>;
}

impl<'c> Executor<'c> for &'c Database {
    fn query(self, sql: &'static str) -> Statement<'c> {
        Database::query(self, sql)
    }
}

impl<'c> Executor<'c> for &'c mut UnitOfWork {
    fn query(self, sql: &'static str) -> Statement<'c> {
        UnitOfWork::query(self, sql)
    }
}

impl<'c> Statement<'c> {
    pub(super) fn on_pool(pool: &'c Pool, breaker: &'c Breaker, sql: SqlStr) -> Self {
        let inner = match pool {
            Pool::Sqlite(p) => Inner::Sqlite(Target::Pool(p), sqlx::query(sql.clone())),
            Pool::Postgres(p) => Inner::Postgres(Target::Pool(p), sqlx::query(sql.clone())),
        };
        Self { inner, sql, unique: None, breaker }
    }

    pub(super) fn on_sqlite(conn: &'c mut SqliteConnection, breaker: &'c Breaker, sql: SqlStr) -> Self {
        let inner = Inner::Sqlite(Target::Conn(conn), sqlx::query(sql.clone()));
        Self { inner, sql, unique: None, breaker }
    }

    pub(super) fn on_postgres(conn: &'c mut PgConnection, breaker: &'c Breaker, sql: SqlStr) -> Self {
        let inner = Inner::Postgres(Target::Conn(conn), sqlx::query(sql.clone()));
        Self { inner, sql, unique: None, breaker }
    }

    /// The statement's span (at debug: exported with traces of the call,
    /// free without):
    /// the OpenTelemetry database conventions, the text with its
    /// placeholders and never a bound value.
    fn span(&self) -> tracing::Span {
        // A call that is not traced builds no span under it.
        if crate::telemetry::exporting() && crate::telemetry::untraced().is_some() {
            return tracing::Span::none();
        }
        let text = self.sql.as_str();
        let operation = text.split_whitespace().next().unwrap_or("");
        let system = match self.inner {
            Inner::Sqlite(..) => "sqlite",
            Inner::Postgres(..) => "postgresql",
        };
        tracing::debug_span!(
            "db",
            otel.name = operation,
            otel.kind = "client",
            db.system.name = system,
            db.operation.name = operation,
            db.query.text = text,
        )
    }

    /// Binds the next placeholder.
    pub fn bind<V: Value>(mut self, value: V) -> Self {
        self.inner = match self.inner {
            Inner::Sqlite(t, q) => Inner::Sqlite(t, value.bind_sqlite(q)),
            Inner::Postgres(t, q) => Inner::Postgres(t, value.bind_postgres(q)),
        };
        self
    }

    /// Answers a violation of `unique` with `error()` instead of an
    /// internal error: the database, not a read before the write, decides
    /// uniqueness, so two concurrent writers cannot both pass.
    pub fn on_unique_violation(mut self, unique: Unique, error: impl FnOnce() -> Error + Send + 'c) -> Self {
        self.unique = Some((unique, Box::new(error)));
        self
    }

    /// Runs the statement; returns the number of rows it changed.
    pub async fn execute(self) -> Result<u64, Error> {
        self.run(|inner| async move {
            match inner {
                Inner::Sqlite(Target::Pooled(mut c), q) => {
                    q.execute(&mut *c).await.map(|r| r.rows_affected())
                }
                Inner::Sqlite(Target::Conn(c), q) => q.execute(c).await.map(|r| r.rows_affected()),
                Inner::Postgres(Target::Pooled(mut c), q) => {
                    q.execute(&mut *c).await.map(|r| r.rows_affected())
                }
                Inner::Postgres(Target::Conn(c), q) => q.execute(c).await.map(|r| r.rows_affected()),
                _ => unreachable!("a pool's connection is taken before the statement runs"),
            }
        })
        .await
    }

    /// Runs the statement; returns every row.
    pub async fn fetch_all(self) -> Result<Vec<Row>, Error> {
        self.run(|inner| async move {
            match inner {
                Inner::Sqlite(Target::Pooled(mut c), q) => {
                    q.fetch_all(&mut *c).await.map(rows_of(Row::Sqlite))
                }
                Inner::Sqlite(Target::Conn(c), q) => q.fetch_all(c).await.map(rows_of(Row::Sqlite)),
                Inner::Postgres(Target::Pooled(mut c), q) => {
                    q.fetch_all(&mut *c).await.map(rows_of(Row::Postgres))
                }
                Inner::Postgres(Target::Conn(c), q) => q.fetch_all(c).await.map(rows_of(Row::Postgres)),
                _ => unreachable!("a pool's connection is taken before the statement runs"),
            }
        })
        .await
    }

    /// Runs the statement; returns its first row, if any.
    pub async fn fetch_optional(self) -> Result<Option<Row>, Error> {
        self.run(|inner| async move {
            match inner {
                Inner::Sqlite(Target::Pooled(mut c), q) => {
                    q.fetch_optional(&mut *c).await.map(|r| r.map(Row::Sqlite))
                }
                Inner::Sqlite(Target::Conn(c), q) => q.fetch_optional(c).await.map(|r| r.map(Row::Sqlite)),
                Inner::Postgres(Target::Pooled(mut c), q) => {
                    q.fetch_optional(&mut *c).await.map(|r| r.map(Row::Postgres))
                }
                Inner::Postgres(Target::Conn(c), q) => {
                    q.fetch_optional(c).await.map(|r| r.map(Row::Postgres))
                }
                _ => unreachable!("a pool's connection is taken before the statement runs"),
            }
        })
        .await
    }

    /// Runs `go` on the statement inside its span, on a connection taken
    /// from the pool when it runs on the pool; a failure becomes the
    /// platform's error (a unique violation the caller's, when declared),
    /// and the breaker hears whether the database was reached.
    async fn run<T, F, Fut>(self, go: F) -> Result<T, Error>
    where
        F: FnOnce(Inner<'c>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let span = self.span();
        let Self { inner, unique, breaker, .. } = self;
        async move {
            let inner = match inner {
                Inner::Sqlite(Target::Pool(p), q) => {
                    Inner::Sqlite(Target::Pooled(acquire(p, breaker).await?), q)
                }
                Inner::Postgres(Target::Pool(p), q) => {
                    Inner::Postgres(Target::Pooled(acquire(p, breaker).await?), q)
                }
                on_a_connection => on_a_connection,
            };
            let result = go(inner).await;
            breaker.heard(result.as_ref().err());
            result.map_err(|e| translate(e, unique))
        }
        .instrument(span)
        .await
    }

    /// Runs a statement that reads one resource, `resource` `id`; no row is
    /// NOT_FOUND.
    pub async fn fetch_found(self, resource: &'static str, id: &str) -> Result<Row, Error> {
        self.fetch_optional().await?.ok_or_else(|| Error::NotFound { resource, id: id.to_owned() })
    }

    /// Runs a statement that always yields a row (an aggregate, a
    /// `RETURNING`); no row is an internal error.
    pub async fn fetch_one(self) -> Result<Row, Error> {
        self.fetch_optional()
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("a statement that yields a row yielded none")))
    }
}

fn rows_of<R>(wrap: fn(R) -> Row) -> impl FnOnce(Vec<R>) -> Vec<Row> {
    move |rows| rows.into_iter().map(wrap).collect()
}

fn translate(err: sqlx::Error, unique: Option<(Unique, Box<dyn FnOnce() -> Error + Send + '_>)>) -> Error {
    if let Some((unique, error)) = unique
        && violates(&err, unique)
    {
        return error();
    }
    failure(err)
}

fn violates(err: &sqlx::Error, unique: Unique) -> bool {
    err.as_database_error().is_some_and(|e| {
        e.is_unique_violation()
            && match e.constraint() {
                Some(name) => name == unique.constraint,
                None => e.message().contains(unique.column),
            }
    })
}

/// A row a statement yielded.
pub enum Row {
    #[doc(hidden)]
    Sqlite(SqliteRow),
    #[doc(hidden)]
    Postgres(PgRow),
}

impl Row {
    /// The value of `column`; a missing column or a value of another type
    /// is an internal error (the store and its schema disagree).
    pub fn get<T: Column>(&self, column: &str) -> Result<T, Error> {
        let result = match self {
            Row::Sqlite(row) => T::get_sqlite(row, column),
            Row::Postgres(row) => T::get_postgres(row, column),
        };
        result.map_err(|e| Error::Internal(anyhow::Error::new(e).context(format!("reading column {column}"))))
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A value a statement binds. Implemented for the types the two backends
/// store alike: integers, text, booleans and their optional forms.
pub trait Value: sealed::Sealed + Send {
    #[doc(hidden)]
    fn bind_sqlite(self, query: SqliteQuery) -> SqliteQuery;
    #[doc(hidden)]
    fn bind_postgres(self, query: PgQuery) -> PgQuery;
}

/// A value a row yields.
pub trait Column: sealed::Sealed + Sized {
    #[doc(hidden)]
    fn get_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error>;
    #[doc(hidden)]
    fn get_postgres(row: &PgRow, column: &str) -> Result<Self, sqlx::Error>;
}

macro_rules! values {
    ($($t:ty),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Value for $t {
            fn bind_sqlite(self, query: SqliteQuery) -> SqliteQuery {
                query.bind(self)
            }
            fn bind_postgres(self, query: PgQuery) -> PgQuery {
                query.bind(self)
            }
        }
    )*};
}

macro_rules! columns {
    ($($t:ty),* $(,)?) => {$(
        impl Column for $t {
            fn get_sqlite(row: &SqliteRow, column: &str) -> Result<Self, sqlx::Error> {
                row.try_get(column)
            }
            fn get_postgres(row: &PgRow, column: &str) -> Result<Self, sqlx::Error> {
                row.try_get(column)
            }
        }
    )*};
}

values!(i64, bool, String, Option<String>, Option<i64>, &str, &String, Option<&str>);
columns!(i64, bool, String, Option<String>, Option<i64>);
