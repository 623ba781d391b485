//! Partitioned consumers: a consuming context's replicas share an
//! upstream's stream, each partition applied by one replica at a time.
//!
//! # Who applies which partition
//! On PostgreSQL every replica says it is alive every
//! [`TICK`] (a row of `event_consumers`, stamped with the database's
//! clock), and takes its turn of the partitions: with the live replicas
//! in the order of their ids, replica `i` of `n` applies the partitions
//! `p` with `p % n == i`. It holds a session advisory lock per partition
//! it applies (`agora-partition:<upstream>:<p>`), all on one connection of
//! its own, and takes a partition only once its lock is free. A replica
//! that dies loses its locks with its connection at once, and leaves the
//! live set [`EXPIRY`] after it last spoke: the others take its partitions
//! within about 1.5 s. A replica that joins gets its turn at the others'
//! next tick, as they give those partitions up. A replica that can no
//! longer reach its lock session stops every partition before anyone
//! else can lock them. On SQLite, one process's file, the one replica
//! applies every partition.
//!
//! # Exactly once in effect
//! A partition is read with an ordered consumer (ephemeral, no acks)
//! from the stream sequence after the one stored with the last event
//! applied. Each event is applied, and the partition's cursor (in
//! `feed_cursors`, key `<upstream>/<p>`: the event's sequence and its
//! message's stream sequence) moved, in one unit of work, as a Watch
//! feed's cursor is ([`feed`](crate::feed)). So a crash after a commit
//! resumes after what was committed, there is no acknowledgement to lose,
//! and an event that reaches the consumer again (published twice, read
//! again by a replica that lost its partition without noticing yet) is at
//! or before the cursor and skipped: `agora_events_duplicates_total`.
//! A message read again after an interruption (a reconnection, a failed
//! unit of work), read but not applied before it, is counted in
//! `agora_events_redelivered_total`, and applied once.
//! The cursor row fences two replicas as it fences two feed leaders.
//!
//! A partition that has no cursor yet starts after the upstream's Watch
//! feed cursor when there is one: a deployment that moves from Watch
//! streams to JetStream does not apply again what it applied already.
//!
//! Metrics: `agora_events_partition_owned{feed,partition}` (1 on the
//! replica that applies it), `agora_events_lag_events{feed,partition}`
//! (messages in the partition after the last one read),
//! `agora_events_duplicates_total{feed}`,
//! `agora_events_redelivered_total{feed}`,
//! `agora_events_partition_interruptions_total{feed}` (a partition's reading
//! or applying failed, and starts again), and the feed metrics
//! (`agora_feed_applied_total{feed}`, `agora_feed_lag_seconds{feed}`).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use agora_contracts::feed::{ChangeFeedMessage, join_trace_context};
use async_nats::jetstream::{consumer, stream::Stream};
use futures_util::{FutureExt as _, StreamExt as _};
use prost::Message as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Broker, header, subject};
use crate::{
    Database, Error,
    db::{Backend, failure},
    feed::{Backoff, QUIET, Translate, apply, position},
    task::Task,
};

/// How often a replica says it is alive and looks at its share.
pub const TICK: Duration = Duration::from_millis(250);

/// How long a replica that stopped speaking still counts as alive.
pub const EXPIRY: Duration = Duration::from_secs(1);

/// The most events one unit of work applies (SQLite; one on PostgreSQL,
/// for the reason [`feed`](crate::feed) gives).
const APPLY_BATCH: usize = 128;

