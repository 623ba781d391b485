//! The published language of Agora: the protobuf contracts of every bounded
//! context, compiled to Rust, and the descriptor set that server reflection
//! serves.
//!
//! # Layout
//! - [`agora::common::v1`]: small value types shared by contexts (money).
//! - [`agora::catalog::v1`]: products and their families (upstream).
//! - [`agora::customers::v1`]: who shops (upstream).
//! - [`agora::offers::v1`]: timed offers on products (downstream).
//! - [`agora::shopping::v1`]: shopping lists (downstream).
//! - [`FILE_DESCRIPTOR_SET`]: every file above plus the well-known types
//!   they import, for `tonic-reflection`.
//! - [`feed`]: the envelope every change feed's Watch message shares.
//! - [`CONTEXT_MAP`]: `proto/context_map.json`, which contexts call which
//!   RPCs and follow which feeds; service authorization is derived from it.
#![forbid(unsafe_code)]

/// Generated code, one module per protobuf package.
pub mod agora {
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("agora.common.v1");
        }
    }
    pub mod catalog {
        pub mod v1 {
            tonic::include_proto!("agora.catalog.v1");
        }
    }
    pub mod customers {
        pub mod v1 {
            tonic::include_proto!("agora.customers.v1");
        }
    }
    pub mod offers {
        pub mod v1 {
            tonic::include_proto!("agora.offers.v1");
        }
    }
    pub mod shopping {
        pub mod v1 {
            tonic::include_proto!("agora.shopping.v1");
        }
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of every contract, with
/// imports included, as server reflection needs it.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agora_descriptor");

/// The context map (`proto/context_map.json`), declared once: which
/// downstream calls which RPCs of which upstream and follows which feed.
/// The servers grant services exactly what it declares.
pub const CONTEXT_MAP: &str = include_str!("../proto/context_map.json");

/// The envelope of the change feeds. Every upstream's Watch RPC answers
/// with messages of one shape (an event with its sequence, time and kind,
/// and the feed's head), so a consumer reads any feed the same way; only
/// what an event's kind means is the consumer's own business.
pub mod feed {
    use crate::agora::{catalog::v1 as catalog, customers::v1 as customers};

    /// One event of a feed, as every Watch message carries it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Envelope<K> {
        /// The event's place in the feed: strictly increasing.
        pub sequence: i64,
        /// When the change committed.
        pub occur_time: Option<prost_types::Timestamp>,
        /// The newest sequence the upstream had when it sent this one.
        pub head_sequence: i64,
        /// What happened; None for a kind this build does not know yet.
        pub kind: Option<K>,
        /// The trace context of the change's call (`traceparent`, then
        /// `;` and `tracestate` when there is one); empty when untraced.
        pub trace_context: String,
    }

    /// A trace context as an envelope keeps it: `traceparent`, then `;`
    /// and `tracestate` when there is one.
    pub fn join_trace_context(parent: String, state: &str) -> String {
        if state.is_empty() { parent } else { format!("{parent};{state}") }
    }

    /// The `traceparent` and `tracestate` (empty when none) of a trace
    /// context that [`join_trace_context`] made.
    pub fn split_trace_context(text: &str) -> (&str, &str) {
        text.split_once(';').unwrap_or((text, ""))
    }

    /// A message of a Watch stream.
    pub trait ChangeFeedMessage: Send + 'static {
        /// The contract's `oneof kind` of its events.
        type Kind: Send + 'static;

        /// The envelope; None when the message carries no event at all.
        fn envelope(self) -> Option<Envelope<Self::Kind>>;

        /// The message that carries `envelope`.
        fn from_envelope(envelope: Envelope<Self::Kind>) -> Self;

        /// The event alone (`CatalogEvent`), as a broker carries it: the
        /// published language without the stream's own fields.
        type Event: prost::Message + Default + 'static;

        /// The event of `envelope`, to publish; its head and trace context
        /// travel beside it (as message headers).
        fn event_of(envelope: Envelope<Self::Kind>) -> Self::Event;

        /// The envelope of a published `event`, with what travelled beside it.
        fn envelope_of(event: Self::Event, head_sequence: i64, trace_context: String)
        -> Envelope<Self::Kind>;
    }

    macro_rules! change_feed_message {
        ($message:ty, $event:ident, $kind:ty) => {
            impl ChangeFeedMessage for $message {
                type Kind = $kind;

                fn envelope(self) -> Option<Envelope<$kind>> {
                    let event = self.event?;
                    Some(Envelope {
                        sequence: event.sequence,
                        occur_time: event.occur_time,
                        head_sequence: self.head_sequence,
                        kind: event.kind,
                        trace_context: $crate::feed::join_trace_context(self.traceparent, &self.tracestate),
                    })
                }

                type Event = $event;

                fn event_of(envelope: Envelope<$kind>) -> $event {
                    let Envelope { sequence, occur_time, kind, .. } = envelope;
                    $event { sequence, occur_time, kind }
                }

                fn envelope_of(event: $event, head_sequence: i64, trace_context: String) -> Envelope<$kind> {
                    let $event { sequence, occur_time, kind } = event;
                    Envelope { sequence, occur_time, head_sequence, kind, trace_context }
                }

                fn from_envelope(envelope: Envelope<$kind>) -> Self {
                    let Envelope { sequence, occur_time, head_sequence, kind, trace_context } = envelope;
                    let (traceparent, tracestate) = {
                        let (parent, state) = $crate::feed::split_trace_context(&trace_context);
                        (parent.to_owned(), state.to_owned())
                    };
                    Self {
                        event: Some($event { sequence, occur_time, kind }),
                        head_sequence,
                        traceparent,
                        tracestate,
                    }
                }
            }
        };
    }

    use catalog::CatalogEvent;
    use customers::CustomerEvent;
    change_feed_message!(catalog::WatchCatalogEventsResponse, CatalogEvent, catalog::catalog_event::Kind);
    change_feed_message!(
        customers::WatchCustomerEventsResponse,
        CustomerEvent,
        customers::customer_event::Kind
    );
}
