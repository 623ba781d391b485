//! The change feed of an upstream service: a transactional outbox served as
//! a stream.
//!
//! A service records each domain event in its unit of work
//! ([`UnitOfWork::record`]), so an event exists exactly when its change
//! does. [`Outbox::watch`] streams the events after a consumer's last seen
//! sequence: first the backlog, in order, then new events as they commit.
//! It wakes when this process commits an event, and polls at a modest
//! interval for events committed by other replicas on a shared PostgreSQL
//! database. The stream reads only as fast as the consumer takes events, so
//! HTTP/2 flow control is the back pressure.
//!
//! Sequences are strictly increasing and, once a consumer has seen one, no
//! smaller one appears later: appends are serialized, so events commit in
//! sequence order. Events older than the retention are pruned; a consumer
//! asking for a pruned range gets OUT_OF_RANGE and must resynchronise.
//!
//! [`UnitOfWork::record`]: crate::db::UnitOfWork::record

use std::{collections::VecDeque, pin::Pin, time::Duration};

use agora_contracts::feed::{ChangeFeedMessage, Envelope};
use futures_util::{Stream, StreamExt as _};
use tokio::sync::watch;

pub use crate::db::DomainEvent;
use crate::{
    Database, Error, Shutdown,
    task::Task,
    wire::{now_micros, timestamp_from_micros},
};

/// An event as the feed delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published<E> {
    pub sequence: i64,
    /// When its change committed (microseconds).
    pub occur_time: i64,
    /// The newest sequence known when its batch was read, so consumers can
    /// tell how far behind they are.
    pub head: i64,
    pub event: E,
    /// The trace context of the call that wrote it (see `telemetry`).
    pub trace_context: String,
}

/// An event as stored.
pub(crate) type Stored = crate::db::OutboxEvent;

/// How long a stream woken by a commit waits for the commits right behind
/// it before it reads: what it adds to a consumer's lag, at most.
const COALESCE: Duration = Duration::from_millis(2);

/// Events read per query while streaming the backlog.
const BATCH: i64 = 256;

/// A boxed stream of a service's answers, as tonic's generated servers take
/// them for server-streaming RPCs.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send>>;

/// The outbox of one service.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Database,
    /// How often a waiting stream looks for events of other replicas.
    poll_interval: Duration,
    /// Its events are relayed to a broker ([`events::relay`]): pruning
    /// keeps those not relayed yet, however old.
    ///
    /// [`events::relay`]: crate::events::relay
    relayed: bool,
}

impl Outbox {
    pub fn new(db: Database, poll_interval: Duration) -> Self {
        Self { db, poll_interval, relayed: false }
    }