/// The background task that applies `upstream`'s events from its stream
/// with `effects`, on this replica's share of the partitions, until
/// shutdown.
pub fn consumer<M, A>(broker: Broker, upstream: &'static str, effects: A, db: Database) -> Task
where
    M: ChangeFeedMessage,
    A: Translate<M::Kind>,
{
    metrics::counter!("agora_events_duplicates_total", "feed" => upstream).increment(0);
    metrics::counter!("agora_events_redelivered_total", "feed" => upstream).increment(0);
    metrics::counter!("agora_events_partition_interruptions_total", "feed" => upstream).increment(0);
    let shared = Arc::new(Shared { broker, upstream, effects, db });
    Task::new(upstream, move |shutdown| async move {
        tokio::select! {
            () = coordinate::<M, A>(shared) => {}
            () = shutdown.wait() => {}
        }
    })
}

struct Shared<A> {
    broker: Broker,
    upstream: &'static str,
    effects: A,
    db: Database,
}

/// A partition being applied; dropped (at shutdown), it stops at once.
struct Applying {
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
}

/// How long a partition handed over may take to finish the events it is
/// applying before it is cut short.
const STOP_BOUND: Duration = Duration::from_secs(5);

impl Applying {
    fn start<M: ChangeFeedMessage, A: Translate<M::Kind>>(
        shared: Arc<Shared<A>>,
        stream: Stream,
        p: u32,
        newest: Arc<AtomicU64>,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(apply_partition::<M, A>(shared, stream, p, stop.clone(), newest));
        Self { task: Some(task), stop }
    }

    /// Stops applying once the unit of work under way has ended (or after
    /// [`STOP_BOUND`]), and returns when it has stopped.
    async fn stop(mut self) {
        self.stop.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(STOP_BOUND, &mut task).await.is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Applying {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Finds the stream, then keeps this replica's share of its partitions
/// applied.
async fn coordinate<M: ChangeFeedMessage, A: Translate<M::Kind>>(shared: Arc<Shared<A>>) {
    let upstream = shared.upstream;
    let mut backoff = Backoff::default();
    let mut since: Option<std::time::Instant> = None;
    let (stream, partitions) = loop {
        match shared.broker.stream_for_consumer(upstream).await {
            Ok(found) => break found,
            Err(err) => {
                // The producer makes the stream: a consumer that starts
                // first waits for it quietly, for a while.
                if since.get_or_insert_with(std::time::Instant::now).elapsed() < QUIET {
                    tracing::info!(feed = upstream, error = %format!("{err:#}"), "stream not there yet; retrying");
                } else {
                    tracing::warn!(feed = upstream, error = %format!("{err:#}"), "stream not reachable; retrying");
                }
                backoff.wait(&shared.db).await;
            }
        }
    };
    for p in 0..partitions {
        owned(upstream, p, false);
    }
    tracing::info!(feed = upstream, partitions, "following the stream's partitions");
    let mut share = Share::new(shared.db.clone(), upstream);
    let mut applying: BTreeMap<u32, Applying> = BTreeMap::new();
    let mut newest: BTreeMap<u32, Arc<AtomicU64>> = BTreeMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let settled = async {
            let wanted = share.wanted(partitions).await?;
            let leaving: Vec<u32> = applying.keys().filter(|p| !wanted.contains(p)).copied().collect();
            for p in leaving {
                if let Some(partition) = applying.remove(&p) {
                    partition.stop().await;
                }
                owned(upstream, p, false);
                share.unlock(p).await?;
                tracing::info!(feed = upstream, partition = p, "partition handed over");
            }
            for p in wanted {
                if applying.contains_key(&p) || !share.lock(p).await? {
                    continue;
                }
                owned(upstream, p, true);
                let (shared, stream) = (shared.clone(), stream.clone());
                // What this replica read of the partition before, whoever
                // applied it in between.
                let newest = Arc::clone(newest.entry(p).or_default());
                applying.insert(p, Applying::start::<M, A>(shared, stream, p, newest));
                tracing::info!(feed = upstream, partition = p, "partition taken");
            }
            Ok::<(), Error>(())
        };
        if let Err(err) = settled.await {
            // Stop every partition before the locks can go to another
            // replica: the session is dropped after them.
            for (p, partition) in std::mem::take(&mut applying) {
                partition.stop().await;
                owned(upstream, p, false);
            }
            share.drop_session();
            tracing::warn!(feed = upstream, error = %err, "partitions: lock session lost; stopped applying");
            backoff.wait(&shared.db).await;
        }
    }
}

fn owned(upstream: &'static str, partition: u32, yes: bool) {
    metrics::gauge!("agora_events_partition_owned", "feed" => upstream, "partition" => partition.to_string())
        .set(if yes { 1.0 } else { 0.0 });
}

/// This replica's share of the partitions, and the locks it holds.
struct Share {
    db: Database,
    group: &'static str,
    member: String,
    session: Option<sqlx::PgConnection>,
}

impl Share {
    fn new(db: Database, group: &'static str) -> Self {
        Self { db, group, member: uuid::Uuid::now_v7().to_string(), session: None }
    }

    /// The partitions, of `n`, this replica should apply now: all of them
    /// on SQLite; on PostgreSQL its turn among the live replicas, having
    /// said it is one of them.
    async fn wanted(&mut self, n: u32) -> Result<Vec<u32>, Error> {
        if self.db.backend() == Backend::Sqlite {
            return Ok((0..n).collect());
        }
        if self.session.is_none() {
            self.session = self.db.session().await?;
        }
        let Some(conn) = self.session.as_mut() else { return Ok((0..n).collect()) };
        let expiry = i64::try_from(EXPIRY.as_millis()).unwrap_or(i64::MAX);
        let work = async {
            sqlx::query(
                "INSERT INTO event_consumers (consumer_group, member, seen_at) \
                 VALUES ($1, $2, (extract(epoch FROM clock_timestamp()) * 1000)::bigint) \
                 ON CONFLICT (consumer_group, member) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(self.group)
            .bind(&self.member)
            .execute(&mut *conn)
            .await?;
            let live: Vec<String> = sqlx::query_scalar(
                "SELECT member FROM event_consumers WHERE consumer_group = $1 \
                 AND seen_at >= (extract(epoch FROM clock_timestamp()) * 1000)::bigint - $2 ORDER BY member",
            )
            .bind(self.group)
            .bind(expiry)
            .fetch_all(&mut *conn)
            .await?;
            // Replicas gone for a minute are forgotten.
            sqlx::query(
                "DELETE FROM event_consumers WHERE consumer_group = $1 \
                 AND seen_at < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - 60000",
            )
            .bind(self.group)
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(live)
        };
        let live = tokio::time::timeout(EXPIRY, work)
            .await
            .map_err(|_| Error::unavailable("the lock session did not answer within a second"))?
            .map_err(failure)?;
        let n_live = u32::try_from(live.len()).unwrap_or(u32::MAX).max(1);
        let Some(me) = live.iter().position(|m| *m == self.member) else { return Ok(Vec::new()) };
        let me = u32::try_from(me).unwrap_or(u32::MAX);
        Ok((0..n).filter(|p| p % n_live == me).collect())
    }

    /// Takes the lock of partition `p` if it is free.
    async fn lock(&mut self, p: u32) -> Result<bool, Error> {
        let Some(conn) = self.session.as_mut() else { return Ok(true) };
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(format!("agora-partition:{}:{p}", self.group))
            .fetch_one(conn)
            .await
            .map_err(failure)
    }

    /// Gives the lock of partition `p` up.
    async fn unlock(&mut self, p: u32) -> Result<(), Error> {
        let Some(conn) = self.session.as_mut() else { return Ok(()) };
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(format!("agora-partition:{}:{p}", self.group))
            .execute(conn)
            .await
            .map_err(failure)?;
        Ok(())
    }

    /// Closes the session: every lock goes with it.
    fn drop_session(&mut self) {
        self.session = None;
    }
}

/// Applies partition `p`, reading again after each interruption, until
/// stopped.
async fn apply_partition<M: ChangeFeedMessage, A: Translate<M::Kind>>(
    shared: Arc<Shared<A>>,
    stream: Stream,
    p: u32,
    stop: CancellationToken,
    newest: Arc<AtomicU64>,
) {
    let mut backoff = Backoff::default();
    loop {
        match follow_partition::<M, A>(&shared, &stream, p, &mut backoff, &stop, &newest).await {
            Stopped::Asked => return,
            // Expected: read again at once, from the cursor.
            Stopped::Reconnected => {
                tracing::info!(
                    feed = shared.upstream,
                    partition = p,
                    "NATS reconnected; reading the partition again"
                );
            }
            Stopped::Failed(err) => {
                metrics::counter!("agora_events_partition_interruptions_total", "feed" => shared.upstream)
                    .increment(1);
                tracing::warn!(feed = shared.upstream, partition = p, error = %err, "partition interrupted; reading again");
                tokio::select! {
                    () = backoff.wait(&shared.db) => {}
                    () = stop.cancelled() => return,
                }
            }
        }
    }
}

/// Why a partition stopped being read.
enum Stopped {
    /// It is handed over: the events it was applying are applied.
    Asked,
    /// The connection to NATS was made again: a restarted server forgot its consumers.
    Reconnected,
    Failed(Error),
}

impl From<Error> for Stopped {
    fn from(err: Error) -> Self {
        Self::Failed(err)
    }
}

/// Follows partition `p` from its cursor until something fails.
async fn follow_partition<M: ChangeFeedMessage, A: Translate<M::Kind>>(
    shared: &Shared<A>,
    stream: &Stream,
    p: u32,
    backoff: &mut Backoff,
    stop: &CancellationToken,
    newest: &AtomicU64,
) -> Stopped {
    let (upstream, db) = (shared.upstream, &shared.db);
    let key = format!("{upstream}/{p}");
    let (mut after, stream_sequence) = match start_of(db, upstream, &key).await {
        Ok(start) => start,
        Err(err) => return err.into(),
    };
    let deliver_policy = match u64::try_from(stream_sequence) {
        Ok(0) | Err(_) => consumer::DeliverPolicy::All,
        Ok(s) => consumer::DeliverPolicy::ByStartSequence { start_sequence: s + 1 },
    };
    let config = consumer::pull::OrderedConfig {
        filter_subject: subject(upstream, p),
        deliver_policy,
        ..Default::default()
    };
    let partition = p.to_string();
    let mut messages = match stream.create_consumer(config).await {
        Ok(consumer) => {
            // What waits in the partition, from the start.
            metrics::gauge!("agora_events_lag_events", "feed" => upstream, "partition" => partition.clone())
                .set(consumer.cached_info().num_pending as f64);
            match consumer.messages().await {
                Ok(messages) => messages,
                Err(err) => return Error::unavailable_because("reading the partition", err).into(),
            }
        }
        Err(err) => return Error::unavailable_because("creating the partition's consumer", err).into(),
    };
    backoff.reset();
    let mut reconnections = shared.broker.reconnections();
    reconnections.mark_unchanged();
    let batch = match db.backend() {
        Backend::Sqlite => APPLY_BATCH,
        Backend::Postgres => 1,
    };
    loop {
        let message = tokio::select! {
            message = messages.next() => match message {
                Some(message) => message,
                None => return Error::unavailable("the partition's messages ended").into(),
            },
            _ = reconnections.changed() => {
                return Stopped::Reconnected;
            }
            // Between units of work only: what was read is applied first.
            () = stop.cancelled() => return Stopped::Asked,
        };
        let mut events = Vec::new();
        let mut last_stream_sequence = 0;
        let mut pending = 0;
        let mut next = Some(message);
        while let Some(message) = next {
            let message = match message {
                Ok(message) => message,
                Err(err) => return Error::unavailable_because("reading the partition", err).into(),
            };
            let info = match message.info() {
                Ok(info) => (info.stream_sequence, info.pending),
                Err(err) => {
                    return Error::Internal(anyhow::anyhow!("a message without its metadata: {err}")).into();
                }
            };
            (last_stream_sequence, pending) = info;
            // The newest message this replica read of the partition: one read
            // again (read, and not applied, before an interruption) is a
            // redelivery.
            if newest.fetch_max(last_stream_sequence, Ordering::Relaxed) >= last_stream_sequence {
                metrics::counter!("agora_events_redelivered_total", "feed" => upstream).increment(1);
            }
            let event = match M::Event::decode(message.payload.clone()) {
                Ok(event) => event,
                Err(err) => {
                    return Error::Internal(anyhow::anyhow!(
                        "{upstream} partition {p}: message {last_stream_sequence} is not an event: {err}"
                    ))
                    .into();
                }
            };
            let trace =
                |name| message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
            let trace_context = match trace(header::TRACEPARENT) {
                Some(parent) => join_trace_context(parent, &trace(header::TRACESTATE).unwrap_or_default()),
                None => String::new(),
            };
            let envelope = M::envelope_of(event, 0, trace_context);
            if envelope.sequence
                > events.last().map_or(after, |e: &agora_contracts::feed::Envelope<_>| e.sequence)
            {
                events.push(envelope);
            } else {
                metrics::counter!("agora_events_duplicates_total", "feed" => upstream).increment(1);
            }
            next = if events.len() < batch { messages.next().now_or_never().flatten() } else { None };
        }
        let Some(last) = events.last().map(|e| e.sequence) else { continue };
        let stream_sequence = i64::try_from(last_stream_sequence).unwrap_or(i64::MAX);
        match apply(upstream, &key, stream_sequence, &shared.effects, db, events).await {
            Ok(true) => after = last,
            Ok(false) => {
                return Error::unavailable("another replica applied this partition's event first").into();
            }
            Err(err) => return err.into(),
        }
        metrics::gauge!("agora_events_lag_events", "feed" => upstream, "partition" => partition.clone())
            .set(pending as f64);
    }
}

/// Where partition `key` starts: its cursor, else after the upstream's
/// Watch feed cursor (what was applied before the move to JetStream).
async fn start_of(db: &Database, upstream: &str, key: &str) -> Result<(i64, i64), Error> {
    match position(db, key).await? {
        (0, 0) => Ok((position(db, upstream).await?.0, 0)),
        found => Ok(found),
    }
}
