//! The database as a dependency with a breaker: once the database is known
//! to be out of reach, a call fails at once with UNAVAILABLE naming it (and
//! offers answers its fallback at once), instead of each call waiting out
//! the acquire timeout for a connection that will not come; and no wait for
//! a connection outlasts the call's own deadline.
//!
//! Written here rather than taken from the client stack's breaker
//! (`tower-resilience-circuitbreaker`, a tower layer around one service):
//! the database is reached through sqlx's pool by every statement and unit
//! of work, not through a tower service, and what opens this breaker is as
//! much the health probe's failures as the calls'.
//!
//! - It opens when the health probe fails (the database did not answer a
//!   `SELECT 1` within the probe's timeout), or after
//!   [`FAILURES_TO_OPEN`] connection failures in a row (a connection
//!   refused or reset, a pool that could not hand out a connection in
//!   time), with no statement reaching the database in between.
//! - While it is open, calls that need a connection fail at once, and the
//!   probe asks every [`PROBE_WHILE_OPEN`].
//! - It closes as soon as the database answers: the probe, or a statement
//!   already running. Closing wakes whoever waits for it (the change feed
//!   consumers, which would otherwise sleep out their backoff).
//!
//! Series: `agora_db_breaker_open` (1 while open) and
//! `agora_db_fast_failures_total` (calls refused at once).

use std::{
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

use tokio::sync::watch;

use crate::{Error, deadline::Deadline};

/// Connection failures in a row that open the breaker.
pub(crate) const FAILURES_TO_OPEN: u32 = 3;

/// How often the probe asks while the breaker is open.
pub(crate) const PROBE_WHILE_OPEN: Duration = Duration::from_millis(100);

/// The longest margin kept from a call's deadline for its answer: a wait
/// for a connection ends a tenth of the time left before the deadline, at
/// most this much before it.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub(crate) struct Breaker {
    /// Open: the database is known to be out of reach.
    open: AtomicBool,
    /// Connection failures since a statement last reached the database.
    failures: AtomicU32,
    /// `open`, for those who wait for it to change.
    changes: watch::Sender<bool>,
    /// The longest wait for a connection (`AGORA_DB_ACQUIRE_TIMEOUT_MS`).
    wait: Duration,
}

impl Breaker {
    pub(crate) fn new(wait: Duration) -> Self {
        metrics::gauge!("agora_db_breaker_open").set(0.0);
        metrics::counter!("agora_db_fast_failures_total").increment(0);
        Self {
            open: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            changes: watch::channel(false).0,
            wait,
        }
    }

    /// The longest wait for a connection.
    pub(crate) fn wait(&self) -> Duration {
        self.wait
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Refuses at once while the database is known to be out of reach.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if !self.is_open() {
            return Ok(());
        }
        metrics::counter!("agora_db_fast_failures_total").increment(1);
        Err(Error::unavailable(
            "the database is unavailable: it is known to be out of reach (failing fast until it answers again)",
        ))
    }

    /// A statement reached the database (its answer may still be an error
    /// of the statement's own, such as a unique violation).
    pub(crate) fn reached(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.is_open() {
            self.close();
        }
    }

    /// What a statement's run says of the database: an error of the
    /// connection (see [`super::unreachable`]) is a failure; an answer,
    /// even an error of the statement's own, is the database reached.
    pub(crate) fn heard(&self, error: Option<&sqlx::Error>) {
        match error {
            Some(err) if super::unreachable(err) => self.failed(),
            _ => self.reached(),
        }
    }

    /// A connection could not be had, or broke.
    pub(crate) fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= FAILURES_TO_OPEN {
            self.trip("connections failed in a row");
        }
    }

    /// What the health probe found.
    pub(crate) fn probed(&self, answered: bool) {
        if answered {
            self.reached();
        } else {
            self.trip("the health probe got no answer");
        }
    }

    /// Resolves when the breaker next closes: the database answers again.
    pub(crate) fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.next(false)
    }

    /// Resolves when the breaker next opens.
    pub(crate) fn opening(&self) -> impl Future<Output = ()> + Send + 'static {
        self.next(true)
    }

    /// Resolves at the next change to `open`.
    fn next(&self, open: bool) -> impl Future<Output = ()> + Send + 'static {
        let mut changes = self.changes.subscribe();
        changes.mark_unchanged();
        async move {
            while changes.changed().await.is_ok() {
                if *changes.borrow_and_update() == open {
                    return;
                }
            }
            std::future::pending().await
        }
    }

    fn trip(&self, why: &'static str) {
        if !self.open.swap(true, Ordering::Relaxed) {
            metrics::gauge!("agora_db_breaker_open").set(1.0);
            self.changes.send_replace(true);
            tracing::warn!(why, "database breaker open: calls fail at once until the database answers");
        }
    }

    fn close(&self) {
        if self.open.swap(false, Ordering::Relaxed) {
            metrics::gauge!("agora_db_breaker_open").set(0.0);
            self.changes.send_replace(false);
            tracing::info!("database breaker closed: the database answers again");
        }
    }
}

