//! Back pressure of StreamProducts on a large catalog: the server reads
//! from the database only as fast as the client takes products, and stops
//! reading when the client goes away. Its own test binary, so that the
//! process-wide rows-read counter belongs to this test alone.

use std::time::Duration;

use crate::common::*;
use agora_testing::wait_until;
use sqlx::{Connection as _, Executor as _};
use tokio_stream::StreamExt as _;

const TOTAL: i64 = 200_000;

async fn rows_read(c: &Catalog) -> i64 {
    metric(c, "agora_catalog_stream_rows_read_total ").await as i64
}

/// A slow reader holds the server back; a reader that leaves stops it.
#[tokio::test]
async fn a_slow_reader_holds_the_server_back_and_a_leaving_one_stops_it() {
    let mut c = start(TestDatabase::sqlite()).await;
    let fam = family(&mut c.client, "Bulk").await;
    let mut side = sqlx::SqliteConnection::connect(c.db.url().expose()).await.unwrap();
    side.execute(sqlx::AssertSqlSafe(format!(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {TOTAL}) \
         INSERT INTO products (product_id, display_name, description, family_id, currency_code, amount_minor, \
         state, revision, create_time, update_time) \
         SELECT 'prd_bulk_' || i, 'Product ' || i, 'A product of the bulk catalog', '{}', 'EUR', i, 'ACTIVE', 1, 0, 0 FROM n",
        fam.family_id
    )))
    .await
    .unwrap();

    // Slow: take three messages, then stop taking for a while.
    let mut stream =
        c.client.stream_products(pb::StreamProductsRequest::default()).await.unwrap().into_inner();
    let mut taken = 0;
    for _ in 0..3 {
        taken += stream.next().await.unwrap().unwrap().products.len() as i64;
    }
    // The server may run ahead by what HTTP/2 windows and buffers hold, a
    // bounded amount; without back pressure it would read everything.
    let ahead_bound = taken + 40_000;
    let mut most = 0;
    for _ in 0..25 {
        most = most.max(rows_read(&c).await);
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    eprintln!("a reader that took {taken} products let the server read {most} rows");
    assert!(most <= ahead_bound, "the server read {most} rows for a reader that took {taken}");

    // Taking the rest gets every product, once, in creation order.
    let mut count = taken;
    let mut last = 0;
    while let Some(message) = stream.next().await {
        for p in message.unwrap().products {
            let n: i64 = p.product_id.trim_start_matches("prd_bulk_").parse().unwrap();
            assert!(n > last, "in order, no repeats");
            last = n;
            count += 1;
        }
    }
    assert_eq!(count, TOTAL);

    // Leaving: read a little, hang up, and the reading stops.
    let before = rows_read(&c).await;
    let mut stream =
        c.client.stream_products(pb::StreamProductsRequest::default()).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    let in_flight = r#"grpc_server_in_flight{grpc_service="agora.catalog.v1.CatalogService",grpc_method="StreamProducts"} "#;
    assert!(wait_until(Duration::from_secs(10), || async { metric(&c, in_flight).await == 0.0 }).await);
    let after_hang_up = rows_read(&c).await;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(rows_read(&c).await, after_hang_up, "no reading after the client left");
    }
    assert!(
        after_hang_up - before < TOTAL / 4,
        "read {} rows for a client that took one message",
        after_hang_up - before
    );
}