    /// This outbox, with pruning held back by the relay's position.
    pub fn relayed(self) -> Self {
        Self { relayed: true, ..self }
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// A Watch RPC's answer: checks the cursor, then streams the events
    /// after it, each told as the contract's message `M`, with its kind
    /// from `kind`.
    pub async fn serve<E, M>(
        &self,
        after: i64,
        shutdown: Shutdown,
        kind: fn(E) -> M::Kind,
    ) -> Result<ResponseStream<M>, Error>
    where
        E: DomainEvent,
        M: ChangeFeedMessage,
    {
        self.check_cursor(after).await?;
        let stream = self.watch::<E>(after, shutdown).map(move |item| {
            let published = item?;
            Ok(M::from_envelope(Envelope {
                sequence: published.sequence,
                occur_time: Some(timestamp_from_micros(published.occur_time)),
                head_sequence: published.head,
                kind: Some(kind(published.event)),
                trace_context: published.trace_context,
            }))
        });
        Ok(Box::pin(stream))
    }

    /// Up to `limit` events after `after`, in order.
    pub(crate) async fn read_after(&self, after: i64, limit: i64) -> Result<Vec<Stored>, Error> {
        let rows = self
            .db
            .query(
                "SELECT sequence, payload, occur_time, trace_context FROM outbox_events \
                 WHERE sequence > $1 ORDER BY sequence LIMIT CAST($2 AS BIGINT)",
            )
            .bind(after)
            .bind(limit)
            .fetch_all()
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Stored {
                    sequence: r.get("sequence")?,
                    payload: r.get("payload")?,
                    occur_time: r.get("occur_time")?,
                    trace_context: r.get("trace_context")?,
                })
            })
            .collect()
    }

    /// The newest sequence in the outbox (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        self.db
            .query("SELECT COALESCE(MAX(sequence), 0) AS head FROM outbox_events")
            .fetch_one()
            .await?
            .get("head")
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
        let row =
            self.db.query("SELECT pruned_through FROM outbox_state WHERE id = 1").fetch_optional().await?;
        let pruned_through: i64 = match row {
            Some(row) => row.get("pruned_through")?,
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
        let mut uow = self.db.begin().await?;
        let last: Option<i64> = uow
            .query("SELECT MAX(sequence) AS last FROM outbox_events WHERE occur_time < $1")
            .bind(cutoff)
            .fetch_one()
            .await?
            .get("last")?;
        let Some(mut last) = last else {
            return Ok(0);
        };
        if self.relayed {
            // Never an event the relay has not published yet.
            let relayed: i64 = match uow
                .query("SELECT relayed_through FROM outbox_relay WHERE id = 1")
                .fetch_optional()
                .await?
            {
                Some(row) => row.get("relayed_through")?,
                None => 0,
            };
            last = last.min(relayed);
            if last <= 0 {
                return Ok(0);
            }
        }
        let deleted =
            uow.query("DELETE FROM outbox_events WHERE sequence <= $1").bind(last).execute().await?;
        uow.query(
            "INSERT INTO outbox_state (id, pruned_through) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET pruned_through = excluded.pruned_through",
        )
        .bind(last)
        .execute()
        .await?;
        uow.commit().await?;
        Ok(deleted)
    }

    /// The background task that prunes every hour until shutdown.
    pub fn pruning(&self, retention: Duration) -> Task {
        let outbox = self.clone();
        Task::new("outbox pruning", move |shutdown| async move {
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
        })
    }

    /// The events after `after`: the backlog, then new events as they
    /// commit, until the consumer goes away or the server shuts down (then
    /// UNAVAILABLE). Only reads when the consumer asks for more.
    pub fn watch<E: DomainEvent>(
        &self,
        after: i64,
        shutdown: Shutdown,
    ) -> impl Stream<Item = Result<Published<E>, Error>> + Send + 'static {
        self.follow(after, shutdown, Some(Watching::open()))
    }

    /// The same events, for the service itself (its caches): not counted
    /// among the feed's watchers, and read at the poll interval only, not
    /// at each commit of this process: the service hands its own changes to
    /// its caches as it commits them, and this stream is for those of
    /// other replicas (reading the outbox at every commit cost the catalog
    /// 8 % of a CreateProduct's CPU under load).
    pub fn changes<E: DomainEvent>(
        &self,
        after: i64,
        shutdown: Shutdown,
    ) -> impl Stream<Item = Result<Published<E>, Error>> + Send + 'static {
        self.follow(after, shutdown, None)
    }

    /// The outbox's newest sequence, each time it moves: at once for this
    /// process's commits, within the poll interval for other replicas'
    /// (read from the database); an error when the database cannot be read,
    /// and the stream goes on. Ends at shutdown. For a cache of what the
    /// service itself serves, that must drop what it keeps when anything
    /// changed.
    pub fn heads(&self, shutdown: Shutdown) -> impl Stream<Item = Result<i64, Error>> + Send + 'static {
        struct State {
            outbox: Outbox,
            last: Option<i64>,
            committed: watch::Receiver<i64>,
            shutdown: Shutdown,
            /// When the database is read next, for other replicas' commits:
            /// a deadline rather than a sleep begun anew at each wake, so a
            /// process that commits all the time still reads it.
            next_read: tokio::time::Instant,
            /// The last read failed: wait before the next.
            failed: bool,
        }
        let state = State {
            outbox: self.clone(),
            last: None,
            committed: self.db.committed(),
            shutdown,
            next_read: tokio::time::Instant::now(),
            failed: false,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            if std::mem::take(&mut s.failed) {
                tokio::select! {
                    _ = tokio::time::sleep(s.outbox.poll_interval) => {}
                    _ = s.shutdown.wait() => return None,
                }
            }
            loop {
                let newest = *s.committed.borrow_and_update();
                let now = tokio::time::Instant::now();
                let head = if s.last.is_none() || now >= s.next_read {
                    s.next_read = now + s.outbox.poll_interval;
                    Some(s.outbox.head().await)
                } else {
                    // This process's own commit says how far the head is,
                    // without a read (a read after each commit cost
                    // CreateOffer 8 % of its CPU).
                    s.last.filter(|last| newest > *last).map(|_| Ok(newest))
                };
                match head {
                    Some(Ok(head)) if Some(head) != s.last => {
                        s.last = Some(head);
                        return Some((Ok(head), s));
                    }
                    Some(Err(err)) => {
                        s.last = None;
                        s.failed = true;
                        return Some((Err(err), s));
                    }
                    _ => {}
                }
                tokio::select! {
                    _ = s.committed.changed() => {}
                    _ = tokio::time::sleep_until(s.next_read) => {}
                    _ = s.shutdown.wait() => return None,
                }
            }
        })
    }

    fn follow<E: DomainEvent>(
        &self,
        after: i64,
        shutdown: Shutdown,
        watching: Option<Watching>,
    ) -> impl Stream<Item = Result<Published<E>, Error>> + Send + 'static {
        struct State {
            outbox: Outbox,
            after: i64,
            head: i64,
            buffer: VecDeque<Stored>,
            /// This process's commits, for the watchers of the feed; none
            /// for the service's own caches.
            committed: Option<watch::Receiver<i64>>,
            shutdown: Shutdown,
            ended: bool,
            /// The database was read once: later reads may be served from
            /// the events this process committed last.
            read_once: bool,
            _open: Option<Watching>,
        }
        let state = State {
            outbox: self.clone(),
            after,
            head: 0,
            buffer: VecDeque::new(),
            committed: watching.is_some().then(|| self.db.committed()),
            shutdown,
            ended: false,
            read_once: false,
            _open: watching,
        };
        futures_util::stream::unfold(state, |mut s| async move {
            if s.ended {
                return None;
            }
            loop {
                if let Some(stored) = s.buffer.pop_front() {
                    s.after = stored.sequence;
                    let head = s.head.max(stored.sequence);
                    return Some((decode(stored, head), s));
                }
                // Mark what we are about to read as seen before reading, so a
                // commit that lands in between still wakes us.
                if let Some(committed) = &mut s.committed {
                    committed.borrow_and_update();
                }
                // The events this process committed last, when they follow
                // on from what the database gave (its first read is always
                // the database's, which says what pruning kept): no read for
                // a consumer that keeps up.
                let recent =
                    if s.read_once { s.outbox.db.recent_after(s.after, BATCH as usize) } else { Vec::new() };
                if let Some(newest) = recent.last() {
                    s.head = s.head.max(newest.sequence);
                    s.buffer.extend(recent);
                    continue;
                }
                s.read_once = true;
                let (outbox, after) = (s.outbox.clone(), s.after);
                match crate::db::detached(async move { outbox.read_after(after, BATCH).await }).await {
                    Err(err) => return Some((Err(err), s)),
                    Ok(events) if !events.is_empty() => {
                        // A full batch means more waits behind it: ask how much.
                        if events.len() as i64 == BATCH {
                            let outbox = s.outbox.clone();
                            s.head = crate::db::detached(async move { outbox.head().await })
                                .await
                                .unwrap_or(s.head);
                        }
                        s.buffer.extend(events);
                        continue;
                    }
                    Ok(_) => {}
                }
                let committed = async {
                    match &mut s.committed {
                        Some(committed) => committed.changed().await.map_err(drop),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    // Woken by a commit: the commits of the next moment go
                    // with it, one read and one write to the consumer for
                    // many events when writes come fast.
                    _ = committed => tokio::time::sleep(COALESCE).await,
                    _ = tokio::time::sleep(s.outbox.poll_interval) => {}
                    // UNAVAILABLE, not the end of the stream: the consumer
                    // reconnects (to another replica) instead of taking
                    // the feed for finished.
                    _ = s.shutdown.wait() => {
                        s.ended = true;
                        let stopping = Error::unavailable("the server is shutting down; reconnect to another replica");
                        return Some((Err(stopping), s));
                    }
                }
            }
        })
    }
}

/// One open Watch stream, counted in `agora_outbox_watchers` while it
/// lives: which replica serves the feed's consumers, and how many.
struct Watching;

impl Watching {
    fn open() -> Self {
        metrics::gauge!("agora_outbox_watchers").increment(1.0);
        Self
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        metrics::gauge!("agora_outbox_watchers").decrement(1.0);
    }
}

fn decode<E: DomainEvent>(stored: Stored, head: i64) -> Result<Published<E>, Error> {
    let event = serde_json::from_str(&stored.payload).map_err(|e| {
        Error::Internal(anyhow::Error::new(e).context(format!("decoding outbox event {}", stored.sequence)))
    })?;
    Ok(Published {
        sequence: stored.sequence,
        occur_time: stored.occur_time,
        head,
        event,
        trace_context: stored.trace_context,
    })
}
