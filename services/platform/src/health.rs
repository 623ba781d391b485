//! gRPC health (`grpc.health.v1`) that tells the truth.
//!
//! Every service name and the whole server ("") start NOT_SERVING, turn
//! SERVING once migrations ran and the database answers, follow a periodic
//! database probe, and turn NOT_SERVING for good when shutdown begins.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tonic_health::{ServingStatus, server::HealthReporter};

/// The health of one server: the reporter behind `grpc.health.v1.Health` and
/// the facts it reports.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    /// "" and every gRPC service the server offers.
    names: Arc<[String]>,
    state: Arc<State>,
}

struct State {
    /// Migrations ran: the server may serve once the database answers.
    started: AtomicBool,
    /// Shutdown began: nothing turns health back to SERVING.
    draining: AtomicBool,
    /// What was last reported, to log changes only.
    serving: AtomicBool,
}

impl Health {
    /// Health for `services`, all NOT_SERVING.
    pub async fn new(reporter: HealthReporter, services: &[&str]) -> Self {
        let names: Arc<[String]> =
            std::iter::once(String::new()).chain(services.iter().map(|s| s.to_string())).collect();
        let health = Self {
            reporter,
            names,
            state: Arc::new(State {
                started: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                serving: AtomicBool::new(false),
            }),
        };
        health.report(false).await;
        health
    }

    /// Migrations are done; from now on the probe decides.
    pub fn mark_started(&self) {
        self.state.started.store(true, Ordering::SeqCst);
    }

    /// Whether application calls may be admitted yet.
    pub fn is_started(&self) -> bool {
        self.state.started.load(Ordering::SeqCst)
    }

    /// Whether health reports SERVING now.
    pub fn is_serving(&self) -> bool {
        self.state.serving.load(Ordering::SeqCst)
    }

    /// The result of a database probe.
    pub async fn database_answered(&self, ok: bool) {
        let serving = ok && self.is_started() && !self.state.draining.load(Ordering::SeqCst);
        self.report(serving).await;
    }

    /// Shutdown began: NOT_SERVING from now on.
    pub async fn drain(&self) {
        self.state.draining.store(true, Ordering::SeqCst);
        self.report(false).await;
    }

    async fn report(&self, serving: bool) {
        let before = self.state.serving.swap(serving, Ordering::SeqCst);
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        for name in self.names.iter() {
            self.reporter.set_service_status(name, status).await;
        }
        metrics::gauge!("agora_health_serving").set(if serving { 1.0 } else { 0.0 });
        if before != serving {
            tracing::info!(status = ?status, "health changed");
        }
    }
}
