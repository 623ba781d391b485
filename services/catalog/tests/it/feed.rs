//! The catalog's change feed and product stream through the real gRPC
//! interface, on SQLite and on PostgreSQL.

use std::time::Duration;

use crate::common::*;
use pb::catalog_event::Kind;
use tokio_stream::StreamExt as _;
use tonic::{Code, Streaming};

agora_testing::on_both_backends!(
    watch_sends_the_backlog_in_order_then_follows_live,
    resuming_from_a_sequence_sends_only_later_events,
    a_cursor_older_than_what_is_kept_is_out_of_range,
    stream_products_sends_every_matching_product_once,
);

/// The next event, or a panic after a bound.
async fn next(stream: &mut Streaming<pb::WatchCatalogEventsResponse>) -> pb::CatalogEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event within 10 s")
        .expect("the stream is open")
        .expect("no error")
        .event
        .expect("an event")
}

async fn watch(c: &mut Catalog, after: i64) -> Streaming<pb::WatchCatalogEventsResponse> {
    c.follower
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: after })
        .await
        .expect("watching")
        .into_inner()
}

async fn watch_sends_the_backlog_in_order_then_follows_live(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let p = product(&mut c.client, &fam.family_id, "Screen", 100).await;
    c.client
        .update_product(pb::UpdateProductRequest {
            product: Some(pb::Product {
                product_id: p.product_id.clone(),
                display_name: "Big".into(),
                ..Default::default()
            }),
            update_mask: None,
        })
        .await
        .unwrap();
    c.client
        .discontinue_product(pb::DiscontinueProductRequest {
            product_id: p.product_id.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();

    let mut events = watch(&mut c, 0).await;
    let created = next(&mut events).await;
    let updated = next(&mut events).await;
    let discontinued = next(&mut events).await;
    assert!(
        matches!(&created.kind, Some(Kind::ProductCreated(e)) if e.product.as_ref().unwrap().product_id == p.product_id)
    );
    assert!(
        matches!(&updated.kind, Some(Kind::ProductUpdated(e)) if e.product.as_ref().unwrap().display_name == "Big")
    );
    assert!(matches!(&discontinued.kind, Some(Kind::ProductDiscontinued(e)) if e.product_id == p.product_id));
    assert!(created.sequence < updated.sequence && updated.sequence < discontinued.sequence);

    // Live: an event committed after the backlog arrives without a new call.
    let q = product(&mut c.client, &fam.family_id, "Lamp", 10).await;
    let live = next(&mut events).await;
    assert!(
        matches!(&live.kind, Some(Kind::ProductCreated(e)) if e.product.as_ref().unwrap().product_id == q.product_id)
    );
    assert!(live.sequence > discontinued.sequence);
}

async fn resuming_from_a_sequence_sends_only_later_events(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(product(&mut c.client, &fam.family_id, &format!("P{i}"), i).await.product_id);
    }
    let mut all = watch(&mut c, 0).await;
    let mut sequences = Vec::new();
    for _ in 0..5 {
        sequences.push(next(&mut all).await.sequence);
    }
    let mut resumed = watch(&mut c, sequences[2]).await;
    for (expected_sequence, expected_id) in sequences[3..].iter().zip(&ids[3..]) {
        let event = next(&mut resumed).await;
        assert_eq!(event.sequence, *expected_sequence);
        assert!(
            matches!(&event.kind, Some(Kind::ProductCreated(e)) if &e.product.as_ref().unwrap().product_id == expected_id)
        );
    }
    // Nothing else is pending.
    let more = tokio::time::timeout(Duration::from_millis(300), resumed.next()).await;
    assert!(more.is_err(), "no event after the last one: {more:?}");
}

async fn a_cursor_older_than_what_is_kept_is_out_of_range(db: TestDatabase) {
    let mut c = start(db).await;
    let fam = family(&mut c.client, "Screens").await;
    for i in 0..3 {
        product(&mut c.client, &fam.family_id, &format!("P{i}"), i).await;
    }
    // What pruning leaves behind: the first two events gone.
    c.db.execute("DELETE FROM outbox_events WHERE sequence <= 2").await;
    c.db.execute("INSERT INTO outbox_state (id, pruned_through) VALUES (1, 2)").await;

    let err = c
        .follower
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: 1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let mut from_oldest = watch(&mut c, 0).await;
    assert_eq!(next(&mut from_oldest).await.sequence, 3);
    let err = c
        .follower
        .watch_catalog_events(pb::WatchCatalogEventsRequest { after_sequence: -1 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn stream_products_sends_every_matching_product_once(db: TestDatabase) {
    let mut c = start(db).await;
    let screens = family(&mut c.client, "Screens").await;
    let lamps = family(&mut c.client, "Lamps").await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(product(&mut c.client, &screens.family_id, &format!("S{i}"), i).await.product_id);
        product(&mut c.client, &lamps.family_id, &format!("L{i}"), i).await;
    }
    let mut stream = c
        .client
        .stream_products(pb::StreamProductsRequest {
            family_id: screens.family_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream.next().await {
        seen.extend(message.unwrap().products.into_iter().map(|p| p.product_id));
    }
    assert_eq!(seen, expected);
    let err = c
        .client
        .stream_products(pb::StreamProductsRequest { state: 7, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
