//! A read-through cache of what a service serves from its own database,
//! kept only while the service follows its own changes.
//!
//! What the catalog's product cache and offers' cache of available offers
//! share; each follows its changes its own way and says which answers a
//! change drops:
//!
//! - **a read racing a change** is not kept: a read keeps its answer only
//!   when no change was recorded while it read;
//! - **while changes are not followed** (at start, or the database out of
//!   reach), nothing is kept and every read goes to `load`;
//! - **an answer is at most the TTL old** when it is given, and never given
//!   past the moment it says it holds until.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::Error;

struct Entry<V> {
    value: Arc<V>,
    /// Until when the answer holds, on the caller's clock (`now` of `get`).
    until: i64,
    read_at: Instant,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Self { value: self.value.clone(), until: self.until, read_at: self.read_at }
    }
}

/// See the module.
pub struct ReadCache<V> {
    entries: quick_cache::sync::Cache<String, Entry<V>, quick_cache::UnitWeighter>,
    ttl: Duration,
    /// Counts the changes seen: a read keeps its answer only if this did
    /// not move while it read.
    changes: AtomicU64,
    /// Whether changes are followed: only then are answers kept.
    following: AtomicBool,
    /// `<reads>{outcome}`, looked up once.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl<V> std::fmt::Debug for ReadCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadCache").field("len", &self.entries.len()).field("ttl", &self.ttl).finish()
    }
}

impl<V> ReadCache<V> {
    /// At most `capacity` answers, room for `initial` at first (an idle
    /// service does not pay for the most it may keep); `reads` names the
    /// counter of reads by outcome (`hit`, `miss`).
    pub fn new(reads: &'static str, initial: usize, capacity: usize, ttl: Duration) -> Self {
        let counter = |outcome: &'static str| metrics::counter!(reads, "outcome" => outcome);
        let (hits, misses) = (counter("hit"), counter("miss"));
        // At zero from the start.
        hits.increment(0);
        misses.increment(0);
        Self {
            entries: quick_cache::sync::Cache::with_weighter(
                initial,
                capacity as u64,
                quick_cache::UnitWeighter,
            ),
            ttl,
            changes: AtomicU64::new(0),
            following: AtomicBool::new(false),
            hits,
            misses,
        }
    }

    /// The answer for `key` at `now`: kept, while it holds and is fresh,
    /// else read by `load`, which says until when its answer holds (on the
    /// same clock as `now`), and kept when nothing changed meanwhile.
    ///
    /// The read is made, and boxed, on a miss only: inline, a database
    /// read's future made every call's future large (the catalog's
    /// GetProduct was 10 KiB, allocated and copied on every hit).
    pub async fn get<F, Fut>(&self, key: &str, now: i64, load: F) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(V, i64), Error>>,
    {
        if let Some(entry) = self.entries.get(key)
            && now < entry.until
            && entry.read_at.elapsed() < self.ttl
        {
            self.hits.increment(1);
            return Ok(entry.value);
        }
        self.misses.increment(1);
        let before = self.changes.load(Ordering::Acquire);
        let read_at = Instant::now();
        let (value, until) = Box::pin(load()).await?;
        let value = Arc::new(value);
        if self.following.load(Ordering::Acquire) && self.changes.load(Ordering::Acquire) == before {
            self.entries.insert(key.to_owned(), Entry { value: value.clone(), until, read_at });
        }
        Ok(value)
    }

    /// Drops the answer for `key`: what it says changed.
    pub fn changed(&self, key: &str) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(key);
    }

    /// Drops every answer.
    pub fn changed_all(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Changes are followed from now on: answers are kept.
    pub fn following(&self) {
        self.following.store(true, Ordering::Release);
    }

    /// Drops everything and keeps nothing more until [`Self::following`].
    pub fn lost_track(&self) {
        self.following.store(false, Ordering::Release);
        self.changed_all();
    }
}
