//! A database created by an earlier version of the catalog, whose own
//! migrations made the platform's tables too, keeps migrating forward: the
//! new binary adopts its history, serves its rows and ends with the schema
//! of a fresh database.

use agora_catalog::{
    MIGRATIONS,
    domain::{Money, NewProduct},
};
use tokio_stream::StreamExt as _;

use crate::common::*;

agora_testing::on_both_backends!(a_database_of_the_earlier_history_is_adopted_with_its_rows);

async fn a_database_of_the_earlier_history_is_adopted_with_its_rows(db: TestDatabase) {
    // Recent enough that outbox pruning (a week's retention) keeps it.
    let t0 = agora_platform::wire::now_micros();
    let old = db.migrated_as_before(&MIGRATIONS).await;
    old.query(
        "INSERT INTO families (family_id, display_name, description, create_time) VALUES ($1, $2, $3, $4)",
    )
    .bind("fam_old")
    .bind("Screens")
    .bind("Flat ones")
    .bind(t0)
    .execute()
    .await
    .unwrap();
    old.query(
        "INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor, \
         state, revision, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind("prd_old")
    .bind("Old screen")
    .bind("Kept")
    .bind("fam_old")
    .bind("EUR")
    .bind(19_900_i64)
    .bind("ACTIVE")
    .bind(2_i64)
    .bind(t0)
    .bind(t0 + 1)
    .execute()
    .await
    .unwrap();
    let asked = NewProduct {
        display_name: "Old screen".into(),
        description: "Kept".into(),
        family_id: "fam_old".into(),
        price: Money { currency_code: "EUR".into(), amount_minor: 19_900 },
    };
    old.query("INSERT INTO idempotency_keys (request_id, fingerprint, resource_id, create_time) VALUES ($1, $2, $3, $4)")
        .bind("key-old")
        .bind(asked.fingerprint())
        .bind("prd_old")
        .bind(t0)
        .execute()
        .await
        .unwrap();
    old.query("INSERT INTO outbox_events (kind, payload, occur_time) VALUES ($1, $2, $3)")
        .bind("ProductDiscontinued")
        .bind(r#"{"kind":"ProductDiscontinued","data":{"product_id":"prd_old"}}"#)
        .bind(t0 + 2)
        .execute()
        .await
        .unwrap();
    old.close().await;

    let mut c = start(db).await;
    let kept = c
        .client
        .get_product(pb::GetProductRequest { product_id: "prd_old".into() })
        .await
        .expect("the old product is served")
        .into_inner()
        .product
        .unwrap();
    assert_eq!((kept.display_name.as_str(), kept.etag.as_str()), ("Old screen", "r2"));
    let families = c.client.list_families(pb::ListFamiliesRequest::default()).await.unwrap().into_inner();
    assert_eq!(families.families.iter().map(|f| f.family_id.as_str()).collect::<Vec<_>>(), ["fam_old"]);

    // The old idempotency key still replays the product it created.
    let same = pb::Product { description: "Kept".into(), ..new_product("fam_old", "Old screen", 19_900) };
    let replayed = c
        .client
        .create_product(pb::CreateProductRequest { request_id: "key-old".into(), product: Some(same) })
        .await
        .expect("the old key replays")
        .into_inner()
        .product
        .unwrap();
    assert_eq!(replayed.product_id, "prd_old");

    // The old event is the feed's first, and new ones follow it.
    product(&mut c.client, "fam_old", "New screen", 100).await;
    let mut feed = c
        .follower
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: 0 })
        .await
        .unwrap()
        .into_inner();
    let first = feed.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(first.sequence, 1);
    assert!(
        matches!(first.kind, Some(pb::catalog_event::Kind::ProductDiscontinued(ref e)) if e.product_id == "prd_old")
    );
    assert_eq!(feed.next().await.unwrap().unwrap().event.unwrap().sequence, 2);

    c.db.assert_schema_as_fresh(&MIGRATIONS).await;
}

/// A rollout starts several replicas at once on one new PostgreSQL
/// database: each migration runs exactly once (sqlx's migrator holds an
/// advisory lock while it migrates), and every replica serves.
#[tokio::test]
async fn replicas_starting_at_once_run_each_migration_once() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let start = || async {
        TestServer::start(agora_catalog::build(agora_testing::settings("catalog", &db)).await.unwrap()).await
    };
    let (a, b, c) = tokio::join!(start(), start(), start());
    let probe = db.open();
    for table in ["_agora_platform_migrations", "_agora_service_migrations"] {
        let sql = match table {
            "_agora_platform_migrations" => {
                "SELECT version, COUNT(*) AS n FROM _agora_platform_migrations GROUP BY version ORDER BY version"
            }
            _ => {
                "SELECT version, COUNT(*) AS n FROM _agora_service_migrations GROUP BY version ORDER BY version"
            }
        };
        let rows = probe.query(sql).fetch_all().await.unwrap();
        assert!(!rows.is_empty(), "{table} is empty");
        for row in rows {
            let (version, n): (i64, i64) = (row.get("version").unwrap(), row.get("n").unwrap());
            assert_eq!(n, 1, "{table}: version {version} recorded {n} times");
        }
    }
    for server in [a, b, c] {
        let mut client = pb::catalog_service_client::CatalogServiceClient::new(server.channel.clone());
        client.list_families(pb::ListFamiliesRequest::default()).await.expect("every replica serves");
    }
}
