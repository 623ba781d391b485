//! Background tasks and the shutdown signal they end on: the server runs
//! them ([`crate::server`]), and every part of the platform that works in
//! the background (change feeds, the outbox, the relay) is one.

use std::pin::Pin;

use tokio::{sync::watch, task::JoinHandle};

/// Starts shutdown from outside (a test, or the signal handler): health goes
/// NOT_SERVING, the drain delay passes, then the server stops.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub(crate) fn new() -> Self {
        Self { tx: watch::channel(false).0 }
    }

    /// Begins shutdown, as SIGTERM would.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once shutdown began. Long-running streams select on it so
    /// they end cleanly instead of holding the server open.
    pub async fn wait(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives in `self`, so the channel cannot close under us.
        let _ = rx.wait_for(|stopping| *stopping).await;
    }

    pub fn is_triggered(&self) -> bool {
        *self.tx.borrow()
    }
}

/// How a task runs: given the shutdown signal, the future that is the task.
type Run = Box<dyn FnOnce(Shutdown) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A background task of a service (a change-feed consumer, outbox
/// pruning): started once migrations ran, told to stop when shutdown
/// begins, and waited for (bounded) once the server stopped.
pub struct Task {
    pub(crate) name: &'static str,
    pub(crate) run: Run,
}

impl Task {
    /// A task named `name` (in logs): `run` gets the signal that it must
    /// end, and ends when it fires.
    pub fn new<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self { name, run: Box::new(move |stop| Box::pin(run(stop))) }
    }

    /// Runs the task on its own, outside a server, until the returned
    /// signal is triggered (for tests and tools).
    pub fn spawn(self) -> (Shutdown, JoinHandle<()>) {
        let shutdown = Shutdown::new();
        (shutdown.clone(), tokio::spawn((self.run)(shutdown)))
    }
}
