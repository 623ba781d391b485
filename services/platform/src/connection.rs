//! What the server knows of one open connection, and what the call
//! middleware may ask of it: its calls and streams in flight, when it was
//! last active, and the stall clocks of its long-lived streams. The
//! server's connection task ([`crate::server`]) keeps it and closes the
//! connection on its terms; admission ([`crate::middleware`]) opens
//! streams on it.

use std::{
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the first connection: the clock of [`Connection`].
pub(crate) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What the server knows of one connection while it is open; every call
/// on it finds it in its request's extensions.
#[derive(Debug, Default)]
pub(crate) struct Connection {
    /// Calls in flight (until their answer's headers) and streams open.
    pub(crate) open: AtomicUsize,
    /// When `open` last changed, in [`now_ms`].
    pub(crate) last_active: AtomicU64,
    /// Whether a call ever came.
    pub(crate) called: AtomicBool,
    /// Long-lived streams open on this connection.
    pub(crate) streams: AtomicUsize,
    /// The clocks of those streams, to find a stalled reader.
    pub(crate) clocks: Mutex<Vec<Weak<StallClock>>>,
    /// Cancelled when the server closes: streams waiting for something to
    /// send end with UNAVAILABLE.
    pub(crate) closing: CancellationToken,
    /// Wakes the connection's task when what it waits for changed (a first
    /// call, a stream opened), so that it sets its next check anew.
    pub(crate) changed: Notify,
}

impl Connection {
    pub(crate) fn begin(&self) {
        self.open.fetch_add(1, Ordering::Relaxed);
        if !self.called.load(Ordering::Relaxed) {
            self.called.store(true, Ordering::Relaxed);
            self.changed.notify_one();
        }
    }

    pub(crate) fn end(&self) {
        self.last_active.store(now_ms(), Ordering::Relaxed);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Admits one more long-lived stream if fewer than `limit` are open
    /// here: the returned guard holds its place until dropped.
    pub(crate) fn open_stream(self: &Arc<Self>, limit: usize) -> Option<StreamOnConnection> {
        let admitted = self
            .streams
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1))
            .is_ok();
        if !admitted {
            return None;
        }
        self.begin();
        let clock = Arc::new(StallClock::default());
        let mut clocks = self.clocks.lock().expect("never poisoned");
        clocks.retain(|c| c.strong_count() > 0);
        clocks.push(Arc::downgrade(&clock));
        self.changed.notify_one();
        Some(StreamOnConnection { connection: self.clone(), clock })
    }

    /// Since when a stream's reader has taken nothing, the longest, if
    /// any does now.
    pub(crate) fn stalled_since(&self) -> Option<u64> {
        let clocks = self.clocks.lock().expect("never poisoned");
        clocks.iter().filter_map(Weak::upgrade).filter_map(|c| c.waiting_since()).min()
    }
}

/// A long-lived stream's place on its connection.
#[derive(Debug)]
pub(crate) struct StreamOnConnection {
    connection: Arc<Connection>,
    pub(crate) clock: Arc<StallClock>,
}

impl StreamOnConnection {
    /// Cancelled when the server closes.
    pub(crate) fn closing(&self) -> CancellationToken {
        self.connection.closing.clone()
    }
}

impl Drop for StreamOnConnection {
    fn drop(&mut self) {
        self.connection.streams.fetch_sub(1, Ordering::Relaxed);
        self.connection.end();
    }
}

/// Whether a stream's answer waits on its reader: set when the stream
/// handed HTTP/2 a message, cleared when HTTP/2 asks for the next. HTTP/2
/// asks again at once while the reader's window and the send buffer have
/// room, so a mark that stays is a reader that takes nothing.
#[derive(Debug, Default)]
pub(crate) struct StallClock(AtomicU64);

impl StallClock {
    pub(crate) fn polled(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    pub(crate) fn sent(&self) {
        self.0.store(now_ms().max(1), Ordering::Relaxed);
    }

    fn waiting_since(&self) -> Option<u64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }
}
