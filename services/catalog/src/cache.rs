//! GetProduct's read cache: products as last read, kept in memory and
//! dropped when they change.
//!
//! - **One replica reads its own writes**: a write drops the product here
//!   once it committed, before it answers.
//! - **Other replicas' writes** reach the cache through the catalog's own
//!   change feed: a background task follows the outbox from its head and
//!   drops every product an event names, within the feed's poll interval
//!   (`AGORA_OUTBOX_POLL_MS`, 500 ms by default) of the commit.
//! - **A read racing a change** is not kept: a read keeps its product only
//!   when no change was recorded while it read.
//! - **While the feed cannot be followed** (at start, or the database out of
//!   reach), nothing is kept and every read goes to the database; an entry
//!   is at most [`TTL`] old in any case.
//!
//! So staleness across replicas is bounded by the feed's poll interval
//! (and by the TTL if the follower stalls), and one replica never answers
//! older than what it wrote.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use agora_platform::{Error, outbox::Outbox, server::Task};
use futures_util::StreamExt as _;

use crate::domain::{CatalogEvent, Product};

/// Products kept at most (about 0.5 KiB each with their text).
pub const CAPACITY: usize = 50_000;
/// The oldest an entry may be when it answers.
pub const TTL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Entry {
    product: Arc<Product>,
    read_at: Instant,
}

/// See the module.
#[derive(Debug)]
pub struct ProductCache {
    entries: quick_cache::sync::Cache<String, Entry, quick_cache::UnitWeighter>,
    /// Counts the changes recorded: a read keeps its product only if this
    /// did not move while it read.
    changes: AtomicU64,
    /// Whether the feed is followed, up to date: only then are reads kept.
    following: AtomicBool,
    /// `agora_catalog_cache_reads_total` by outcome, looked up once.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl ProductCache {
    pub fn new() -> Arc<Self> {
        let reads = |outcome: &'static str| metrics::counter!("agora_catalog_cache_reads_total", "outcome" => outcome);
        let (hits, misses) = (reads("hit"), reads("miss"));
        // At zero from the start.
        hits.increment(0);
        misses.increment(0);
        Arc::new(Self {
            hits,
            misses,
            // Sized for a few thousand products at first, so an idle
            // catalog does not pay for the most it may keep.
            entries: quick_cache::sync::Cache::with_weighter(
                4096,
                CAPACITY as u64,
                quick_cache::UnitWeighter,
            ),
            changes: AtomicU64::new(0),
            following: AtomicBool::new(false),
        })
    }

    /// The product `id`: from the cache when it holds it, fresh, else from
    /// `load` (kept when nothing changed meanwhile).
    pub async fn get(
        &self,
        id: &str,
        load: impl Future<Output = Result<Product, Error>>,
    ) -> Result<Arc<Product>, Error> {
        if let Some(entry) = self.entries.get(id)
            && entry.read_at.elapsed() < TTL
        {
            self.hits.increment(1);
            return Ok(entry.product);
        }
        self.misses.increment(1);
        let before = self.changes.load(Ordering::Acquire);
        let read_at = Instant::now();
        let product = Arc::new(load.await?);
        if self.following.load(Ordering::Acquire) && self.changes.load(Ordering::Acquire) == before {
            self.entries.insert(id.to_owned(), Entry { product: product.clone(), read_at });
        }
        Ok(product)
    }

    /// Drops `id`: it changed (here, or on another replica).
    pub fn changed(&self, id: &str) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(id);
    }

    /// Drops everything and keeps nothing more until the feed is followed
    /// again.
    fn lost_track(&self) {
        self.following.store(false, Ordering::Release);
        self.changes.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// The task that follows the catalog's own change feed from its head
    /// and drops what each event names; on an error it drops everything,
    /// waits, and starts again from the head.
    pub fn following(self: &Arc<Self>, outbox: Outbox) -> Task {
        let cache = self.clone();
        Task::new("product cache", move |shutdown| async move {
            let mut backoff = Duration::from_millis(100);
            while !shutdown.is_triggered() {
                let head = match outbox.head().await {
                    Ok(head) => head,
                    Err(err) => {
                        tracing::debug!(error = %err, "the product cache cannot read the feed's head");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = shutdown.wait() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                // Keeping starts once the head is known: every change after
                // it will be seen.
                cache.following.store(true, Ordering::Release);
                let mut events = std::pin::pin!(outbox.changes::<CatalogEvent>(head, shutdown.clone()));
                while let Some(event) = events.next().await {
                    match event {
                        Ok(published) => {
                            backoff = Duration::from_millis(100);
                            cache.changed(product_of(&published.event));
                        }
                        Err(err) => {
                            if !shutdown.is_triggered() {
                                tracing::debug!(error = %err, "the product cache lost the feed; keeping nothing until it is back");
                            }
                            break;
                        }
                    }
                }
                cache.lost_track();
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.wait() => return,
                }
            }
        })
    }
}

/// The product an event is about.
fn product_of(event: &CatalogEvent) -> &str {
    match event {
        CatalogEvent::ProductCreated(p) | CatalogEvent::ProductUpdated(p) => &p.id,
        CatalogEvent::ProductDiscontinued { product_id } => product_id,
    }
}
