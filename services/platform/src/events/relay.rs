//! The relay: a producer's outbox, published to its context's JetStream
//! stream in outbox order.
//!
//! One replica relays at a time: it holds the lock `agora-relay` of the
//! service's database, as a feed consumer holds its feed's
//! ([`Database::lead`]). It reads the events after its position, publishes
//! them (pipelined, up to a batch in flight) and, once JetStream has
//! acknowledged every one, stores the position of the last.
//!
//! Order is JetStream's to keep as much as the relay's: every publish
//! carries `Nats-Expected-Last-Sequence`, the stream sequence it must
//! follow, so a message never lands after a later one that overtook it
//! (a lost first publish and a second that went through, after a
//! reconnection). Whatever failed, the relay starts again from the
//! stream's tail: the outbox sequence of the stream's last message says how
//! far it got, whatever the stored position says, so an event is neither
//! published twice nor skipped. `Nats-Msg-Id` (`catalog-<sequence>`) makes
//! JetStream drop a second publish besides: two relays for a moment, one
//! that lost its lock without noticing yet, append each event once.
//!
//! Metrics: `agora_events_relay_lag_events{stream}` (outbox head minus
//! relayed), `agora_events_relayed_total{stream}`,
//! `agora_events_relay_duplicates_total{stream}` (publishes JetStream
//! dropped as repeated), `agora_events_relay_leader{stream}`.

use std::time::Duration;

use agora_contracts::feed::{ChangeFeedMessage, Envelope};
use async_nats::{
    HeaderMap,
    jetstream::{self, context::PublishAckFuture, stream},
};
use bytes::Bytes;
use prost::Message as _;

use super::{Broker, header, partition_of, subject};
use crate::{
    Database, Error,
    feed::{Backoff, QUIET},
    outbox::{DomainEvent, Outbox, Stored},
    task::Task,
    wire::timestamp_from_micros,
};

/// Events published per round: read together, in flight together.
const BATCH: i64 = 256;

/// The relay of `outbox` to the stream of `context`, each stored event
/// told as the contract's event of `M` (kind from `kind`), until shutdown.
pub fn relay<E, M>(
    broker: Broker,
    outbox: Outbox,
    context: &'static str,
    retention: Duration,
    kind: fn(E) -> M::Kind,
) -> Task
where
    E: DomainEvent,
    M: ChangeFeedMessage,
{
    let stream_name = super::stream_name(context);
    let label = stream_name.clone();
    metrics::gauge!("agora_events_relay_lag_events", "stream" => label.clone()).set(0.0);
    metrics::gauge!("agora_events_relay_leader", "stream" => label.clone()).set(0.0);
    metrics::counter!("agora_events_relayed_total", "stream" => label.clone()).increment(0);
    metrics::counter!("agora_events_relay_duplicates_total", "stream" => label.clone()).increment(0);
    let relay = Relay::<E, M> { broker, outbox, context, retention, kind, label };
    Task::new("jetstream relay", move |shutdown| async move {
        tokio::select! {
            () = relay.run() => {}
            () = shutdown.wait() => {}
        }
        metrics::gauge!("agora_events_relay_leader", "stream" => stream_name).set(0.0);
    })
}

struct Relay<E, M: ChangeFeedMessage> {
    broker: Broker,
    outbox: Outbox,
    context: &'static str,
    retention: Duration,
    kind: fn(E) -> M::Kind,
    /// The stream's name, the metrics' label.
    label: String,
}

impl<E: DomainEvent, M: ChangeFeedMessage> Relay<E, M> {
    fn db(&self) -> &Database {
        self.outbox.database()
    }

    async fn run(&self) {
        let mut backoff = Backoff::default();
        loop {
            let mut lead = match self.db().lead("agora-relay").await {
                Ok(lead) => lead,
                Err(err) => {
                    tracing::warn!(stream = %self.label, error = %err, "relay: database unavailable");
                    backoff.wait(self.db()).await;
                    continue;
                }
            };
            metrics::gauge!("agora_events_relay_leader", "stream" => self.label.clone()).set(1.0);
            let reason = tokio::select! {
                reason = self.lead_while_held() => reason,
                lost = lead.lost() => lost.to_string(),
            };
            metrics::gauge!("agora_events_relay_leader", "stream" => self.label.clone()).set(0.0);
            drop(lead);
            tracing::warn!(stream = %self.label, %reason, "relay: lost the lead; stopped relaying");
        }
    }

