//! Start-up is a sequence (database, migrations, background tasks,
//! SERVING), and a clean one is quiet: with its upstreams up, offers starts,
//! follows both feeds and serves without a single warning.

use agora_testing::{Captured, http_get, wait_until};

use crate::common::*;

agora_testing::on_both_backends!(a_clean_start_logs_no_warning);

async fn a_clean_start_logs_no_warning(db: TestDatabase) {
    let captured = Captured::install(tracing::Level::INFO);
    let s = start(db).await;
    let admin = s.offers_server.admin_addr;
    let following = wait_until(BOUND, || async move {
        let metrics = http_get(admin, "/metrics").await;
        ["catalog", "customers"]
            .iter()
            .all(|feed| metrics.contains(&format!("agora_feed_connected{{feed=\"{feed}\"}} 1")))
    })
    .await;
    assert!(following, "offers follows both feeds");
    let logs = captured.text();
    assert!(logs.contains("following the feed"), "the capture works: {logs}");
    let loud: Vec<&str> = logs.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
    assert!(loud.is_empty(), "a clean start logged warnings: {loud:#?}");
}

/// A resolver for which no name resolves, as a mistyped Service name.
#[derive(Debug)]
struct NoSuchHost;

impl agora_platform::upstream::discover::Resolve for NoSuchHost {
    fn resolve(
        &self,
        host: &str,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Vec<std::net::SocketAddr>>> + Send>> {
        let error = std::io::Error::other(format!("{host}: no such host"));
        Box::pin(std::future::ready(Err(error)))
    }
}

/// An upstream whose name resolves to nothing does not pass silently: a
/// WARN names it, the metrics show no replica and count the failures, and
/// the calls that need it fail fast with UNAVAILABLE naming it.
#[tokio::test]
async fn an_upstream_name_that_does_not_resolve_is_said_loudly() {
    let captured = Captured::install(tracing::Level::INFO);
    let mut s = start_with(TestDatabase::sqlite(), |_, offers| {
        offers.upstreams.catalog.addrs = vec!["https://catalog.example.invalid:50051".into()];
        offers.upstreams.catalog.resolver = std::sync::Arc::new(NoSuchHost);
    })
    .await;
    let admin = s.offers_server.admin_addr;
    let counted = wait_until(BOUND, || async move {
        let metrics = http_get(admin, "/metrics").await;
        metrics.contains(r#"agora_upstream_replicas{upstream="catalog"} 0"#)
            && metrics.contains(r#"agora_upstream_resolve_failures_total{upstream="catalog"}"#)
    })
    .await;
    assert!(counted, "{}", http_get(admin, "/metrics").await);
    let logs = captured.text();
    let warned = logs.lines().any(|l| {
        l.contains(" WARN ") && l.contains("does not resolve") && l.contains("catalog.example.invalid")
    });
    assert!(warned, "no warning names the name: {logs}");

    let product = s.product().await;
    let err = s.offers.create_offer(create(offer(&product, "", 10))).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert!(err.message().contains("catalog"), "{err:?}");
}
