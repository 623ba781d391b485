//! The change feed of an upstream service: a transactional outbox served as
//! a stream.
//!
//! A service appends each domain event to its `outbox_events` table in the
//! same transaction as the change it describes, so an event exists exactly
//! when its change does. [`Outbox::watch`] streams the events after a
//! consumer's last seen sequence: first the backlog, in order, then new
//! events as they commit. It wakes on an in-process notification when this
//! process committed the event, and polls at a modest interval for events
//! committed by other replicas on a shared PostgreSQL database. The stream
//! reads only as fast as the consumer takes events, so HTTP/2 flow control
//! is the back pressure.
//!
//! Sequences are strictly increasing and, once a consumer has seen one, no
//! smaller one appears later: appends are serialized (SQLite has one writer;
//! on PostgreSQL an advisory transaction lock orders them), so events commit
//! in sequence order. Events older than the retention are pruned; a consumer
//! asking for a pruned range gets OUT_OF_RANGE and must resynchronise.
//!
//! Each service's migrations create the two tables, in both dialects:
//! `outbox_events (sequence, kind, payload, occur_time)` and
//! `outbox_state (id = 1, pruned_through)`.

use std::{collections::VecDeque, time::Duration};

use futures_util::Stream;
use sqlx::{Any, Row as _, Transaction};
use tokio::sync::watch;

use crate::{Backend, Database, Error, Shutdown, wire::now_micros};

/// An event as stored: its kind and a JSON payload the owning service
/// defines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub sequence: i64,
    pub kind: String,
    pub payload: String,
    pub occur_time: i64,
}

/// Events read per query while streaming the backlog.
const BATCH: i64 = 256;

/// The outbox of one service.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Database,
    /// The newest sequence this process committed; watchers wait on it.
    committed: watch::Sender<i64>,
    /// How often a waiting stream looks for events of other replicas.
    poll_interval: Duration,
}

impl Outbox {
    pub fn new(db: Database, poll_interval: Duration) -> Self {
        Self { db, committed: watch::channel(0).0, poll_interval }
    }

    /// Appends an event inside the caller's write transaction and returns
    /// its sequence. Call [`Outbox::committed`] after the commit.
    pub async fn append(
        &self,
        tx: &mut Transaction<'static, Any>,
        kind: &str,
        payload: &str,
    ) -> Result<i64, Error> {
        if self.db.backend() == Backend::Postgres {
            // Serialize appends until commit, so sequences commit in order
            // and a consumer never skips an event that commits late.
            sqlx::query("SELECT pg_advisory_xact_lock(72110)").execute(&mut **tx).await?;
        }
        let row = sqlx::query(
            "INSERT INTO outbox_events (kind, payload, occur_time) VALUES ($1, $2, $3) RETURNING sequence",
        )
        .bind(kind)
        .bind(payload)
        .bind(now_micros())
        .fetch_one(&mut **tx)
        .await?;
        Ok(row.try_get("sequence")?)
    }

    /// Wakes the watchers of this process: `sequence` is committed.
    pub fn committed(&self, sequence: i64) {
        self.committed.send_if_modified(|newest| {
            let newer = sequence > *newest;
            if newer {
                *newest = sequence;
            }
            newer
        });
    }

    /// Up to `limit` events after `after`, in order.
    pub async fn read_after(&self, after: i64, limit: i64) -> Result<Vec<StoredEvent>, Error> {
        let rows = sqlx::query(
            "SELECT sequence, kind, payload, occur_time FROM outbox_events \
             WHERE sequence > $1 ORDER BY sequence LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredEvent {
                    sequence: r.try_get("sequence")?,
                    kind: r.try_get("kind")?,
                    payload: r.try_get("payload")?,
                    occur_time: r.try_get("occur_time")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Error::from)
    }

    /// The newest sequence in the outbox (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COALESCE(MAX(sequence), 0) AS head FROM outbox_events")
            .fetch_one(self.db.pool())
            .await?;
        Ok(row.try_get("head")?)
    }

    /// Refuses a cursor older than what is kept: the events after it are
    /// partly gone. 0 means "from the oldest kept" and is always accepted.
    pub async fn check_cursor(&self, after: i64) -> Result<(), Error> {
        if after < 0 {
            return Err(Error::invalid("after_sequence", "must not be negative"));
        }
        if after == 0 {
            return Ok(());
        }
        let row = sqlx::query("SELECT pruned_through FROM outbox_state WHERE id = 1")
            .fetch_optional(self.db.pool())
            .await?;
        let pruned_through: i64 = match row {
            Some(row) => row.try_get("pruned_through")?,
            None => 0,
        };
        if after < pruned_through {
            return Err(Error::OutOfRange(format!(
                "events after {after} are no longer kept (the oldest kept follows {pruned_through}); \
                 resynchronise and watch from the current head"
            )));
        }
        Ok(())
    }

    /// Deletes events older than `retention`, remembering how far it went.
    pub async fn prune(&self, retention: Duration) -> Result<u64, Error> {
        let cutoff = now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query("SELECT MAX(sequence) AS last FROM outbox_events WHERE occur_time < $1")
            .bind(cutoff)
            .fetch_one(&mut *tx)
            .await?;
        let Some(last) = row.try_get::<Option<i64>, _>("last")? else {
            return Ok(0);
        };
        let deleted = sqlx::query("DELETE FROM outbox_events WHERE sequence <= $1")
            .bind(last)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query(
            "INSERT INTO outbox_state (id, pruned_through) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET pruned_through = excluded.pruned_through",
        )
        .bind(last)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Runs pruning every hour until shutdown.
    pub fn spawn_pruning(&self, retention: Duration, shutdown: Shutdown) {
        let outbox = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = shutdown.wait() => return,
                }
                match outbox.prune(retention).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "outbox pruned"),
                    Err(err) => tracing::warn!(error = %err, "outbox pruning failed"),
                }
            }
        });
    }

    /// The events after `after`: the backlog, then new events as they
    /// commit, until the consumer goes away or the server shuts down. Only
    /// reads when the consumer asks for more. Each event comes with the
    /// newest sequence known when its batch was read, so consumers can tell
    /// how far behind they are.
    pub fn watch(
        &self,
        after: i64,
        shutdown: Shutdown,
    ) -> impl Stream<Item = Result<(StoredEvent, i64), Error>> + Send + 'static {
        struct State {
            outbox: Outbox,
            after: i64,
            head: i64,
            buffer: VecDeque<StoredEvent>,
            committed: watch::Receiver<i64>,
            shutdown: Shutdown,
        }
        let state = State {
            outbox: self.clone(),
            after,
            head: 0,
            buffer: VecDeque::new(),
            committed: self.committed.subscribe(),
            shutdown,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            loop {
                if let Some(event) = s.buffer.pop_front() {
                    s.after = event.sequence;
                    let head = s.head.max(event.sequence);
                    return Some((Ok((event, head)), s));
                }
                // Mark what we are about to read as seen before reading, so a
                // commit that lands in between still wakes us.
                s.committed.borrow_and_update();
                match s.outbox.read_after(s.after, BATCH).await {
                    Err(err) => return Some((Err(err), s)),
                    Ok(events) if !events.is_empty() => {
                        // A full batch means more waits behind it: ask how much.
                        if events.len() as i64 == BATCH {
                            s.head = s.outbox.head().await.unwrap_or(s.head);
                        }
                        s.buffer.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                }
                tokio::select! {
                    _ = s.committed.changed() => {}
                    _ = tokio::time::sleep(s.outbox.poll_interval) => {}
                    _ = s.shutdown.wait() => return None,
                }
            }
        })
    }
}
