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
