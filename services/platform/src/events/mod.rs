//! Change feeds on NATS JetStream, for a deployment that outgrows feeds
//! served by their producers (`AGORA_EVENTS=jetstream`; unset, feeds are
//! the producers' Watch streams, see [`outbox`](crate::outbox) and
//! [`feed`](crate::feed)).
//!
//! - [`relay`]: a producer's outbox, published in order to its context's
//!   stream (`AGORA_CATALOG`, subjects `agora.catalog.v1.events.<partition>`),
//!   one relay at a time.
//! - [`partitions`]: a consumer's replicas share the stream's partitions,
//!   each applied by one replica at a time, its position stored with the
//!   effects as feed cursors are.
//!
//! A message is the published language's event (`CatalogEvent`, protobuf),
//! with headers beside it: `Agora-Sequence` (the outbox sequence),
//! `Agora-Event-Type`, `traceparent` and `tracestate`, and `Nats-Msg-Id`
//! (`catalog-<sequence>`), by which JetStream drops a second publish of one
//! event. The partition is derived from the id of the event's aggregate
//! (the product, the customer; [`partition_of`]), so the events of one
//! aggregate keep their order.

pub mod partitions;
pub mod relay;

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

pub use crate::config::events::{NatsSettings, Transport};

/// A service's connection to JetStream, shared by its tasks.
#[derive(Clone)]
pub struct Broker(std::sync::Arc<Connected>);

struct Connected {
    js: jetstream::Context,
    settings: NatsSettings,
    /// How many times the connection was made again after a loss.
    reconnections: tokio::sync::watch::Receiver<u64>,
}

impl Broker {
    pub(crate) fn js(&self) -> &jetstream::Context {
        &self.0.js
    }

    pub(crate) fn partitions(&self) -> u32 {
        self.0.settings.partitions
    }

    /// Changes each time the connection is made again after a loss: a
    /// restarted NATS has forgotten the consumers it had, and a reader
    /// should make its own again at once rather than wait to miss their
    /// heartbeats.
    pub(crate) fn reconnections(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.reconnections.clone()
    }
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("settings", &self.0.settings).finish_non_exhaustive()
    }
}

/// How this service's feeds travel, connected.
#[derive(Debug, Clone)]
pub enum Events {
    Watch,
    JetStream(Broker),
}

impl Events {
    /// Connects to NATS when the transport is JetStream: an unreadable
    /// file or a server that does not answer within the connect timeout
    /// fails the start. Later disconnections are the client's to mend; it
    /// reconnects for as long as the service runs.
    pub async fn connect(transport: &Transport, service: &str) -> anyhow::Result<Self> {
        let Transport::JetStream(settings) = transport else { return Ok(Self::Watch) };
        Broker::connect(settings, service).await.map(Self::JetStream)
    }
}

