//! The consuming side of a change feed: a background task that follows an
//! upstream's Watch stream and applies each event to this service's own
//! database.
//!
//! A consumer service brings a [`Follower`]: how to open the feed and what
//! an event does here. Everything else is this module's: reading the
//! envelope every Agora feed shares, applying each event and storing the
//! cursor in one unit of work, reconnecting, leadership, metrics.
//!
//! Each event is applied and the consumer's cursor stored in one
//! transaction, so after a crash the consumer resumes exactly after the
//! last event it applied, and an event delivered twice (it is skipped when
//! its sequence is not after the cursor) changes nothing. When the upstream
//! is down the consumer retries with exponential backoff and jitter and
//! catches up when it returns; its lag is exported as metrics:
//! `agora_feed_lag_events{feed}`, `agora_feed_lag_seconds{feed}`,
//! `agora_feed_applied_total{feed}` and `agora_feed_connected{feed}`.
//!
//! With several replicas on one PostgreSQL database only one applies a feed
//! at a time: the consumer holds a session advisory lock named after the
//! feed on a connection of its own, and a replica whose lock holder died
//! takes over at its next try (the lock goes with the dead connection).
//! SQLite is one process's file, so there is nobody to share with.

use std::time::{Duration, Instant};

use agora_contracts::feed::{ChangeFeedMessage, Envelope};
use futures_util::StreamExt as _;
use tonic::Status;

use crate::{
    Database, Error,
    db::{Executor, UnitOfWork},
    server::Task,
    wire::{micros_from_timestamp, now_micros},
};

/// What a consumer service brings: how to open the upstream's feed, and
/// what an event does to its own data.
#[tonic::async_trait]
pub trait Follower: Send + Sync + 'static {
    /// The upstream's Watch message.
    type Message: ChangeFeedMessage;

    /// The feed's name: its cursor's key, its lock and its metrics label.
    fn feed(&self) -> &'static str;

    /// Opens the upstream's Watch stream after `after`.
    async fn open(&self, after: i64) -> Result<tonic::Streaming<Self::Message>, Status>;

    /// Applies one event inside the unit of work that also moves the
    /// cursor. Events of no interest here change nothing.
    async fn apply(
        &self,
        uow: &mut UnitOfWork,
        event: <Self::Message as ChangeFeedMessage>::Kind,
    ) -> Result<(), Error>;
}

/// The background task that follows `follower`'s feed until shutdown.
pub fn consumer<F: Follower>(follower: F, db: Database) -> Task {
    let name = follower.feed();
    Task::new(name, move |shutdown| async move {
        tokio::select! {
            _ = consume(&follower, &db) => {}
            _ = shutdown.wait() => {}
        }
        metrics::gauge!("agora_feed_connected", "feed" => follower.feed()).set(0.0);
    })
}

/// The cursor of `feed`: the last sequence applied, 0 before the first.
pub async fn cursor(on: impl Executor<'_>, feed: &str) -> Result<i64, Error> {
    match on.query("SELECT sequence FROM feed_cursors WHERE feed = $1").bind(feed).fetch_optional().await? {
        Some(row) => row.get("sequence"),
        None => Ok(0),
    }
}

/// How long a feed may stay out of reach before it is worth a warning: a
/// consumer that starts beside its upstream waits for it quietly.
const QUIET: Duration = Duration::from_secs(10);

async fn consume<F: Follower>(follower: &F, db: &Database) {
    let feed = follower.feed();
    let mut backoff = Backoff::default();
    // Since when the feed has been out of reach, while it is.
    let mut failing_since: Option<Instant> = None;
    loop {
        // Only the holder of the feed's lock consumes.
        let _leader = match db.lead(&format!("agora-feed:{feed}")).await {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                // Another replica consumes; try again later.
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => {
                tracing::warn!(feed, error = %err, "feed: database unavailable");
                backoff.wait().await;
                continue;
            }
        };
        match follow(follower, db, &mut failing_since).await {
            Ok(()) => {
                // The upstream ended the stream (it is shutting down, say).
                backoff.reset();
                backoff.wait().await;
            }
            Err(reason) => {
                metrics::gauge!("agora_feed_connected", "feed" => feed).set(0.0);
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() < QUIET {
                    tracing::info!(feed, %reason, "feed not reachable yet; retrying");
                } else {
                    tracing::warn!(feed, %reason, "feed interrupted; reconnecting");
                }
                backoff.wait().await;
            }
        }
    }
}

/// Follows the feed from the stored cursor until the stream ends or fails.
async fn follow<F: Follower>(
    follower: &F,
    db: &Database,
    failing_since: &mut Option<Instant>,
) -> Result<(), String> {
    let feed = follower.feed();
    let mut after = cursor(db, feed).await.map_err(|e| e.to_string())?;
    let mut stream = match follower.open(after).await {
        Ok(stream) => stream,
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            // The upstream no longer keeps the events after our cursor.
            // Every effect is idempotent, so the way back is to replay all
            // that is kept; what was pruned in between is lost, and said so.
            tracing::error!(feed, cursor = after, "feed cursor too old; replaying every event still kept");
            metrics::counter!("agora_feed_resyncs_total", "feed" => feed).increment(1);
            follower.open(0).await.map_err(|s| s.to_string())?
        }
        Err(status) => return Err(status.to_string()),
    };
    *failing_since = None;
    metrics::gauge!("agora_feed_connected", "feed" => feed).set(1.0);
    tracing::info!(feed, after, "following the feed");
    while let Some(message) = stream.next().await {
        let Some(envelope) = message.map_err(|s| s.to_string())?.envelope() else {
            return Err(format!("{feed} sent a message without an event"));
        };
        if envelope.sequence <= after {
            continue; // delivered twice: already applied
        }
        let Envelope { sequence, head_sequence, .. } = envelope;
        let occur_time = envelope.occur_time.as_ref().and_then(micros_from_timestamp).unwrap_or(0);
        apply_one(follower, db, sequence, envelope.kind).await.map_err(|e| e.to_string())?;
        after = sequence;
        metrics::counter!("agora_feed_applied_total", "feed" => feed).increment(1);
        metrics::gauge!("agora_feed_lag_events", "feed" => feed)
            .set((head_sequence - sequence).max(0) as f64);
        metrics::gauge!("agora_feed_lag_seconds", "feed" => feed)
            .set(((now_micros() - occur_time).max(0) as f64) / 1e6);
    }
    Ok(())
}

async fn apply_one<F: Follower>(
    follower: &F,
    db: &Database,
    sequence: i64,
    kind: Option<<F::Message as ChangeFeedMessage>::Kind>,
) -> Result<(), Error> {
    let mut uow = db.begin().await?;
    if let Some(kind) = kind {
        follower.apply(&mut uow, kind).await?;
    }
    // Only ever forward: a replica that lost its lock mid-way cannot move
    // the cursor back.
    uow.query(
        "INSERT INTO feed_cursors (feed, sequence) VALUES ($1, $2) \
         ON CONFLICT (feed) DO UPDATE SET sequence = excluded.sequence \
         WHERE feed_cursors.sequence < excluded.sequence",
    )
    .bind(follower.feed())
    .bind(sequence)
    .execute()
    .await?;
    uow.commit().await
}

/// Exponential backoff with jitter, 100 ms to 5 s.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Duration::from_millis(100) }
    }
}

impl Backoff {
    async fn wait(&mut self) {
        let jittered = self.next.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(jittered).await;
        self.next = (self.next * 2).min(Duration::from_secs(5));
    }

    fn reset(&mut self) {
        *self = Self::default();
    }
}
