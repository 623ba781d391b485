//! The life of a service process, in the order of the module above: start,
//! serve, drain, stop.

use std::time::Duration;

use tokio::task::JoinHandle;

use super::{Application, Shutdown, Task, grpc};
use crate::{
    db::{Backend, Database, Migrations},
    health::Health,
    metrics,
};

/// How long stopped background tasks may take to end.
const TASKS_BOUND: Duration = Duration::from_secs(5);

pub(super) async fn run(app: Application) -> anyhow::Result<()> {
    let Application { spec, settings, database, migrations, grpc, admin_listener, mut services } = app;
    let grpc_addr = grpc.listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    let shutdown = services.shutdown();
    let tasks = std::mem::take(&mut services.tasks);
    tracing::info!(
        service = spec.name,
        %grpc_addr,
        %admin_addr,
        database = ?settings.database_url,
        tls = grpc.tls.is_some(),
        "starting"
    );
    for missing in settings.security.missing() {
        tracing::warn!(
            switched_off = missing,
            "AGORA_INSECURE=1: running without {missing}; never do this where others can reach the port"
        );
        ::metrics::gauge!("agora_insecure", "switched_off" => missing).set(1.0);
    }

    // Signals start the same shutdown a test triggers by hand.
    let signal_shutdown = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        signal_shutdown.trigger();
    });

    // Health NOT_SERVING from the first answer; start-up runs beside the
    // server: migrations, background tasks, then SERVING.
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, &services.names.iter().map(String::as_str).collect::<Vec<_>>()).await;

    // Admin HTTP: /metrics, and the same health in plaintext for probes,
    // until the very end.
    let (admin_stop_tx, admin_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(metrics::serve_admin(admin_listener, health_service.clone(), async move {
        let _ = admin_stop_rx.await;
    }));
    let startup = tokio::spawn(start(
        database.clone(),
        migrations,
        tasks,
        health.clone(),
        settings.db_probe_interval,
        shutdown.clone(),
    ));

    let served = serve_until_drained(services, &settings, &health, health_service, grpc, &shutdown).await;

    // The rest of the mirror of start-up: the background tasks (told to
    // stop when shutdown began) end, then the admin server, then the
    // database.
    match tokio::time::timeout(TASKS_BOUND, startup).await {
        Ok(Ok(running)) => stop_tasks(running).await,
        Ok(Err(join)) => tracing::error!(error = %join, "start-up ended abnormally"),
        Err(_) => tracing::warn!("start-up still running at shutdown; abandoned"),
    }
    let _ = admin_stop_tx.send(());
    let _ = admin.await;
    database.close().await;
    tracing::info!(service = spec.name, "stopped");
    served
}

/// Serves until shutdown begins, then: NOT_SERVING, the drain delay so load
/// balancers notice, the listener closes, and the calls still open get
/// `shutdown_timeout` to end before they are cut.
async fn serve_until_drained(
    services: super::Services,
    settings: &crate::Settings,
    health: &Health,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    listening: grpc::Listening,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
    let drain = {
        let (shutdown, health, delay) = (shutdown.clone(), health.clone(), settings.drain_delay);
        async move {
            shutdown.wait().await;
            health.drain().await;
            tracing::info!(drain_delay_ms = delay.as_millis() as u64, "shutdown: draining");
            tokio::time::sleep(delay).await;
            let _ = drained_tx.send(());
        }
    };
    let bound = settings.shutdown_timeout;
    tokio::select! {
        result = grpc::serve(services, settings, health, health_service, listening, drain) => result,
        _ = async move {
            // Never fires before the drain ended.
            if drained_rx.await.is_err() { std::future::pending::<()>().await }
            tokio::time::sleep(bound).await;
        } => {
            tracing::warn!(timeout_ms = bound.as_millis() as u64, "shutdown: calls still open at the bound; closing them");
            Ok(())
        }
    }
}

/// What start-up left running: the background tasks and the database probe.
struct Running {
    tasks: Vec<(&'static str, JoinHandle<()>)>,
    probe: Option<JoinHandle<()>>,
}

/// Start-up after the bind: the probe that keeps health true (and closes
/// the database's breaker when the database answers), migrations (retried
/// while the database is out of reach, at once when it answers again),
/// background tasks, then SERVING.
async fn start(
    database: Database,
    migrations: Migrations,
    tasks: Vec<Task>,
    health: Health,
    probe_interval: Duration,
    shutdown: Shutdown,
) -> Running {
    // Health stays NOT_SERVING whatever the probe finds until start-up is
    // done; the probe runs from the first, so that a breaker opened by the
    // migrations' failures closes when the database answers.
    //
    // A new SQLite file is switched to WAL by the first connection that
    // opens it, which takes the file's lock for a moment; connections that
    // open beside it (the probe's, the migrations') could then fail with
    // "database is locked" without waiting. So on SQLite one connection
    // opens first, alone: the file is local, this takes a millisecond.
    if database.backend() == Backend::Sqlite {
        let _ = tokio::time::timeout(probe_interval, database.ping()).await;
    }
    let probe = tokio::spawn(probe(database.clone(), health.clone(), probe_interval, shutdown.clone()));
    let mut running = Running { tasks: Vec::new(), probe: Some(probe) };
    let mut backoff = Duration::from_millis(100);
    loop {
        if shutdown.is_triggered() {
            return running;
        }
        match database.migrate(&migrations).await {
            Ok(()) => break,
            Err(err) => {
                tracing::warn!(
                    error = format!("{err:#}"),
                    retry_in_ms = backoff.as_millis() as u64,
                    "database not ready"
                );
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = database.back() => {}
                    _ = shutdown.wait() => return running,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    for task in tasks {
        running.tasks.push((task.name, tokio::spawn((task.run)(shutdown.clone()))));
    }
    health.mark_started();
    // The migrations just ran: the database answers.
    health.database_answered(true).await;
    running
}

async fn stop_tasks(running: Running) {
    for (name, task) in running.tasks {
        if tokio::time::timeout(TASKS_BOUND, task).await.is_err() {
            tracing::warn!(task = name, "background task still running at shutdown; abandoned");
        }
    }
    if let Some(probe) = running.probe {
        probe.abort();
    }
}

/// Probes the database and reports the answers to health, and to the
/// database's breaker, until stopped: every `interval`, and more often
/// while the database is known to be out of reach.
async fn probe(database: Database, health: Health, interval: Duration, stop: Shutdown) {
    // A probe that hangs counts as a failure: a database that does not
    // answer within the interval is not serving.
    let probe_timeout = interval.max(Duration::from_millis(500));
    // The first failure of an outage is a warning; the probes after it,
    // ten a second while it lasts, are not worth one each.
    let mut answered = true;
    loop {
        let failure = match tokio::time::timeout(probe_timeout, database.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => Some(err.to_string()),
            Err(_) => {
                database.probe_timed_out();
                Some("no answer within the probe's timeout".to_owned())
            }
        };
        let ok = failure.is_none();
        match failure {
            Some(error) if answered => tracing::warn!(%error, "database probe failed"),
            Some(error) => tracing::debug!(%error, "database probe failed"),
            None => {}
        }
        answered = ok;
        health.database_answered(ok).await;
        let (size, idle) = database.pool_stats();
        ::metrics::gauge!("agora_db_pool_connections").set(size as f64);
        ::metrics::gauge!("agora_db_pool_idle_connections").set(idle as f64);
        tokio::select! {
            _ = tokio::time::sleep(database.next_probe(interval)) => {}
            _ = database.lost() => {}
            _ = stop.wait() => return,
        }
    }
}

async fn wait_for_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
