//! Change feeds on NATS JetStream, with a real nats-server: the catalog and
//! customers relay their outboxes to their streams, offers applies the
//! streams' partitions. The effects are the feeds' (offers withdrawn once,
//! revision r2), the streams hold every event once and in order, across a
//! relay that lost its stored position, a NATS server that went away, and
//! replicas of offers that share and take over partitions.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use agora_platform::events::{partition_of, subject};
use agora_testing::{http_get, nats::NatsServer, wait_until};

use crate::common::*;

agora_testing::on_both_backends!(events_travel_on_jetstream_and_apply_once);

const BOUND: Duration = Duration::from_secs(30);

/// Waits until every one of `products` has its offers withdrawn, then
/// checks each was withdrawn once (revision r2).
async fn assert_withdrawn_once(s: &mut System, products: &[String]) {
    let probe = s.offers.clone();
    let all = wait_until(BOUND, || {
        let (mut probe, products) = (probe.clone(), products.to_vec());
        async move {
            for product_id in products {
                let request = pb::ListOffersRequest {
                    product_id,
                    state: pb::OfferState::Active.into(),
                    ..Default::default()
                };
                if !probe.list_offers(request).await.unwrap().into_inner().offers.is_empty() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    assert!(all, "not every discontinued product's offers were withdrawn");
    for product in products {
        let withdrawn = s.offers_of(product, pb::OfferState::Withdrawn).await;
        assert_eq!(withdrawn.len(), 1, "{product}");
        assert_eq!(withdrawn[0].etag, "r2", "an offer of {product} was withdrawn more than once");
    }
}

/// `n` products on sale, each with one offer.
async fn products_with_offers(s: &mut System, n: usize) -> Vec<String> {
    let mut products = Vec::new();
    for _ in 0..n {
        let product = s.product().await;
        s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap();
        products.push(product);
    }
    products
}

/// Every message of the catalog's stream: (its subject, the outbox
/// sequence it carries, its message id).
async fn catalog_stream(nats: &NatsServer) -> Vec<(String, i64, String)> {
    let js = nats.jetstream().await;
    let mut stream = js.get_stream("AGORA_CATALOG").await.expect("the catalog's stream");
    let state = stream.info().await.unwrap().state.clone();
    let mut messages = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let message = stream.get_raw_message(seq).await.unwrap();
        let header =
            |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let sequence = header("Agora-Sequence").parse().unwrap();
        messages.push((message.subject.to_string(), sequence, header("Nats-Msg-Id")));
    }
    messages
}

/// The catalog's outbox: each event's sequence and the product it is about.
async fn catalog_outbox(s: &System) -> Vec<(i64, String)> {
    let db = s.catalog_db.open();
    let rows =
        db.query("SELECT sequence, payload FROM outbox_events ORDER BY sequence").fetch_all().await.unwrap();
    rows.iter()
        .map(|r| {
            let payload: String = r.get("payload").unwrap();
            let json: serde_json::Value = serde_json::from_str(&payload).unwrap();
            let key = json["data"]["id"].as_str().or(json["data"]["product_id"].as_str()).unwrap().to_owned();
            (r.get("sequence").unwrap(), key)
        })
        .collect()
}

/// The stream holds the outbox: every event once, in order, each on its
/// product's partition, with its message id.
async fn assert_stream_is_the_outbox(s: &System, nats: &NatsServer) {
    let outbox = catalog_outbox(s).await;
    let relayed = wait_until(BOUND, || async { catalog_stream(nats).await.len() >= outbox.len() }).await;
    assert!(relayed, "the relay did not publish the whole outbox");
    let stream = catalog_stream(nats).await;
    assert_eq!(stream.len(), outbox.len(), "each event once");
    for ((subject_of, sequence, id), (expected, key)) in stream.iter().zip(&outbox) {
        assert_eq!(sequence, expected, "in the outbox's order");
        assert_eq!(*subject_of, subject("catalog", partition_of(key, 8)));
        assert_eq!(*id, format!("catalog-{sequence}"));
    }
}

async fn events_travel_on_jetstream_and_apply_once(db: TestDatabase) {
    let Some(nats) = NatsServer::start() else { return };
    let mut s = start_on(db, nats.transport()).await;
    let products = products_with_offers(&mut s, 12).await;
    for product in &products[..8] {
        s.discontinue(product).await;
    }
    assert_withdrawn_once(&mut s, &products[..8]).await;
    assert_eq!(s.offers_of(&products[8], pb::OfferState::Active).await.len(), 1, "the others keep theirs");
    assert_stream_is_the_outbox(&s, &nats).await;

    // Customers travel the same way: a deleted customer's offers go.
    let ada = s.customer("ada@example.com").await;
    let personal = s.offers.create_offer(create(offer(&products[9], &ada, 20))).await.unwrap().into_inner();
    s.customers
        .delete_customer(customers_pb::DeleteCustomerRequest { customer_id: ada, etag: String::new() })
        .await
        .unwrap();
    let probe = s.offers.clone();
    let offer_id = personal.offer.unwrap().offer_id;
    let gone = wait_until(BOUND, || {
        let (mut probe, offer_id) = (probe.clone(), offer_id.clone());
        async move {
            let offer = probe.get_offer(pb::GetOfferRequest { offer_id }).await.unwrap().into_inner().offer;
            offer.is_some_and(|o| o.state == pb::OfferState::Withdrawn as i32)
        }
    })
    .await;
    assert!(gone, "the deleted customer's offer was not withdrawn");

    let metrics = http_get(s.offers_server.admin_addr, "/metrics").await;
    let owned = (0..8)
        .filter(|p| {
            metrics.contains(&format!("agora_events_partition_owned{{feed=\"catalog\",partition=\"{p}\"}} 1"))
        })
        .count();
    assert_eq!(owned, 8, "one replica applies every partition: {metrics}");
    assert!(metrics.contains("agora_events_duplicates_total{feed=\"catalog\"} 0"), "{metrics}");
    let catalog = http_get(s.catalog_server.as_ref().unwrap().admin_addr, "/metrics").await;
    assert!(catalog.contains("agora_events_relay_leader{stream=\"AGORA_CATALOG\"} 1"), "{catalog}");
    assert!(catalog.contains("agora_events_relay_lag_events{stream=\"AGORA_CATALOG\"} 0"), "{catalog}");
}

/// The relay published but its position was not stored (it died between
/// JetStream's acknowledgement and its commit): the restarted relay goes
/// on from the stream's tail, and publishes no event twice.
#[tokio::test]
async fn a_relay_that_lost_its_position_goes_on_from_the_streams_tail() {
    let Some(nats) = NatsServer::start() else { return };
    let mut s = start_on(TestDatabase::sqlite(), nats.transport()).await;
    let products = products_with_offers(&mut s, 6).await;
    assert_stream_is_the_outbox(&s, &nats).await;
    s.catalog_db.execute("UPDATE outbox_relay SET relayed_through = 0").await;
    s.restart_catalog().await;
    for product in &products {
        s.discontinue(product).await;
    }
    assert_withdrawn_once(&mut s, &products).await;
    assert_stream_is_the_outbox(&s, &nats).await;
}

/// NATS goes away under writes: the catalog keeps taking them (its outbox
/// holds the events), and once NATS is back the relay catches up and
/// offers applies every event once.
#[tokio::test]
async fn writes_go_on_while_nats_is_down_and_every_event_arrives_once() {
    let Some(mut nats) = NatsServer::start() else { return };
    let mut s = start_on(TestDatabase::sqlite(), nats.transport()).await;
    let products = products_with_offers(&mut s, 10).await;
    assert_stream_is_the_outbox(&s, &nats).await;
    nats.kill();
    for product in &products {
        s.discontinue(product).await;
    }
    let catalog_admin = s.catalog_server.as_ref().unwrap().admin_addr;
    // The lag shows what waits in the outbox.
    let behind = wait_until(BOUND, || async {
        http_get(catalog_admin, "/metrics")
            .await
            .contains("agora_events_relay_lag_events{stream=\"AGORA_CATALOG\"} 10")
    })
    .await;
    assert!(behind, "the relay's lag does not show the 10 events waiting");
    nats.start_again();
    assert_withdrawn_once(&mut s, &products).await;
    assert_stream_is_the_outbox(&s, &nats).await;
    let caught_up = wait_until(BOUND, || async {
        http_get(catalog_admin, "/metrics")
            .await
            .contains("agora_events_relay_lag_events{stream=\"AGORA_CATALOG\"} 0")
    })
    .await;
    assert!(caught_up, "the relay's lag did not return to 0");
}

/// Three replicas of offers on one PostgreSQL database share the catalog
/// stream's 8 partitions: each partition applied by exactly one replica,
/// 3, 3 and 2 each. One replica stops: the other two hold all 8 within
/// 2 s, and never does a partition have two.
#[tokio::test]
async fn replicas_share_the_partitions_and_take_over_within_two_seconds() {
    use sqlx::{Connection as _, Row as _};
    let Some(db) = TestDatabase::postgres().await else { return };
    let Some(nats) = NatsServer::start() else { return };
    // Each replica named in PostgreSQL (its locks show who holds them):
    // in one process the replicas share one metrics registry.
    let named = |db: &TestDatabase, name: &str| {
        let url = db.url();
        let joint = if url.expose().contains('?') { '&' } else { '?' };
        let mut settings = agora_testing::settings("offers", db);
        settings.database_url = agora_platform::config::DatabaseUrl::new(format!(
            "{}{joint}application_name={name}",
            url.expose()
        ));
        settings
    };
    let mut s = start_on(db, nats.transport()).await;
    let mut replicas = Vec::new();
    for i in 0..3 {
        let settings =
            agora_platform::Settings { events: s.events.clone(), ..named(&s.offers_db, &format!("r{i}")) };
        let offers = offers_settings(s.catalog_proxy.addr, s.customers_proxy.addr);
        replicas.push(TestServer::start(agora_offers::build_with(settings, offers).await.unwrap()).await);
    }
    // The system's own offers leaves: the three named replicas share.
    let first = std::mem::replace(&mut s.offers_server, replicas.pop().unwrap());
    s.offers = pb::offer_service_client::OfferServiceClient::new(s.offers_server.channel.clone());
    drop(first);
    let mut admin = sqlx::PgConnection::connect(s.offers_db.url().expose()).await.unwrap();
    let mut owners = async || -> BTreeMap<u32, Vec<String>> {
        let mut owners = BTreeMap::new();
        for p in 0..8u32 {
            let holders: Vec<String> = sqlx::query(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.objid = (hashtext($1)::bigint & 4294967295)::oid",
            )
            .bind(format!("agora-partition:catalog:{p}"))
            .fetch_all(&mut admin)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect();
            owners.insert(p, holders);
        }
        owners
    };
    let mut balanced = false;
    for _ in 0..1500 {
        let owners = owners().await;
        assert!(owners.values().all(|o| o.len() <= 1), "a partition with two replicas: {owners:?}");
        let mut shares: BTreeMap<&String, u32> = BTreeMap::new();
        for o in owners.values().flatten() {
            *shares.entry(o).or_default() += 1;
        }
        let mut shares: Vec<u32> = shares.into_values().collect();
        shares.sort();
        if owners.values().all(|o| o.len() == 1) && shares == [2, 3, 3] {
            balanced = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(balanced, "the partitions were not shared 3, 3, 2: {:?}", owners().await);

    let stopped = Instant::now();
    drop(replicas.remove(0));
    let mut taken_over = None;
    for _ in 0..200 {
        let owners = owners().await;
        assert!(owners.values().all(|o| o.len() <= 1), "a partition with two replicas: {owners:?}");
        if owners.values().all(|o| o.len() == 1) && owners.values().flatten().all(|o| o != "r0") {
            taken_over = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken_over = taken_over.expect("the stopped replica's partitions were not taken over");
    eprintln!("partitions taken over after {taken_over:?}");
    assert!(taken_over < Duration::from_secs(2), "taken over after {taken_over:?}");

    let products = products_with_offers(&mut s, 8).await;
    for product in &products {
        s.discontinue(product).await;
    }
    assert_withdrawn_once(&mut s, &products).await;
}

/// NATS out of reach at start: the service does not start, and says where
/// it looked.
#[tokio::test]
async fn a_service_whose_nats_does_not_answer_stops_at_start_naming_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let db = TestDatabase::sqlite();
    let mut settings = agora_testing::settings("catalog", &db);
    let agora_platform::events::Transport::JetStream(mut nats) = NatsServer::transport_at(port) else {
        unreachable!("a JetStream transport")
    };
    nats.connect_timeout = Duration::from_millis(500);
    settings.events = agora_platform::events::Transport::JetStream(nats);
    let started = Instant::now();
    let err = match agora_catalog::build(settings).await {
        Ok(_) => panic!("the catalog started without NATS"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains(&format!("connecting to NATS at nats://127.0.0.1:{port}")), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "it took {:?}", started.elapsed());
}

/// Offers cannot apply the catalog's events for a while (the table they
/// write is renamed away under it): the messages read then are read again
/// once it can (redelivered, counted), and applied once.
#[tokio::test]
async fn messages_read_and_not_applied_are_redelivered_and_applied_once() {
    let Some(nats) = NatsServer::start() else { return };
    let mut s = start_on(TestDatabase::sqlite(), nats.transport()).await;
    let products = products_with_offers(&mut s, 8).await;
    s.offers_db.execute("ALTER TABLE catalog_products RENAME TO catalog_products_away").await;
    for product in &products {
        s.discontinue(product).await;
    }
    let admin = s.offers_server.admin_addr;
    let failed = wait_until(BOUND, || async {
        let metrics = http_get(admin, "/metrics").await;
        metrics.contains("agora_events_partition_interruptions_total{feed=\"catalog\"}")
            && !metrics.contains("agora_events_partition_interruptions_total{feed=\"catalog\"} 0")
    })
    .await;
    assert!(failed, "offers never failed to apply an event");
    s.offers_db.execute("ALTER TABLE catalog_products_away RENAME TO catalog_products").await;
    assert_withdrawn_once(&mut s, &products).await;
    let metrics = http_get(admin, "/metrics").await;
    let redelivered = metrics
        .lines()
        .find_map(|l| l.strip_prefix("agora_events_redelivered_total{feed=\"catalog\"} "))
        .and_then(|n| n.parse::<f64>().ok());
    assert!(redelivered.is_some_and(|n| n >= 1.0), "no message was read again: {redelivered:?}");
    assert!(metrics.contains("agora_events_duplicates_total{feed=\"catalog\"} 0"), "{metrics}");
}
