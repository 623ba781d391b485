//! The service's own database, through sqlx's `Any` driver: a SQLite file by
//! default, PostgreSQL when the URL says so.
//!
//! One pool type serves both, so each service has one store. Where the two
//! dialects differ (DDL, locking) the difference lives here or in the
//! migration files, never in a second copy of the store. The store's SQL uses
//! `$1` placeholders, which both drivers accept.

use std::{borrow::Cow, path::Path, time::Duration};

use anyhow::Context as _;
use sqlx::{
    AnyPool, Executor as _,
    any::AnyPoolOptions,
    migrate::{Migration, MigrationType, Migrator},
};

use crate::config::{DatabaseUrl, Settings};

/// Which SQL dialect the pool speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The migrations of one service, one list per dialect, embedded in the
/// binary so a deployed service needs no migration files beside it.
///
/// Built by hand from `include_str!` rather than with `sqlx::migrate!`: the
/// macro needs sqlx's proc-macro crate, which compiles both database drivers
/// a second time for the build host, and it gives nothing more here.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// `(version, description, sql)` for SQLite.
    pub sqlite: &'static [(i64, &'static str, &'static str)],
    /// `(version, description, sql)` for PostgreSQL.
    pub postgres: &'static [(i64, &'static str, &'static str)],
}

impl Migrations {
    fn migrator(&self, backend: Backend) -> Migrator {
        let list = match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        };
        Migrator::with_migrations(
            list.iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*description),
                        MigrationType::Simple,
                        sqlx::SqlStr::from_static(sql),
                        false,
                    )
                })
                .collect(),
        )
    }
}

/// A pool on the service's database and the dialect it speaks.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
}

impl Database {
    /// Builds the pool without connecting: the server answers health checks
    /// (NOT_SERVING) while the database is still out of reach.
    pub fn connect_lazy(settings: &Settings) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (url, backend) = prepare_url(&settings.database_url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(settings.db_max_connections)
            .acquire_timeout(settings.db_acquire_timeout)
            // A connection unused for a while is closed, so a pool that grew
            // under load shrinks back.
            .idle_timeout(Duration::from_secs(300))
            // No ping before each use: it is a round trip per query (a
            // thread hop on SQLite), and health probes the database anyway;
            // a dead connection fails its query and is dropped.
            .test_before_acquire(false)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer. The
                        // setting is stored in the file; asking again is cheap.
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_lazy(&url)
            .context("database URL")?;
        Ok(Self { pool, backend })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Runs the service's migrations for this dialect.
    pub async fn migrate(&self, migrations: &Migrations) -> anyhow::Result<()> {
        migrations.migrator(self.backend).run(&self.pool).await.context("running migrations")
    }

    /// Asks the database a trivial question; health is built on the answer.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(drop)
    }

    /// Starts a transaction that will write.
    ///
    /// SQLite takes the write lock at the first write of a deferred
    /// transaction and cannot wait for it there when it already read
    /// (SQLITE_BUSY at once); `BEGIN IMMEDIATE` takes it up front, where the
    /// busy timeout applies. PostgreSQL locks rows as it goes.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Connections open and idle, for the pool gauges.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }

    /// Closes every connection: used at shutdown.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// One page of a keyset listing: the rows and the cursor of the next page.
#[derive(Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// The `seq` to continue after; None on the last page.
    pub next_after: Option<i64>,
}

/// Rows of a keyset query over a `seq` column, asked with `LIMIT limit + 1`:
/// the extra row only says that another page exists. A deep page costs what
/// the first does: the query seeks to `seq > cursor` on the index.
pub fn paginate<T>(
    rows: Vec<sqlx::any::AnyRow>,
    limit: u32,
    map: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Page<T>, crate::Error> {
    use sqlx::Row as _;
    let more = rows.len() > limit as usize;
    let mut items = Vec::with_capacity(rows.len().min(limit as usize));
    let mut last_seq = None;
    for row in rows.iter().take(limit as usize) {
        items.push(map(row)?);
        last_seq = Some(row.try_get::<i64, _>("seq")?);
    }
    Ok(Page { items, next_after: if more { last_seq } else { None } })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_their_file_when_missing() {
        let dir = std::env::temp_dir().join(format!("agora-db-{}", std::process::id()));
        let url = DatabaseUrl::new(format!("sqlite:{}/x/catalog.db", dir.display()));
        let (prepared, backend) = prepare_url(&url).unwrap();
        assert_eq!(backend, Backend::Sqlite);
        assert!(prepared.ends_with("/x/catalog.db?mode=rwc"), "{prepared}");
        assert!(dir.join("x").is_dir());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_explicit_mode_is_kept() {
        let url = DatabaseUrl::new("sqlite::memory:?mode=memory");
        let (prepared, _) = prepare_url(&url).unwrap();
        assert_eq!(prepared, "sqlite://:memory:?mode=memory");
    }
}