/// How long a wait for a connection may last: `limit` (the acquire
/// timeout), or less when the call being served must be answered sooner:
/// its time left, minus a margin to answer in. No time left is UNAVAILABLE
/// at once.
pub(crate) fn wait_bound(limit: Duration) -> Result<Duration, Error> {
    let Some(deadline) = Deadline::current() else {
        return Ok(limit);
    };
    let left = deadline.remaining();
    let bound = left.saturating_sub((left / 10).min(ANSWER_MARGIN)).min(limit);
    if bound.is_zero() {
        return Err(Error::unavailable("the database is unavailable: no time left to wait for a connection"));
    }
    Ok(bound)
}

/// Waits at most `bound` for `connection` (a pool's acquire, a write
/// turn), the time out being UNAVAILABLE.
pub(crate) async fn within<T>(
    bound: Duration,
    connection: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(bound, connection).await {
        Ok(result) => result,
        Err(_) => Err(Error::unavailable(format!(
            "the database is unavailable: no connection within {} ms",
            bound.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_in_a_row_open_it_and_an_answer_closes_it() {
        let breaker = Breaker::new(Duration::from_secs(2));
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed();
        }
        breaker.reached();
        breaker.failed();
        assert!(breaker.check().is_ok(), "an answer in between starts the count again");
        for _ in 1..FAILURES_TO_OPEN {
            breaker.failed();
        }
        assert!(breaker.check().is_err(), "open after {FAILURES_TO_OPEN} in a row");
        breaker.probed(true);
        assert!(breaker.check().is_ok());
        breaker.probed(false);
        assert!(breaker.check().is_err(), "a failed probe opens it at once");
    }

    #[tokio::test]
    async fn closing_wakes_its_waiters() {
        let breaker = Breaker::new(Duration::from_secs(2));
        breaker.probed(false);
        let waiter = tokio::spawn(breaker.closing());
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        breaker.probed(true);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    }

    /// A database that refuses connections: each of the first statements
    /// of a call with 300 ms left waits no longer than that (not the
    /// minute the acquire timeout allows), and once they failed in a row,
    /// statements and units of work are refused at once.
    #[tokio::test]
    async fn a_refused_database_is_unavailable_within_the_deadline_then_at_once() {
        use crate::{Database, Settings, config::DatabaseUrl};
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let url = DatabaseUrl::new(format!("postgres://postgres@127.0.0.1:{port}/nowhere"));
        let mut settings = Settings::for_tests(url);
        settings.db_acquire_timeout = Duration::from_secs(60);
        let db = Database::connect_lazy(&settings).unwrap();
        let message = |err: Error| match err {
            Error::Unavailable { message, .. } => message,
            other => panic!("not UNAVAILABLE: {other:?}"),
        };
        for _ in 0..FAILURES_TO_OPEN {
            let started = std::time::Instant::now();
            let deadline = Deadline(tokio::time::Instant::now() + Duration::from_millis(300));
            let err = deadline.scope(db.query("SELECT 1").execute()).await.unwrap_err();
            assert!(message(err).contains("no connection within"));
            assert!(started.elapsed() < Duration::from_secs(10), "waited {:?}", started.elapsed());
        }
        let err = db.query("SELECT 1").execute().await.unwrap_err();
        assert!(message(err).contains("known to be out of reach"));
        let Err(err) = db.begin().await else { panic!("a unit of work began") };
        assert!(message(err).contains("known to be out of reach"));
    }

    #[tokio::test]
    async fn a_wait_ends_before_the_calls_deadline() {
        let limit = Duration::from_secs(2);
        assert_eq!(wait_bound(limit).unwrap(), limit, "no call: the acquire timeout");
        let soon = Deadline(tokio::time::Instant::now() + Duration::from_millis(200));
        let bound = soon.scope(async { wait_bound(limit) }).await.unwrap();
        assert!(bound <= Duration::from_millis(180) && bound > Duration::from_millis(100), "{bound:?}");
        let far = Deadline(tokio::time::Instant::now() + Duration::from_secs(60));
        assert_eq!(far.scope(async { wait_bound(limit) }).await.unwrap(), limit);
        let passed = Deadline(tokio::time::Instant::now());
        assert!(passed.scope(async { wait_bound(limit) }).await.is_err());
    }
}
