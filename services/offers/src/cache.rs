//! ListAvailableOffers' answers, kept in memory: the question the shop
//! asks most, answered without the database while nothing changes.
//!
//! An answer depends on the time: it holds from the moment it was read
//! until the first of its offers ends or the first offer that was not
//! available yet starts ([`available_until`]), and is not kept past that.
//! It depends on the offers too: every change of them is recorded in
//! offers' own outbox ([`OfferEvent`]) in its transaction, and
//!
//! - **one replica reads its own writes**: a write drops every answer
//!   once it committed, before it answers;
//! - **the feeds' withdrawals and other replicas' writes** drop every
//!   answer when the outbox's head moves: at once for this process's
//!   commits, within the poll interval (`AGORA_OUTBOX_POLL_MS`) for other
//!   replicas';
//! - **a read racing a change** is not kept;
//! - **while the outbox's head cannot be read**, nothing is kept; an
//!   answer is at most [`TTL`] old in any case.
//!
//! Every change drops every answer: writes of offers are rare beside the
//! reads of them, and what a change touches (one product, one customer,
//! everyone) would take more to work out than the answers take to read.
//!
//! [`available_until`]: crate::domain::available_until
//! [`OfferEvent`]: crate::domain::OfferEvent

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agora_platform::{Error, outbox::Outbox, server::Task};
use futures_util::StreamExt as _;

use crate::domain::Offer;

/// Answers kept at most (one per customer and product asked about).
pub const CAPACITY: usize = 10_000;
/// The oldest an answer may be when it is given.
pub const TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Entry {
    offers: Arc<Vec<Offer>>,
    /// Until when the answer holds (microseconds since the epoch).
    until: i64,
    read_at: Instant,
}

/// See the module.
#[derive(Debug)]
pub struct AvailableCache {
    entries: quick_cache::sync::Cache<String, Entry, quick_cache::UnitWeighter>,
    /// Counts the changes seen: a read keeps its answer only if this did
    /// not move while it read.
    changes: AtomicU64,
    /// Whether the outbox's head is followed: only then are answers kept.
    following: AtomicBool,
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl AvailableCache {
    pub fn new() -> Arc<Self> {
        let reads =
            |outcome: &'static str| metrics::counter!("agora_offers_cache_reads_total", "outcome" => outcome);
        let (hits, misses) = (reads("hit"), reads("miss"));
        hits.increment(0);
        misses.increment(0);
        Arc::new(Self {
            entries: quick_cache::sync::Cache::with_weighter(256, CAPACITY as u64, quick_cache::UnitWeighter),
            changes: AtomicU64::new(0),
            following: AtomicBool::new(false),
            hits,
            misses,
        })
    }

    /// The offers available at `now` to `customer_id` on `product_id`
    /// (either may be absent): kept, when an answer holds still, else read
    /// by `load`, which says until when its answer holds.
    pub async fn get<F, Fut>(
        &self,
        customer_id: Option<&str>,
        product_id: Option<&str>,
        now: i64,
        load: F,
    ) -> Result<Arc<Vec<Offer>>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<Offer>, i64), Error>>,
    {
        let key = format!("{}\u{1f}{}", customer_id.unwrap_or(""), product_id.unwrap_or(""));
        if let Some(entry) = self.entries.get(&key)
            && now < entry.until
            && entry.read_at.elapsed() < TTL
        {
            self.hits.increment(1);
            return Ok(entry.offers);
        }
        self.misses.increment(1);
        let before = self.changes.load(Ordering::Acquire);
        let read_at = Instant::now();
        let (offers, until) = load().await?;
        let offers = Arc::new(offers);
        if self.following.load(Ordering::Acquire) && self.changes.load(Ordering::Acquire) == before {
            self.entries.insert(key, Entry { offers: offers.clone(), until, read_at });
        }
        Ok(offers)
    }

    /// Drops every answer: offers changed (here, or on another replica).
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Drops everything and keeps nothing more until the outbox's head is
    /// followed again.
    fn lost_track(&self) {
        self.following.store(false, Ordering::Release);
        self.changed();
    }

    /// The task that follows the head of offers' own outbox: every move
    /// drops every answer; while it cannot be read nothing is kept.
    pub fn following(self: &Arc<Self>, outbox: Outbox) -> Task {
        let cache = self.clone();
        Task::new("available offers cache", move |shutdown| async move {
            let mut heads = std::pin::pin!(outbox.heads(shutdown));
            let mut first = true;
            while let Some(head) = heads.next().await {
                match head {
                    Ok(_) => {
                        // The first head read starts the keeping: every
                        // change after it will be seen.
                        if !std::mem::take(&mut first) {
                            cache.changed();
                        }
                        cache.following.store(true, Ordering::Release);
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "the offers cache cannot read the outbox's head; keeping nothing");
                        cache.lost_track();
                        first = true;
                    }
                }
            }
        })
    }
}
