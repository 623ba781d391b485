//! The consuming side of a change feed: a background task that follows an
//! upstream's Watch stream and applies each event to this service's own
//! database.
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
//!
//! Each consumer service's migrations create `feed_cursors (feed, sequence)`.

use std::{pin::Pin, time::Duration};

use futures_util::{Stream, StreamExt as _};
use sqlx::{Any, Connection as _, Row as _, Transaction};
use tonic::Status;

use crate::{Backend, Database, Error, Shutdown, wire::now_micros};

/// One event of a feed, as a consumer needs it.
#[derive(Debug)]
pub struct FeedItem<E> {
    pub sequence: i64,
    /// When the upstream committed it (microseconds).
    pub occur_time: i64,
    /// The newest sequence the upstream had when it sent this one.
    pub head: i64,
    pub event: E,
}

pub type FeedStream<E> = Pin<Box<dyn Stream<Item = Result<FeedItem<E>, Status>> + Send>>;

/// What a consumer service brings: how to open the feed, and what an event
/// does to its own data.
#[tonic::async_trait]
pub trait FeedHandler: Send + Sync + 'static {
    type Event: Send + 'static;

    /// The feed's name: its cursor's key, its lock and its metrics label.
    fn feed(&self) -> &'static str;

    /// Opens the upstream's Watch stream after `after`.
    async fn open(&self, after: i64) -> Result<FeedStream<Self::Event>, Status>;

    /// Applies one event inside the transaction that also moves the cursor.
    async fn apply(&self, tx: &mut Transaction<'static, Any>, event: Self::Event) -> Result<(), Error>;
}

/// Starts the consumer of `handler`'s feed; it runs until shutdown.
pub fn spawn_consumer<H: FeedHandler>(handler: H, db: Database, shutdown: Shutdown) {
    tokio::spawn(async move {
        let stop = shutdown.clone();
        tokio::select! {
            _ = consume(&handler, &db) => {}
            _ = stop.wait() => {}
        }
        metrics::gauge!("agora_feed_connected", "feed" => handler.feed()).set(0.0);
    });
}

/// The cursor of `feed`: the last sequence applied, 0 before the first.
pub async fn cursor(db: &Database, feed: &str) -> Result<i64, Error> {
    let row = sqlx::query("SELECT sequence FROM feed_cursors WHERE feed = $1")
        .bind(feed)
        .fetch_optional(db.pool())
        .await?;
    Ok(match row {
        Some(row) => row.try_get("sequence")?,
        None => 0,
    })
}

async fn consume<H: FeedHandler>(handler: &H, db: &Database) {
    let feed = handler.feed();
    let mut backoff = Backoff::default();
    loop {
        // On PostgreSQL, only the holder of the feed's lock consumes.
        let _leader = match db.backend() {
            Backend::Postgres => match lead(db, feed).await {
                Ok(Some(conn)) => Some(conn),
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
            },
            Backend::Sqlite => None,
        };
        match follow(handler, db).await {
            Ok(()) => {
                // The upstream ended the stream (it is shutting down, say).
                backoff.reset();
                backoff.wait().await;
            }
            Err(reason) => {
                metrics::gauge!("agora_feed_connected", "feed" => feed).set(0.0);
                tracing::warn!(feed, %reason, "feed interrupted; reconnecting");
                backoff.wait().await;
            }
        }
    }
}

/// Takes the feed's advisory lock on a connection of its own, which holds
/// it for as long as it lives.
async fn lead(db: &Database, feed: &str) -> Result<Option<sqlx::AnyConnection>, Error> {
    let mut conn = db.pool().acquire().await?.detach();
    let row = sqlx::query("SELECT pg_try_advisory_lock(hashtext($1)) AS leader")
        .bind(format!("agora-feed:{feed}"))
        .fetch_one(&mut conn)
        .await?;
    if row.try_get::<bool, _>("leader")? {
        Ok(Some(conn))
    } else {
        let _ = conn.close().await;
        Ok(None)
    }
}

/// Follows the feed from the stored cursor until the stream ends or fails.
async fn follow<H: FeedHandler>(handler: &H, db: &Database) -> Result<(), String> {
    let feed = handler.feed();
    let mut after = cursor(db, feed).await.map_err(|e| e.to_string())?;
    let mut stream = match handler.open(after).await {
        Ok(stream) => stream,
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            // The upstream no longer keeps the events after our cursor.
            // Every effect is idempotent, so the way back is to replay all
            // that is kept; what was pruned in between is lost, and said so.
            tracing::error!(feed, cursor = after, "feed cursor too old; replaying every event still kept");
            metrics::counter!("agora_feed_resyncs_total", "feed" => feed).increment(1);
            handler.open(0).await.map_err(|s| s.to_string())?
        }
        Err(status) => return Err(status.to_string()),
    };
    metrics::gauge!("agora_feed_connected", "feed" => feed).set(1.0);
    tracing::info!(feed, after, "following the feed");
    while let Some(item) = stream.next().await {
        let item = item.map_err(|s| s.to_string())?;
        if item.sequence <= after {
            continue; // delivered twice: already applied
        }
        let (sequence, occur_time, head) = (item.sequence, item.occur_time, item.head);
        apply_one(handler, db, item).await.map_err(|e| e.to_string())?;
        after = sequence;
        metrics::counter!("agora_feed_applied_total", "feed" => feed).increment(1);
        metrics::gauge!("agora_feed_lag_events", "feed" => feed).set((head - sequence).max(0) as f64);
        metrics::gauge!("agora_feed_lag_seconds", "feed" => feed)
            .set(((now_micros() - occur_time).max(0) as f64) / 1e6);
    }
    Ok(())
}

async fn apply_one<H: FeedHandler>(
    handler: &H,
    db: &Database,
    item: FeedItem<H::Event>,
) -> Result<(), Error> {
    let mut tx = db.begin_write().await?;
    handler.apply(&mut tx, item.event).await?;
    // Only ever forward: a replica that lost its lock mid-way cannot move
    // the cursor back.
    sqlx::query(
        "INSERT INTO feed_cursors (feed, sequence) VALUES ($1, $2) \
         ON CONFLICT (feed) DO UPDATE SET sequence = excluded.sequence \
         WHERE feed_cursors.sequence < excluded.sequence",
    )
    .bind(handler.feed())
    .bind(item.sequence)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
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
