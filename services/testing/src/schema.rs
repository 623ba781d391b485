//! The shape of a database, for tests of its migrations: what the tables,
//! columns and indexes are, told alike whichever history made them.

use agora_platform::{Backend, Database, Migrations, db::Row};

use crate::TestDatabase;

impl TestDatabase {
    /// The database as an earlier version of a service left it: its legacy
    /// schema history run (and recorded) the way that version ran it. The
    /// returned handle writes the rows that version would have written.
    pub async fn migrated_as_before(&self, migrations: &Migrations) -> Database {
        let db = self.open();
        migrations.run_legacy_history(&db).await.expect("the legacy history runs");
        db
    }

    /// Checks that this database, migrated by whatever history, has the
    /// schema a fresh database gets from `migrations`.
    pub async fn assert_schema_as_fresh(&self, migrations: &Migrations) {
        let fresh = Box::pin(self.another()).await;
        let db = fresh.open();
        db.migrate(migrations).await.expect("a fresh database migrates");
        db.close().await;
        let (this, expected) = (self.schema().await, fresh.schema().await);
        assert!(!expected.is_empty(), "the schema is read");
        assert_eq!(this, expected, "the adopted schema differs from a fresh one");
    }

    /// One line per table column and per index of the service's and the
    /// platform's tables (migration records left out), sorted. Indexes that
    /// back a constraint are told by their columns, not their names: a
    /// renamed table keeps its constraint's old index name.
    pub async fn schema(&self) -> Vec<String> {
        let db = self.open();
        let mut lines = match db.backend() {
            Backend::Sqlite => sqlite_schema(&db).await,
            Backend::Postgres => postgres_schema(&db).await,
        };
        db.close().await;
        lines.sort();
        lines
    }
}

async fn sqlite_schema(db: &Database) -> Vec<String> {
    let tables = db
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_%' ESCAPE '\\'",
        )
        .fetch_all()
        .await
        .expect("the tables");
    let mut lines = Vec::new();
    for table in tables {
        let table: String = table.get("name").expect("a name");
        for c in
            about(db, "SELECT name, type, \"notnull\" AS required, pk FROM pragma_table_info($1)", &table)
                .await
        {
            let (name, kind): (String, String) = (c.get("name").unwrap(), c.get("type").unwrap());
            let (required, pk): (i64, i64) = (c.get("required").unwrap(), c.get("pk").unwrap());
            lines.push(format!("{table}.{name} {kind} required={required} pk={pk}"));
        }
        for i in about(db, "SELECT name, \"unique\" AS uniq, origin FROM pragma_index_list($1)", &table).await
        {
            let (name, origin): (String, String) = (i.get("name").unwrap(), i.get("origin").unwrap());
            let unique: i64 = i.get("uniq").unwrap();
            let columns: Vec<String> =
                about(db, "SELECT name FROM pragma_index_info($1) ORDER BY seqno", &name)
                    .await
                    .iter()
                    .map(|r| r.get("name").unwrap())
                    .collect();
            let label = if origin == "c" { name } else { origin };
            lines.push(format!("{table} index {label} unique={unique} ({})", columns.join(", ")));
        }
    }
    lines
}

/// The rows of a statement about one table or index, `subject`.
async fn about(db: &Database, sql: &'static str, subject: &str) -> Vec<Row> {
    db.query(sql).bind(subject).fetch_all().await.expect(sql)
}

async fn postgres_schema(db: &Database) -> Vec<String> {
    let columns = db
        .query(
            "SELECT table_name::text AS t, column_name::text AS c, data_type::text AS kind, \
             is_nullable::text AS nullable, is_identity::text AS identity \
             FROM information_schema.columns \
             WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_%'",
        )
        .fetch_all()
        .await
        .expect("the columns");
    let mut lines: Vec<String> = columns
        .iter()
        .map(|r| {
            let get = |name: &str| r.get::<String>(name).unwrap();
            format!(
                "{}.{} {} nullable={} identity={}",
                get("t"),
                get("c"),
                get("kind"),
                get("nullable"),
                get("identity")
            )
        })
        .collect();
    let indexes = db
        .query(
            "SELECT t.relname::text AS t, i.relname::text AS i, ix.indisunique AS uniq, \
             EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = ix.indexrelid) AS owned, \
             (SELECT string_agg(a.attname::text, ', ' ORDER BY k.n) FROM unnest(ix.indkey) WITH ORDINALITY k(attnum, n) \
              JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum) AS cols \
             FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid JOIN pg_class i ON i.oid = ix.indexrelid \
             JOIN pg_namespace n ON n.oid = t.relnamespace \
             WHERE n.nspname = current_schema() AND t.relname NOT LIKE '\\_%'",
        )
        .fetch_all()
        .await
        .expect("the indexes");
    for r in indexes {
        let (table, name, columns): (String, String, String) =
            (r.get("t").unwrap(), r.get("i").unwrap(), r.get("cols").unwrap());
        let (unique, owned): (bool, bool) = (r.get("uniq").unwrap(), r.get("owned").unwrap());
        let label = if owned { "constraint".to_owned() } else { name };
        lines.push(format!("{table} index {label} unique={unique} ({columns})"));
    }
    lines
}
