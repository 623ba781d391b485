//! The consuming side of a change feed: a background task that follows an
//! upstream's Watch stream and applies each event to this service's own
//! database.
//!
//! The upstream's side comes as a [`Feed`], made by the open host's
//! [`Upstream`](crate::upstream::Upstream) (`watch_catalog_events`,
//! `watch_customer_events`); the consumer service brings what an event
//! means in its own terms ([`Translate`]) and what that does to its own data
//! ([`Effects`]). Everything else is this module's: reading
//! the envelope every Agora feed shares, applying each event and storing
//! the cursor in one unit of work, reconnecting, leadership, metrics.
//!
//! Each event is applied and the consumer's cursor stored in one
//! transaction, so after a crash the consumer resumes exactly after the
//! last event it applied, and an event delivered twice (it is skipped when
//! its sequence is not after the cursor) changes nothing. When the upstream
//! is down the consumer retries with exponential backoff and jitter (at
//! once when its own database, out of reach, answers again) and
//! catches up when it returns; its lag is exported as metrics:
//! `agora_feed_lag_events{feed}`, `agora_feed_lag_seconds{feed}`,
//! `agora_feed_applied_total{feed}` and `agora_feed_connected{feed}`.
//!
//! With several replicas on one PostgreSQL database only one applies a feed
//! at a time: the consumer holds a session advisory lock named after the
//! feed on a connection of its own, and the other replicas wait for it on
//! one connection each. When the holder dies the lock goes with its
//! connection and a waiting replica takes over at once. The holder checks
//! every second that its lock session is alive and stops following when
//! it is not (a PostgreSQL restart, a failover, a cut network, a session
//! ended by an operator); until it notices, the cursor row fences its
//! writes ([`apply`]). `agora_feed_leader{feed}` is 1 on the replica
//! that leads. SQLite is one process's file, so there is nobody to share
//! with.

use std::{
    pin::Pin,
    time::{Duration, Instant},
};

use agora_contracts::feed::{ChangeFeedMessage, Envelope};
use futures_util::{FutureExt as _, StreamExt as _};
use tonic::{Status, Streaming};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{
    Database, Error,
    db::{Backend, Executor, Leadership, UnitOfWork},
    task::Task,
    wire::{micros_from_timestamp, now_micros},
};

/// How a feed's Watch stream opens after a sequence.
type Open<M> =
    Box<dyn Fn(i64) -> Pin<Box<dyn Future<Output = Result<Streaming<M>, Status>> + Send>> + Send + Sync>;

/// An upstream's change feed, as a consumer follows it: its name (the
/// cursor's key, the lock's and the metrics' label) and how to open it.
pub struct Feed<M> {
    name: &'static str,
    open: Open<M>,
}

