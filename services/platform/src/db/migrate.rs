//! Migrations: the platform's tables and the service's, each with a history
//! of its own.
//!
//! Every service's database holds the platform's tables beside the
//! service's: `idempotency_keys` ([`UnitOfWork::claim`]), `outbox_events`
//! and `outbox_state` ([`UnitOfWork::record`], [`crate::outbox`]) and
//! `feed_cursors` ([`crate::feed`]). The platform creates and migrates them
//! from `services/platform/migrations/`, recorded in
//! `_agora_platform_migrations`; a service that does not use one leaves it
//! empty. A service's own migrations hold only its domain tables, recorded
//! in `_agora_service_migrations`.
//!
//! Before the platform owned its tables, each service created them in its
//! own migrations, recorded in sqlx's `_sqlx_migrations`: that history is
//! the service's [`LegacyHistory`]. A database that has it and not the new
//! one is first brought to the end of it (sqlx checks the checksums of what
//! was applied, as ever), then the service's migrations it replaced are
//! recorded as applied without running. The platform's statements say
//! `IF NOT EXISTS` for this reason alone: on such a database its tables
//! exist already, with the same definitions.
//!
//! Migrations are embedded in the binary from `include_str!` rather than by
//! `sqlx::migrate!`: the macro needs sqlx's proc-macro crate, which compiles
//! both database drivers a second time for the build host.
//!
//! [`UnitOfWork::claim`]: super::UnitOfWork::claim
//! [`UnitOfWork::record`]: super::UnitOfWork::record

use std::borrow::Cow;

use anyhow::Context as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::{Backend, Database, Pool};
use crate::Error;

/// One migration: version, description, SQL.
pub type Step = (i64, &'static str, &'static str);

/// The migrations of one service, one list per dialect.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// The service's domain tables, SQLite dialect (`migrations/sqlite/`).
    pub sqlite: &'static [Step],
    /// The same tables, PostgreSQL dialect (`migrations/postgres/`).
    pub postgres: &'static [Step],
    /// The history its databases had before the platform owned its tables.
    pub legacy: Option<LegacyHistory>,
}

/// A schema history replaced by the service's current migrations: kept
/// byte for byte, run only on databases that started with it.
#[derive(Debug, Clone, Copy)]
pub struct LegacyHistory {
    pub sqlite: &'static [Step],
    pub postgres: &'static [Step],
    /// The service's migrations up to this version create what the whole
    /// legacy history created (with the platform's tables): they are
    /// recorded as applied on a database adopted from it.
    pub replaced_through: i64,
}

/// The migrations of the crate that names them, embedded from its
/// `migrations/` folder: each step is a version and a file stem, read from
/// `migrations/sqlite/<stem>.sql` and `migrations/postgres/<stem>.sql`; a
/// legacy history from `migrations/legacy/<dialect>/`.
///
/// ```ignore
/// pub const MIGRATIONS: Migrations = agora_platform::migrations!(
///     [(1, "0001_catalog")],
///     legacy [(1, "0001_catalog"), (2, "0002_idempotency_keys"), (3, "0003_outbox")] replaced through 1
/// );
/// ```
#[macro_export]
macro_rules! migrations {
    ([$(($v:literal, $stem:literal)),* $(,)?]) => {
        $crate::db::Migrations {
            sqlite: $crate::migrations!(@steps "sqlite", $(($v, $stem)),*),
            postgres: $crate::migrations!(@steps "postgres", $(($v, $stem)),*),
            legacy: None,
        }
    };
    ([$(($v:literal, $stem:literal)),* $(,)?],
     legacy [$(($lv:literal, $lstem:literal)),* $(,)?] replaced through $through:literal) => {
        $crate::db::Migrations {
            sqlite: $crate::migrations!(@steps "sqlite", $(($v, $stem)),*),
            postgres: $crate::migrations!(@steps "postgres", $(($v, $stem)),*),
            legacy: Some($crate::db::LegacyHistory {
                sqlite: $crate::migrations!(@steps "legacy/sqlite", $(($lv, $lstem)),*),
                postgres: $crate::migrations!(@steps "legacy/postgres", $(($lv, $lstem)),*),
                replaced_through: $through,
            }),
        }
    };
    (@steps $dir:literal, $(($v:literal, $stem:literal)),*) => {
        &[$(($v, $stem, include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $stem, ".sql")))),*]
    };
}

