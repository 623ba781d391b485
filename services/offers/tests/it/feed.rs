//! Offers reacting to its upstreams' change feeds: discontinued products
//! and deleted customers take their offers with them, exactly once, across
//! crashes of offers and outages of the catalog.

use std::time::Duration;

use crate::common::*;
use agora_testing::{http_get, wait_until};

agora_testing::on_both_backends!(
    discontinuing_a_product_withdraws_its_offers,
    deleting_a_customer_withdraws_their_personal_offers,
    a_consumer_killed_in_a_burst_resumes_and_applies_every_event_once,
);

async fn discontinuing_a_product_withdraws_its_offers(db: TestDatabase) {
    let mut s = start(db).await;
    let screen = s.product().await;
    let lamp = s.product().await;
    let ada = s.customer("ada@example.com").await;
    for o in [offer(&screen, "", 10), offer(&screen, &ada, 20), offer(&lamp, "", 30)] {
        s.offers.create_offer(create(o)).await.unwrap();
    }
    s.discontinue(&screen).await;
    let mut probe = s.offers.clone();
    let screen_id = screen.clone();
    let withdrawn = wait_until(BOUND, || {
        let (mut probe, screen) = (probe.clone(), screen_id.clone());
        async move {
            let request = pb::ListOffersRequest {
                product_id: screen,
                state: pb::OfferState::Active.into(),
                ..Default::default()
            };
            probe.list_offers(request).await.unwrap().into_inner().offers.is_empty()
        }
    })
    .await;
    assert!(withdrawn, "the discontinued product's offers were not withdrawn");
    assert_eq!(s.offers_of(&screen, pb::OfferState::Withdrawn).await.len(), 2);
    assert_eq!(s.offers_of(&lamp, pb::OfferState::Active).await.len(), 1, "other products keep their offers");
    let available = probe.list_available_offers(pb::ListAvailableOffersRequest::default()).await.unwrap();
    assert_eq!(available.into_inner().offers.len(), 1);

    let metrics = http_get(s.offers_server.admin_addr, "/metrics").await;
    assert!(metrics.contains(r#"agora_feed_lag_events{feed="catalog"}"#), "{metrics}");
    assert!(metrics.contains(r#"agora_feed_lag_seconds{feed="catalog"}"#));
}

async fn deleting_a_customer_withdraws_their_personal_offers(db: TestDatabase) {
    let mut s = start(db).await;
    let screen = s.product().await;
    let ada = s.customer("ada@example.com").await;
    let bob = s.customer("bob@example.com").await;
    for o in
        [offer(&screen, "", 10), offer(&screen, &ada, 20), offer(&screen, &ada, 21), offer(&screen, &bob, 30)]
    {
        s.offers.create_offer(create(o)).await.unwrap();
    }
    s.customers
        .delete_customer(customers_pb::DeleteCustomerRequest {
            customer_id: ada.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let mut probe = s.offers.clone();
    let ada_id = ada.clone();
    let gone = wait_until(BOUND, || {
        let (mut probe, ada) = (probe.clone(), ada_id.clone());
        async move {
            let request = pb::ListAvailableOffersRequest { customer_id: ada, product_id: String::new() };
            probe.list_available_offers(request).await.unwrap().into_inner().offers.len() == 1
        }
    })
    .await;
    assert!(gone, "the deleted customer's personal offers are still available");
    let active = s.offers_of(&screen, pb::OfferState::Active).await;
    let mut owners: Vec<_> = active.iter().map(|o| o.customer_id.clone()).collect();
    owners.sort();
    assert_eq!(owners, [String::new(), bob], "offers for everyone and for others stay");
    let request = pb::ListAvailableOffersRequest { customer_id: ada, product_id: String::new() };
    assert!(
        probe
            .list_available_offers(request)
            .await
            .unwrap()
            .into_inner()
            .offers
            .iter()
            .all(|o| o.customer_id.is_empty())
    );
}

/// Offers dies while a burst of discontinuations streams in; the new
/// process resumes from its stored cursor. Every offer ends withdrawn, and
/// withdrawn once: its revision went from 1 to 2, never further.
async fn a_consumer_killed_in_a_burst_resumes_and_applies_every_event_once(db: TestDatabase) {
    let mut s = start(db).await;
    let mut products = Vec::new();
    for _ in 0..20 {
        let product = s.product().await;
        s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap();
        products.push(product);
    }
    for product in &products {
        s.discontinue(product).await;
    }
    // Kill offers as soon as it has applied some of the burst.
    let mut probe = s.offers.clone();
    let some = wait_until(BOUND, || {
        let mut probe = probe.clone();
        async move {
            let request = pb::ListOffersRequest {
                state: pb::OfferState::Withdrawn.into(),
                page_size: 1000,
                ..Default::default()
            };
            !probe.list_offers(request).await.unwrap().into_inner().offers.is_empty()
        }
    })
    .await;
    assert!(some);
    s.restart_offers().await;
    probe = s.offers.clone();
    let all = wait_until(BOUND, || {
        let mut probe = probe.clone();
        async move {
            let request =
                pb::ListOffersRequest { state: pb::OfferState::Active.into(), ..Default::default() };
            probe.list_offers(request).await.unwrap().into_inner().offers.is_empty()
        }
    })
    .await;
    assert!(all, "not every offer was withdrawn after the restart");
    let withdrawn = probe
        .list_offers(pb::ListOffersRequest { page_size: 1000, ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .offers;
    assert_eq!(withdrawn.len(), 20);
    for o in withdrawn {
        assert_eq!(o.etag, "r2", "offer {} was withdrawn more than once", o.offer_id);
    }
}

/// The catalog goes away and comes back; changes made after its return
/// reach offers through a reconnected feed.
#[tokio::test]
async fn the_consumer_reconnects_and_catches_up_after_the_catalog_returns() {
    let mut s = start(TestDatabase::sqlite()).await;
    let screen = s.product().await;
    s.offers.create_offer(create(offer(&screen, "", 10))).await.unwrap();
    s.restart_catalog().await;
    s.discontinue(&screen).await;
    let probe = s.offers.clone();
    let caught_up = wait_until(Duration::from_secs(20), || {
        let (mut probe, screen) = (probe.clone(), screen.clone());
        async move {
            let request = pb::ListOffersRequest {
                product_id: screen,
                state: pb::OfferState::Active.into(),
                ..Default::default()
            };
            probe.list_offers(request).await.unwrap().into_inner().offers.is_empty()
        }
    })
    .await;
    assert!(caught_up, "the consumer did not catch up after the catalog returned");
}

/// With two replicas of offers on one PostgreSQL database, each feed is
/// applied by one of them at a time (it holds the feed's advisory lock);
/// when that replica dies, the other takes the feed over.
#[tokio::test]
async fn on_postgres_one_replica_applies_a_feed_and_another_takes_over() {
    use sqlx::{Connection as _, Row as _};
    let Some(db) = TestDatabase::postgres().await else { return };
    // The replica's name, as PostgreSQL shows it in pg_stat_activity.
    let named = |url: &agora_platform::config::DatabaseUrl, name: &str| {
        let url = url.expose();
        let joint = if url.contains('?') { '&' } else { '?' };
        agora_platform::config::DatabaseUrl::new(format!("{url}{joint}application_name={name}"))
    };
    let mut s =
        start_with(db, |settings, _| settings.database_url = named(&settings.database_url, "offers-a")).await;
    let mut settings = agora_testing::settings("offers", &s.offers_db);
    settings.database_url = named(&settings.database_url, "offers-b");
    let replica_b = TestServer::start(
        agora_offers::build_with(settings, offers_settings(s.catalog_proxy.addr, s.customers_proxy.addr))
            .await
            .unwrap(),
    )
    .await;

    let mut admin = sqlx::PgConnection::connect(s.offers_db.url().expose()).await.unwrap();
    let holder_of_catalog_feed = async |admin: &mut sqlx::PgConnection| -> Vec<String> {
        sqlx::query(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.objid = (hashtext('agora-feed:catalog')::bigint & 4294967295)::oid",
        )
        .fetch_all(admin)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect()
    };
    let mut holders = Vec::new();
    for _ in 0..500 {
        holders = holder_of_catalog_feed(&mut admin).await;
        if !holders.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(holders.len(), 1, "exactly one replica holds the catalog feed: {holders:?}");
    let first = holders[0].clone();

    // The holder dies; the other replica takes over within a bound.
    let survivor = if first == "offers-a" {
        s.offers = pb::offer_service_client::OfferServiceClient::new(replica_b.channel.clone());
        let old = std::mem::replace(&mut s.offers_server, replica_b);
        drop(old);
        "offers-b"
    } else {
        drop(replica_b);
        "offers-a"
    };
    let mut taken_over = false;
    for _ in 0..500 {
        if holder_of_catalog_feed(&mut admin).await == [survivor] {
            taken_over = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(taken_over, "{survivor} never took the catalog feed over");

    let screen = s.product().await;
    s.offers.create_offer(create(offer(&screen, "", 10))).await.unwrap();
    s.discontinue(&screen).await;
    let probe = s.offers.clone();
    let applied = wait_until(BOUND, || {
        let (mut probe, screen) = (probe.clone(), screen.clone());
        async move {
            let request = pb::ListOffersRequest {
                product_id: screen,
                state: pb::OfferState::Active.into(),
                ..Default::default()
            };
            probe.list_offers(request).await.unwrap().into_inner().offers.is_empty()
        }
    })
    .await;
    assert!(applied, "the surviving replica does not apply the feed");
}

/// Effects that write a row per applied event, naming the replica that
/// applied it: an event applied twice shows as two rows.
struct Recorder(&'static str);

#[tonic::async_trait]
impl agora_platform::feed::Effects for Recorder {
    type Change = String;

    async fn apply(
        &self,
        uow: &mut agora_platform::UnitOfWork,
        product_id: String,
    ) -> Result<(), agora_platform::Error> {
        uow.query("INSERT INTO applied (replica, product_id) VALUES ($1, $2)")
            .bind(self.0)
            .bind(product_id)
            .execute()
            .await?;
        Ok(())
    }
}

impl agora_platform::feed::Translate<catalog_pb::catalog_event::Kind> for Recorder {
    fn translate(&self, event: catalog_pb::catalog_event::Kind) -> Option<String> {
        let catalog_pb::catalog_event::Kind::ProductCreated(created) = event else { return None };
        created.product.map(|p| p.product_id)
    }
}

/// The rows of `applied`: (replica, product) in the order applied.
async fn applied(db: &agora_platform::Database) -> Vec<(String, String)> {
    let rows = db.query("SELECT replica, product_id FROM applied ORDER BY seq").fetch_all().await.unwrap();
    rows.iter().map(|r| (r.get("replica").unwrap(), r.get("product_id").unwrap())).collect()
}

/// The PostgreSQL sessions that hold (or, `granted` false, wait for) the
/// lock of the feed `name` in this test's database.
async fn lock_sessions(db: &agora_platform::Database, name: &str, granted: bool) -> Vec<i64> {
    let rows = db
        .query(
            "SELECT pid::bigint AS pid FROM pg_locks WHERE locktype = 'advisory' AND granted = $2 \
             AND objid = (hashtext($1)::bigint & 4294967295)::oid \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .bind(format!("agora-feed:{name}"))
        .bind(granted)
        .fetch_all()
        .await
        .unwrap();
    rows.iter().map(|r| r.get("pid").unwrap()).collect()
}

/// Two replicas follow one feed on one PostgreSQL database: one leads,
/// the other waits for the lock on one session of its own. When the
/// leader's lock session is ended (as a PostgreSQL restart, a failover or
/// an operator would end it), the old leader stops following and the
/// other takes over; no event is applied twice, none is lost.
#[tokio::test]
async fn a_lost_lock_hands_the_feed_over_and_no_event_is_applied_twice() {
    let Some(db) = TestDatabase::postgres().await else { return };
    let logs = agora_testing::Captured::install(tracing::Level::INFO);
    let mut s = start(db).await;
    s.offers_db
        .execute("CREATE TABLE applied (seq BIGSERIAL PRIMARY KEY, replica TEXT NOT NULL, product_id TEXT NOT NULL)")
        .await;
    let probe = s.offers_db.open();
    let catalog = s.catalog_server.as_ref().expect("the catalog runs");
    let replica = |name: &'static str| {
        let client = catalog_pb::catalog_service_client::CatalogServiceClient::new(
            catalog.channel_of_service("offers"),
        );
        let feed = agora_platform::feed::Feed::new("leadership", move |after_sequence| {
            let mut client = client.clone();
            async move {
                let request = catalog_pb::WatchCatalogEventsRequest { after_sequence };
                client.watch_catalog_events(request).await.map(tonic::Response::into_inner)
            }
        });
        agora_platform::feed::consumer(feed, Recorder(name), s.offers_db.open()).spawn()
    };
    let first = replica("first");
    let lead_taken =
        wait_until(BOUND, || async { lock_sessions(&probe, "leadership", true).await.len() == 1 }).await;
    assert!(lead_taken, "the first replica did not take the lead");
    let second = replica("second");
    let waits =
        wait_until(BOUND, || async { lock_sessions(&probe, "leadership", false).await.len() == 1 }).await;
    assert!(waits, "the second replica does not wait for the lock");

    let mut products = Vec::new();
    for _ in 0..5 {
        products.push(s.product().await);
    }
    let all = |n: usize| {
        let probe = &probe;
        move || async move { applied(probe).await.len() >= n }
    };
    assert!(wait_until(BOUND, all(5)).await, "the leader did not apply the first events");
    assert!(applied(&probe).await.iter().all(|(replica, _)| replica == "first"));

    // The follower waits on one session: the same one across several
    // bounded waits (each a second), not a new connection each time.
    let waiting = lock_sessions(&probe, "leadership", false).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(lock_sessions(&probe, "leadership", false).await, waiting, "the follower reconnected");
    assert!(
        !logs.text().contains("slow statement"),
        "waiting for the lock is logged as slow: {}",
        logs.text()
    );

    // End the leader's lock session.
    let holder = lock_sessions(&probe, "leadership", true).await;
    assert_eq!(holder.len(), 1);
    probe.query("SELECT pg_terminate_backend($1::int)").bind(holder[0]).execute().await.unwrap();
    let noticed = wait_until(BOUND, || async { logs.text().contains("feed: lost the lead") }).await;
    assert!(noticed, "the old leader did not notice that it lost the lock");

    for _ in 0..5 {
        products.push(s.product().await);
    }
    assert!(wait_until(BOUND, all(10)).await, "the events after the hand-over were not applied");
    let rows = applied(&probe).await;
    let mut seen: Vec<&str> = rows.iter().map(|(_, p)| p.as_str()).collect();
    seen.sort();
    let mut want: Vec<&str> = products.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(seen, want, "every event exactly once: {rows:?}");
    assert!(rows[5..].iter().all(|(replica, _)| replica == "second"), "the follower took over: {rows:?}");
    assert_ne!(lock_sessions(&probe, "leadership", true).await, holder, "a new session leads");

    // With the upstream down, the leader keeps its lock, and its session,
    // while it retries: the outage is not handed from replica to replica.
    let leader = lock_sessions(&probe, "leadership", true).await;
    s.catalog_server.take().expect("the catalog runs").stop().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        lock_sessions(&probe, "leadership", true).await,
        leader,
        "the lead changed hands in an outage"
    );

    for (shutdown, task) in [first, second] {
        shutdown.trigger();
        task.await.unwrap();
    }
}
