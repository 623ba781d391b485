//! The deadline of the call a task serves: set by the server's deadline
//! layer ([`crate::middleware::DeadlineLayer`]), read by whatever works for
//! the call (the database's waits, upstream questions).

use std::time::Duration;

use tokio::time::Instant;

/// When a call must be answered by. The server puts it in every request's
/// extensions; a handler hands it on, as a value, to whatever works for the
/// call: an upstream question ([`crate::upstream::Upstream::ask`]) puts it
/// in its own request's extensions, where the client stack finds it. Being
/// a value, it survives `tokio::spawn` and any other hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// Time left before the deadline, zero once it passed.
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The deadline of a request the server is serving.
    pub fn of<T>(request: &tonic::Request<T>) -> Option<Self> {
        request.extensions().get::<Self>().copied()
    }

    /// The deadline of the call this task is serving, if it serves one.
    /// The database reads it to bound its waits for a connection, which
    /// no handler passes it: a task-local set by [`DeadlineLayer`](crate::middleware::DeadlineLayer) around
    /// the handler, so that every repository function need not carry it.
    /// Work a call spawns (a detached read) runs without it.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|deadline| *deadline).ok()
    }

    /// Runs `work` as a call with this deadline: [`Deadline::current`]
    /// inside it is this one.
    pub fn scope<F: Future>(self, work: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, work)
    }
}

tokio::task_local! {
    /// The deadline of the call the task serves (see [`Deadline::current`]).
    static CURRENT: Deadline;
}