/// The platform's own tables.
const PLATFORM: Migrations = crate::migrations!([
    (1, "0001_idempotency_keys"),
    (2, "0002_outbox"),
    (3, "0003_feed_cursors"),
    (4, "0004_outbox_trace_context"),
    (5, "0005_events_on_jetstream")
]);

/// Where each history is recorded.
const PLATFORM_TABLE: &str = "_agora_platform_migrations";
const SERVICE_TABLE: &str = "_agora_service_migrations";
const LEGACY_TABLE: &str = "_sqlx_migrations";

fn migrator(steps: &'static [Step], table: &'static str) -> Migrator {
    let mut migrator = Migrator::with_migrations(
        steps
            .iter()
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
    );
    migrator.dangerous_set_table_name(table);
    migrator
}

fn steps(sqlite: &'static [Step], postgres: &'static [Step], backend: Backend) -> &'static [Step] {
    match backend {
        Backend::Sqlite => sqlite,
        Backend::Postgres => postgres,
    }
}

/// Runs `migrator` on the pool; with `skip_through`, records its
/// migrations up to that version as applied without running them.
async fn apply(pool: &Pool, migrator: &Migrator, skip_through: Option<i64>) -> anyhow::Result<()> {
    let result = match (pool, skip_through) {
        (Pool::Sqlite(p), None) => migrator.run(p).await,
        (Pool::Sqlite(p), Some(v)) => migrator.skip(p, Some(v)).await,
        (Pool::Postgres(p), None) => migrator.run(p).await,
        (Pool::Postgres(p), Some(v)) => migrator.skip(p, Some(v)).await,
    };
    Ok(result?)
}

impl Migrations {
    pub(super) async fn run(&self, db: &Database) -> anyhow::Result<()> {
        let backend = db.backend();
        let service = migrator(steps(self.sqlite, self.postgres, backend), SERVICE_TABLE);
        if let Some(legacy) = &self.legacy
            && has_table(db, LEGACY_TABLE).await?
            && !has_table(db, SERVICE_TABLE).await?
        {
            tracing::info!("adopting the schema history of an earlier version of the service");
            let history = migrator(steps(legacy.sqlite, legacy.postgres, backend), LEGACY_TABLE);
            apply(&db.pool, &history, None).await.context("completing the earlier schema history")?;
            apply(&db.pool, &service, Some(legacy.replaced_through))
                .await
                .context("recording the migrations the earlier history replaced")?;
        }
        let platform = migrator(steps(PLATFORM.sqlite, PLATFORM.postgres, backend), PLATFORM_TABLE);
        apply(&db.pool, &platform, None).await.context("the platform's migrations")?;
        apply(&db.pool, &service, None).await.context("the service's migrations")
    }
}

impl Migrations {
    /// What an earlier version of the service ran: its legacy history
    /// alone, recorded where it was. For the tests of the upgrade path.
    pub async fn run_legacy_history(&self, db: &Database) -> anyhow::Result<()> {
        let legacy = self.legacy.context("this service has no legacy history")?;
        let history = migrator(steps(legacy.sqlite, legacy.postgres, db.backend()), LEGACY_TABLE);
        apply(&db.pool, &history, None).await
    }
}

async fn has_table(db: &Database, name: &str) -> Result<bool, Error> {
    let sql = match db.backend() {
        Backend::Sqlite => "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1",
        Backend::Postgres => {
            "SELECT COUNT(*) AS n FROM information_schema.tables \
             WHERE table_schema = current_schema() AND table_name = $1"
        }
    };
    Ok(db.query(sql).bind(name).fetch_one().await?.get::<i64>("n")? > 0)
}