impl<M: ChangeFeedMessage> Feed<M> {
    /// The feed `name`, opened by `open` after the sequence it is given.
    pub fn new<F, Fut>(name: &'static str, open: F) -> Self
    where
        F: Fn(i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Streaming<M>, Status>> + Send + 'static,
    {
        Self { name, open: Box::new(move |after| Box::pin(open(after))) }
    }
}

/// What a consumer service brings: the changes of its own data that
/// upstream events ask for, and how each is made, inside the unit of work
/// that also moves the feed's cursor.
#[tonic::async_trait]
pub trait Effects: Send + Sync + 'static {
    /// A change of this context's data, in its own terms.
    type Change: Send;

    async fn apply(&self, uow: &mut UnitOfWork, change: Self::Change) -> Result<(), Error>;
}

/// Which events of a feed (of kind `K`) are changes here: the translation
/// of an upstream's language into this context's. None: nothing to do.
pub trait Translate<K>: Effects {
    fn translate(&self, event: K) -> Option<Self::Change>;
}

/// The background task that follows `feed` and applies its events with
/// `effects`, until shutdown.
pub fn consumer<M, A>(feed: Feed<M>, effects: A, db: Database) -> Task
where
    M: ChangeFeedMessage,
    A: Translate<M::Kind>,
{
    let name = feed.name;
    // The series the alerts read, from the start: not following yet, no lag.
    metrics::gauge!("agora_feed_connected", "feed" => name).set(0.0);
    metrics::gauge!("agora_feed_lag_events", "feed" => name).increment(0.0);
    Task::new(name, move |shutdown| async move {
        tokio::select! {
            _ = consume(&feed, &effects, &db) => {}
            _ = shutdown.wait() => {}
        }
        metrics::gauge!("agora_feed_connected", "feed" => name).set(0.0);
    })
}

/// The cursor of `feed`: the last sequence applied, 0 before the first.
pub async fn cursor(on: impl Executor<'_>, feed: &str) -> Result<i64, Error> {
    Ok(position(on, feed).await?.0)
}

/// The cursor `key`: the last sequence applied and the stream sequence of
/// its message on a broker (0 for a Watch stream's), 0 before the first.
pub(crate) async fn position(on: impl Executor<'_>, key: &str) -> Result<(i64, i64), Error> {
    let row = on
        .query("SELECT sequence, stream_sequence FROM feed_cursors WHERE feed = $1")
        .bind(key)
        .fetch_optional()
        .await?;
    match row {
        Some(row) => Ok((row.get("sequence")?, row.get("stream_sequence")?)),
        None => Ok((0, 0)),
    }
}

/// How long a feed may stay out of reach before it is worth a warning: a
/// consumer that starts beside its upstream waits for it quietly.
pub(crate) const QUIET: Duration = Duration::from_secs(10);

async fn consume<M: ChangeFeedMessage, A: Translate<M::Kind>>(source: &Feed<M>, effects: &A, db: &Database) {
    let feed = source.name;
    let mut backoff = Backoff::default();
    loop {
        // Only the holder of the feed's lock consumes; the others wait here.
        let lead = match db.lead(&format!("agora-feed:{feed}")).await {
            Ok(lead) => lead,
            Err(err) => {
                tracing::warn!(feed, error = %err, "feed: database unavailable");
                backoff.wait(db).await;
                continue;
            }
        };
        let mut lead = Leading::new(feed, lead);
        // The lock is kept across the upstream's outages: giving it up
        // would only hand the same outage to another replica.
        let reason = tokio::select! {
            reason = lead_while_held(source, effects, db, &mut backoff) => reason,
            lost = lead.lead.lost() => lost.to_string(),
        };
        drop(lead);
        // Someone else may lead now: back to waiting on the lock.
        tracing::warn!(feed, %reason, "feed: lost the lead; stopped following");
    }
}

/// The lock of a feed while this replica leads it, shown as
/// `agora_feed_leader{feed} 1`. Dropped (the feed lost, or the task
/// stopped at shutdown), it shows 0 before the lock goes, so no two
/// replicas ever show 1 at once.
struct Leading {
    feed: &'static str,
    lead: Leadership,
}

impl Leading {
    fn new(feed: &'static str, lead: Leadership) -> Self {
        metrics::gauge!("agora_feed_leader", "feed" => feed).set(1.0);
        Self { feed, lead }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        metrics::gauge!("agora_feed_leader", "feed" => self.feed).set(0.0);
        metrics::gauge!("agora_feed_connected", "feed" => self.feed).set(0.0);
    }
}

/// Follows the feed, reconnecting with backoff when it ends or fails,
/// until another replica turns out to lead it; returns why.
async fn lead_while_held<M: ChangeFeedMessage, A: Translate<M::Kind>>(
    source: &Feed<M>,
    effects: &A,
    db: &Database,
    backoff: &mut Backoff,
) -> String {
    let feed = source.name;
    // Since when the feed has been out of reach, while it is.
    let mut failing_since: Option<Instant> = None;
    loop {
        match follow(source, effects, db, backoff, &mut failing_since).await {
            // The upstream ended the stream (it is shutting down, say).
            Ok(()) => {}
            Err(Interrupted::Lead(reason)) => return reason,
            Err(Interrupted::Stream(reason)) => {
                metrics::gauge!("agora_feed_connected", "feed" => feed).set(0.0);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < QUIET {
                    tracing::info!(feed, %reason, "feed not reachable yet; retrying");
                } else {
                    tracing::warn!(feed, %reason, "feed interrupted; reconnecting");
                }
            }
        }
        backoff.wait(db).await;
    }
}

/// Why following a feed stopped.
enum Interrupted {
    /// The stream could not be opened or failed, or an event could not be
    /// applied.
    Stream(String),
    /// The lock is gone, or another replica applied an event first.
    Lead(String),
}

impl From<Error> for Interrupted {
    fn from(err: Error) -> Self {
        Self::Stream(err.to_string())
    }
}

impl From<Status> for Interrupted {
    fn from(status: Status) -> Self {
        Self::Stream(status.to_string())
    }
}

/// Follows the feed from the stored cursor until the stream ends or fails.
async fn follow<M: ChangeFeedMessage, A: Translate<M::Kind>>(
    source: &Feed<M>,
    effects: &A,
    db: &Database,
    backoff: &mut Backoff,
    failing_since: &mut Option<Instant>,
) -> Result<(), Interrupted> {
    let feed = source.name;
    let mut after = cursor(db, feed).await?;
    let mut stream = match (source.open)(after).await {
        Ok(stream) => stream,
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            // The upstream no longer keeps the events after our cursor.
            // Every effect is idempotent, so the way back is to replay all
            // that is kept; what was pruned in between is lost, and said so.
            tracing::error!(feed, cursor = after, "feed cursor too old; replaying every event still kept");
            metrics::counter!("agora_feed_resyncs_total", "feed" => feed).increment(1);
            (source.open)(0).await?
        }
        Err(status) => return Err(status.into()),
    };
    // Connected: the next failure starts its backoff from the shortest wait.
    backoff.reset();
    *failing_since = None;
    metrics::gauge!("agora_feed_connected", "feed" => feed).set(1.0);
    tracing::info!(feed, after, "following the feed");
    // The events that have arrived already are applied together, in one
    // unit of work (one commit): a consumer that fell behind catches up at
    // a fraction of the cost of an event a commit. On SQLite only: on
    // PostgreSQL the effects of a second event would lock its product's
    // rows after the first took the outbox's lock (`UnitOfWork::record`),
    // the opposite order of a call that writes there (CreateOffer locks
    // the product's row, then records its event), and the two deadlock.
    // PostgreSQL groups concurrent commits itself.
    let batch = match db.backend() {
        Backend::Sqlite => APPLY_BATCH,
        Backend::Postgres => 1,
    };
    while let Some(message) = stream.next().await {
        let mut events = Vec::new();
        let mut next = Some(message);
        while let Some(message) = next {
            let Some(envelope) = message?.envelope() else {
                return Err(Interrupted::Stream(format!("{feed} sent a message without an event")));
            };
            if envelope.sequence > events.last().map_or(after, |e: &Envelope<_>| e.sequence) {
                events.push(envelope);
            } // else delivered twice: already applied
            next = if events.len() < batch { stream.next().now_or_never().flatten() } else { None };
        }
        let (Some(first), Some(last)) = (events.first(), events.last()) else { continue };
        let (first, last, head) = (first.sequence, last.sequence, last.head_sequence);
        if !apply(feed, feed, 0, effects, db, events).await? {
            return Err(Interrupted::Lead(format!("event {first} was applied by another replica")));
        }
        after = last;
        metrics::gauge!("agora_feed_lag_events", "feed" => feed).set((head - last).max(0) as f64);
    }
    Ok(())
}