impl Broker {
    async fn connect(settings: &NatsSettings, service: &str) -> anyhow::Result<Self> {
        let (reconnected, reconnections) = tokio::sync::watch::channel(0u64);
        metrics::gauge!("agora_events_nats_connected").set(0.0);
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("agora-{service}"))
            .event_callback(move |event| {
                match &event {
                    async_nats::Event::Connected => {
                        metrics::gauge!("agora_events_nats_connected").set(1.0);
                        reconnected.send_modify(|n| *n += 1);
                        tracing::info!("NATS: connected");
                    }
                    async_nats::Event::Disconnected => {
                        metrics::gauge!("agora_events_nats_connected").set(0.0);
                        tracing::warn!("NATS: disconnected; reconnecting (the outbox keeps what is written)");
                    }
                    // This service closing its connection, at shutdown.
                    async_nats::Event::Closed | async_nats::Event::Draining => {
                        tracing::info!(event = %event, "NATS");
                    }
                    other => tracing::warn!(event = %other, "NATS"),
                }
                std::future::ready(())
            })
            .connection_timeout(settings.connect_timeout)
            // Reconnect for ever, at most a second apart: the outbox keeps
            // what is written meanwhile.
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64 * 100).min(1_000)));
        if settings.urls.iter().any(|u| u.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        if let Some(ca) = &settings.ca_file {
            anyhow::ensure!(ca.is_file(), "AGORA_NATS_CA_FILE={}: no such file", ca.display());
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &settings.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(creds) = &settings.creds_file {
            options = options
                .credentials_file(creds)
                .await
                .with_context(|| format!("AGORA_NATS_CREDS_FILE={}", creds.display()))?;
        }
        let urls = settings.urls.join(",");
        let addrs: Vec<async_nats::ServerAddr> = settings
            .urls
            .iter()
            .map(|u| u.parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("AGORA_NATS_URL={urls}"))?;
        let client = tokio::time::timeout(settings.connect_timeout, options.connect(addrs))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {:?}", settings.connect_timeout))
            .and_then(|connected| connected.map_err(anyhow::Error::new))
            .with_context(|| format!("connecting to NATS at {urls} (AGORA_NATS_URL)"))?;
        // JetStream enabled for this account, or every later call fails.
        // Asked directly: the client's typed answer expects fields that
        // servers before 2.10 do not send.
        let answer = client.request("$JS.API.INFO", Bytes::new()).await.with_context(|| {
            format!("NATS at {urls} answered, but not JetStream (AGORA_EVENTS=jetstream)")
        })?;
        let info: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
        if let Some(error) = info.get("error") {
            anyhow::bail!("NATS at {urls}: JetStream refused this account: {error}");
        }
        let js = jetstream::new(client);
        metrics::gauge!("agora_events_nats_connected").set(1.0);
        let mut reconnections = reconnections;
        reconnections.mark_unchanged();
        Ok(Self(std::sync::Arc::new(Connected { js, settings: settings.clone(), reconnections })))
    }

    /// The stream of `context`'s events, created on first use with the
    /// configured partitions; `retention` is how long it keeps them.
    pub(crate) async fn stream_for_producer(
        &self,
        context: &str,
        retention: Duration,
    ) -> anyhow::Result<stream::Stream> {
        let name = stream_name(context);
        let partitions = self.partitions();
        let config = stream::Config {
            name: name.clone(),
            description: Some(format!("Agora {context} events, by partition of the aggregate's id")),
            subjects: (0..partitions).map(|p| subject(context, p)).collect(),
            max_age: retention,
            // What JetStream remembers message ids for: a publish repeated
            // within it is dropped. The relay repeats a publish only after
            // a failure, within seconds.
            duplicate_window: Duration::from_secs(120),
            storage: stream::StorageType::File,
            num_replicas: self.0.settings.replicas,
            ..Default::default()
        };
        let stream =
            self.js().get_or_create_stream(config).await.with_context(|| format!("the stream {name}"))?;
        let have = partitions_of(context, &stream.cached_info().config.subjects)?;
        anyhow::ensure!(
            have == partitions,
            "the stream {name} has {have} partitions and AGORA_EVENTS_PARTITIONS={partitions}: a key's events \
             would move to another partition; keep {have}, or start a new stream (docs/OPERATIONS.md)"
        );
        Ok(stream)
    }

    /// The stream of `context`'s events, as its producer made it, and its
    /// number of partitions.
    pub(crate) async fn stream_for_consumer(&self, context: &str) -> anyhow::Result<(stream::Stream, u32)> {
        let name = stream_name(context);
        let stream = self.js().get_stream(&name).await.with_context(|| format!("the stream {name}"))?;
        let partitions = partitions_of(context, &stream.cached_info().config.subjects)?;
        Ok((stream, partitions))
    }
}

/// The stream of a context's events: `AGORA_CATALOG`.
pub fn stream_name(context: &str) -> String {
    format!("AGORA_{}", context.to_ascii_uppercase())
}

/// The subject of a partition of a context's events: `agora.catalog.v1.events.3`.
pub fn subject(context: &str, partition: u32) -> String {
    format!("agora.{context}.v1.events.{partition}")
}

/// How many partitions a stream's subjects are: exactly the subjects of
/// partitions 0 to N-1.
fn partitions_of(context: &str, subjects: &[String]) -> anyhow::Result<u32> {
    let n = u32::try_from(subjects.len()).unwrap_or(0);
    let expected: Vec<String> = (0..n).map(|p| subject(context, p)).collect();
    anyhow::ensure!(
        n > 0 && subjects == expected,
        "the stream {} has subjects {subjects:?}, not Agora's partitions ({}.0 ...)",
        stream_name(context),
        subject(context, 0).trim_end_matches(".0"),
    );
    Ok(n)
}

/// The partition of an aggregate's events: FNV-1a (32 bits) of its id's
/// UTF-8 bytes, modulo the partitions. Written out rather than taken from
/// a hashing crate because it is part of the contract: it must stay the
/// same across releases and be easy to compute in any language, which a
/// `Hasher` does not promise.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in key.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % partitions.max(1)
}

/// The headers of an event's message.
pub(crate) mod header {
    pub const SEQUENCE: &str = "Agora-Sequence";
    pub const EVENT_TYPE: &str = "Agora-Event-Type";
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_function_is_fnv_1a_and_spreads_ids() {
        // FNV-1a's published test vectors.
        assert_eq!(partition_of("", u32::MAX), 0x811c_9dc5);
        assert_eq!(partition_of("a", u32::MAX), 0xe40c_292c);
        assert_eq!(partition_of("foobar", u32::MAX), 0xbf9c_f968);
        let mut counts = [0u32; 8];
        for i in 0..8_000 {
            counts[partition_of(&format!("prd_{i:08}"), 8) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1_200).contains(&c)), "{counts:?}");
        assert_eq!(partition_of("anything", 1), 0);
    }

    #[test]
    fn a_stream_is_its_partitions_subjects() {
        let subjects: Vec<String> = (0..4).map(|p| subject("catalog", p)).collect();
        assert_eq!(partitions_of("catalog", &subjects).unwrap(), 4);
        assert!(partitions_of("catalog", &subjects[1..]).is_err());
        assert!(partitions_of("catalog", &["agora.catalog.v1.events.>".to_owned()]).is_err());
    }
}