    /// Relays, starting again from the stream's tail after every failure.
    async fn lead_while_held(&self) -> String {
        let mut backoff = Backoff::default();
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            let err = self.relay_from_tail(&mut backoff, &mut failing_since).await;
            // What waits in the outbox meanwhile.
            if let (Ok(head), Ok(stored)) = (self.outbox.head().await, self.stored().await) {
                metrics::gauge!("agora_events_relay_lag_events", "stream" => self.label.clone())
                    .set((head - stored).max(0) as f64);
            }
            let since = *failing_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() < QUIET {
                tracing::info!(stream = %self.label, error = %err, "relay interrupted; starting again from the stream's tail");
            } else {
                tracing::warn!(stream = %self.label, error = %err, "relay interrupted; starting again from the stream's tail");
            }
            backoff.wait(self.db()).await;
        }
    }

    /// Relays from where the stream ends until something fails.
    async fn relay_from_tail(
        &self,
        backoff: &mut Backoff,
        failing_since: &mut Option<std::time::Instant>,
    ) -> anyhow::Error {
        let mut stream = match self.broker.stream_for_producer(self.context, self.retention).await {
            Ok(stream) => stream,
            Err(err) => return err,
        };
        let (mut expected, mut position) = match self.start(&mut stream).await {
            Ok(start) => start,
            Err(err) => return err,
        };
        backoff.reset();
        *failing_since = None;
        tracing::info!(stream = %self.label, after = position, "relaying the outbox");
        let mut committed = self.db().committed();
        loop {
            committed.borrow_and_update();
            let events = match self.outbox.read_after(position, BATCH).await {
                Ok(events) => events,
                Err(err) => return err.into(),
            };
            let head = match events.last() {
                Some(last) if events.len() as i64 == BATCH => {
                    self.outbox.head().await.unwrap_or(last.sequence)
                }
                Some(last) => last.sequence,
                None => position,
            };
            if events.is_empty() {
                metrics::gauge!("agora_events_relay_lag_events", "stream" => self.label.clone()).set(0.0);
                tokio::select! {
                    _ = committed.changed() => {}
                    () = tokio::time::sleep(self.outbox.poll_interval()) => {}
                }
                continue;
            }
            match self.publish(&events, head, expected).await {
                Ok(()) => {}
                Err(err) => return err,
            }
            let last = events.last().map_or(position, |e| e.sequence);
            expected += events.len() as u64;
            if let Err(err) = self.store(last).await {
                // Published: the stream's tail says so at the next start.
                return err.into();
            }
            position = last;
            metrics::counter!("agora_events_relayed_total", "stream" => self.label.clone())
                .increment(events.len() as u64);
            metrics::gauge!("agora_events_relay_lag_events", "stream" => self.label.clone())
                .set((head - position).max(0) as f64);
        }
    }

    /// Where to go on from: the stream's last sequence, and the outbox
    /// sequence relayed through (the greater of the stored position and
    /// the stream's last event's, which the relay before may have
    /// published without storing).
    async fn start(&self, stream: &mut stream::Stream) -> anyhow::Result<(u64, i64)> {
        let info = stream.info().await?;
        let last = info.state.last_sequence;
        let stored = self.stored().await?;
        let tail = if info.state.messages == 0 {
            0
        } else {
            let message = stream.get_raw_message(last).await?;
            message.headers.get(header::SEQUENCE).and_then(|v| v.as_str().parse::<i64>().ok()).unwrap_or(0)
        };
        let position = stored.max(tail);
        if position > stored {
            self.store(position).await?;
        }
        Ok((last, position))
    }

    /// Publishes `events` in order, each after the stream sequence before
    /// it, and waits for every acknowledgement.
    async fn publish(&self, events: &[Stored], head: i64, mut expected: u64) -> Result<(), anyhow::Error> {
        let js = self.broker.js();
        let mut acks: Vec<(i64, PublishAckFuture)> = Vec::with_capacity(events.len());
        for stored in events {
            let (subject, message) = self.message(stored, head, expected)?;
            acks.push((stored.sequence, js.send_publish(subject, message).await?));
            expected += 1;
        }
        let mut duplicates = 0;
        for (sequence, ack) in acks {
            let ack = ack.await.map_err(|e| anyhow::anyhow!("publishing event {sequence}: {e}"))?;
            if ack.duplicate {
                duplicates += 1;
            }
        }
        if duplicates > 0 {
            metrics::counter!("agora_events_relay_duplicates_total", "stream" => self.label.clone())
                .increment(duplicates);
            // The stream did not grow by as much as the next publish expects:
            // start again from its tail.
            anyhow::bail!("{duplicates} events were published already");
        }
        Ok(())
    }

    /// The message of one stored event: its subject (by its key's
    /// partition) and the publish, with its headers.
    fn message(
        &self,
        stored: &Stored,
        head: i64,
        expected: u64,
    ) -> Result<(String, jetstream::message::PublishMessage), anyhow::Error> {
        let event: E = serde_json::from_str(&stored.payload)
            .map_err(|e| anyhow::anyhow!("decoding outbox event {}: {e}", stored.sequence))?;
        let partition = partition_of(event.key(), self.broker.partitions());
        let event_type = event.kind();
        let envelope = Envelope {
            sequence: stored.sequence,
            occur_time: Some(timestamp_from_micros(stored.occur_time)),
            head_sequence: head,
            kind: Some((self.kind)(event)),
            trace_context: String::new(),
        };
        let payload = Bytes::from(M::event_of(envelope).encode_to_vec());
        let mut headers = HeaderMap::new();
        headers.insert(header::SEQUENCE, stored.sequence.to_string());
        headers.insert(header::EVENT_TYPE, event_type);
        let (parent, state) = agora_contracts::feed::split_trace_context(&stored.trace_context);
        if !parent.is_empty() {
            headers.insert(header::TRACEPARENT, parent);
        }
        if !state.is_empty() {
            headers.insert(header::TRACESTATE, state);
        }
        let message = jetstream::message::PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .message_id(format!("{}-{}", self.context, stored.sequence))
            .expected_last_sequence(expected);
        Ok((subject(self.context, partition), message))
    }

    /// The stored position: the last outbox sequence relayed.
    async fn stored(&self) -> Result<i64, Error> {
        match self
            .db()
            .query("SELECT relayed_through FROM outbox_relay WHERE id = 1")
            .fetch_optional()
            .await?
        {
            Some(row) => row.get("relayed_through"),
            None => Ok(0),
        }
    }

    /// Moves the stored position forward to `through`, never back. In a
    /// unit of work, as every write: on SQLite the writes take turns on
    /// one connection, and a write beside it would hold the file's lock
    /// under a batch about to commit.
    async fn store(&self, through: i64) -> Result<(), Error> {
        let mut uow = self.db().begin().await?;
        uow.query(
            "INSERT INTO outbox_relay (id, relayed_through) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET relayed_through = $1 \
             WHERE outbox_relay.relayed_through < $1",
        )
        .bind(through)
        .execute()
        .await?;
        uow.commit().await
    }
}