/// The most events one unit of work applies (SQLite).
const APPLY_BATCH: usize = 128;

/// Applies `events` (in sequence order, after the cursor) and moves the
/// cursor `key` to the last, in one unit of work; false when the cursor
/// was already at the first or past it, and nothing was applied. `feed`
/// names the upstream in metrics and spans; `stream_sequence` is where a
/// broker's partition goes on from (0 for a Watch stream's cursor).
///
/// The cursor moves first, only ever forward, and the effects follow in
/// the same transaction. That row is the fence between leaders: a replica
/// that lost its lock and has not noticed yet waits on the row the new
/// leader holds, then finds the cursor moved and rolls back, so no event
/// is applied twice, whatever the timing.
pub(crate) async fn apply<K, A: Translate<K>>(
    feed: &'static str,
    key: &str,
    stream_sequence: i64,
    effects: &A,
    db: &Database,
    events: Vec<Envelope<K>>,
) -> Result<bool, Error> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(true) };
    let (first, last) = (first.sequence, last.sequence);
    let mut uow = db.begin().await?;
    let moved = uow
        .query(
            "INSERT INTO feed_cursors (feed, sequence, stream_sequence) VALUES ($1, $2, $4) \
             ON CONFLICT (feed) DO UPDATE SET sequence = $2, stream_sequence = $4 \
             WHERE feed_cursors.sequence < $3",
        )
        .bind(key)
        .bind(last)
        .bind(first)
        .bind(stream_sequence)
        .execute()
        .await?;
    if moved == 0 {
        return Ok(false); // dropping the unit of work rolls it back
    }
    let mut applied = Vec::with_capacity(events.len());
    for envelope in events {
        let Envelope { sequence, kind, .. } = envelope;
        let occur_time = envelope.occur_time.as_ref().and_then(micros_from_timestamp).unwrap_or(0);
        let origin = crate::telemetry::exporting()
            .then(|| crate::telemetry::span_context_of(&envelope.trace_context))
            .flatten();
        let effect = async {
            match kind.and_then(|kind| effects.translate(kind)) {
                Some(change) => effects.apply(&mut uow, change).await,
                None => Ok(()),
            }
        };
        if let Some(origin) = origin {
            // A consumer span of its own trace, linked to the call that
            // made the change: one call may fan out to many consumers, late.
            // Traced when that call was (an event of a call that was not
            // carries no trace context).
            let span = tracing::info_span!(
                "feed.apply",
                otel.name = %format_args!("{feed} process"),
                otel.kind = "consumer",
                messaging.system = "agora.feed",
                messaging.operation.type = "process",
                messaging.destination.name = feed,
                messaging.message.id = sequence,
            );
            let _ = span.set_parent(opentelemetry::Context::new());
            span.add_link(origin);
            effect.instrument(span).await?;
        } else {
            effect.await?;
        }
        applied.push((sequence, occur_time));
    }
    uow.commit().await?;
    for (sequence, occur_time) in applied {
        // One line an event, after its commit: the chaos run checks from
        // them that no event was applied twice, by any replica.
        tracing::debug!(feed, cursor = key, sequence, "feed event applied");
        metrics::counter!("agora_feed_applied_total", "feed" => feed).increment(1);
        metrics::gauge!("agora_feed_lag_seconds", "feed" => feed)
            .set(((now_micros() - occur_time).max(0) as f64) / 1e6);
    }
    Ok(true)
}

/// Exponential backoff with jitter, 100 ms to 1 s, cut short when this
/// service's database, known to be out of reach, answers again: a consumer
/// whose own database was the trouble follows again as soon as it is back.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

/// The longest wait between two attempts to follow a feed: what a
/// consumer adds to an outage (its upstream's, or the upstream's
/// database's) before it follows again.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self, db: &Database) {
        // Between half the step and the whole of it.
        let jittered = self.next.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::select! {
            () = tokio::time::sleep(jittered) => {}
            () = db.back() => {}
        }
        self.next = (self.next * 2).min(BACKOFF_MAX);
    }

    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }
}
