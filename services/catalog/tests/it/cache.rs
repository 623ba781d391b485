//! GetProduct's read cache against two replicas of the catalog on one
//! database: a replica reads its own writes at once, another sees them
//! within the feed's poll interval, and the cache is really used.

use std::time::{Duration, Instant};

use crate::common::*;
use agora_testing::wait_until;
use pb::catalog_service_client::CatalogServiceClient;
use prost_types::FieldMask;

agora_testing::on_both_backends!(replicas_read_their_own_writes_and_see_the_others_within_the_poll_interval);

async fn get(client: &mut CatalogServiceClient<agora_testing::Channel>, id: &str) -> pb::Product {
    let request = pb::GetProductRequest { product_id: id.into() };
    client.get_product(request).await.unwrap().into_inner().product.unwrap()
}

async fn rename(
    client: &mut CatalogServiceClient<agora_testing::Channel>,
    id: &str,
    name: &str,
) -> pb::Product {
    let request = pb::UpdateProductRequest {
        product: Some(pb::Product { product_id: id.into(), display_name: name.into(), ..Default::default() }),
        update_mask: Some(FieldMask { paths: vec!["display_name".into()] }),
    };
    client.update_product(request).await.unwrap().into_inner().product.unwrap()
}

async fn cache_hits(c: &Catalog) -> f64 {
    metric(c, r#"agora_catalog_cache_reads_total{outcome="hit"} "#).await
}

async fn replicas_read_their_own_writes_and_see_the_others_within_the_poll_interval(db: TestDatabase) {
    let poll = Duration::from_millis(200);
    let mut a = start_with(db, |s| s.outbox_poll_interval = poll).await;
    let mut settings = agora_testing::settings("catalog", &a.db);
    settings.outbox_poll_interval = poll;
    let b_server = TestServer::start(agora_catalog::build(settings).await.unwrap()).await;
    let mut b = CatalogServiceClient::new(b_server.channel.clone());

    let fam = family(&mut a.client, "Screens").await;
    let p = product(&mut a.client, &fam.family_id, "Screen", 100).await;
    // B reads it until its cache answers (its feed follower has started).
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (mut b, id, want) = (b.clone(), p.product_id.clone(), p.etag.clone());
            async move { get(&mut b, &id).await.etag == want }
        })
        .await
    );
    let hits_before =
        metric_at(b_server.admin_addr, r#"agora_catalog_cache_reads_total{outcome="hit"} "#).await;
    for _ in 0..5 {
        assert_eq!(get(&mut b, &p.product_id).await.etag, p.etag);
    }
    let hits = metric_at(b_server.admin_addr, r#"agora_catalog_cache_reads_total{outcome="hit"} "#).await;
    assert!(hits >= hits_before + 4.0, "B's reads were not answered by its cache ({hits_before} → {hits})");

    // Read-your-writes on A, with A's cache warm.
    get(&mut a.client, &p.product_id).await;
    get(&mut a.client, &p.product_id).await;
    assert!(cache_hits(&a).await >= 1.0);
    let renamed = rename(&mut a.client, &p.product_id, "Wide screen").await;
    assert_ne!(renamed.etag, p.etag);
    assert_eq!(get(&mut a.client, &p.product_id).await, renamed, "A answers what it wrote, at once");

    // B, whose cache held the old product, sees the change within the
    // poll interval (plus the time a test machine takes).
    let changed = Instant::now();
    let seen = wait_until(Duration::from_secs(10), || {
        let (mut b, id, want) = (b.clone(), p.product_id.clone(), renamed.etag.clone());
        async move { get(&mut b, &id).await.etag == want }
    })
    .await;
    assert!(seen, "B never saw the change");
    let lag = changed.elapsed();
    assert!(lag < poll * 5, "B saw the change after {lag:?}, with a poll interval of {poll:?}");
}
