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

use std::{sync::Arc, time::Duration};

use agora_platform::{Error, outbox::Outbox, read_cache::ReadCache, task::Task};
use futures_util::StreamExt as _;

use crate::domain::Offer;

/// Answers kept at most (one per customer and product asked about).
pub const CAPACITY: usize = 10_000;
/// The oldest an answer may be when it is given.
pub const TTL: Duration = Duration::from_secs(5);

/// See the module.
#[derive(Debug)]
pub struct AvailableCache(ReadCache<Vec<Offer>>);

impl AvailableCache {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(ReadCache::new("agora_offers_cache_reads_total", 256, CAPACITY, TTL)))
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
        self.0.get(&key, now, load).await
    }

    /// Drops every answer: offers changed (here, or on another replica).
    pub fn changed(&self) {
        self.0.changed_all();
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
                        cache.0.following();
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "the offers cache cannot read the outbox's head; keeping nothing");
                        cache.0.lost_track();
                        first = true;
                    }
                }
            }
        })
    }
}
