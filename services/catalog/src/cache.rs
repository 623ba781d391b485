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

use std::{sync::Arc, time::Duration};

use agora_platform::{Error, outbox::Outbox, read_cache::ReadCache, task::Task};
use futures_util::StreamExt as _;

use crate::domain::{CatalogEvent, Product};

/// Products kept at most (about 0.5 KiB each with their text).
pub const CAPACITY: usize = 50_000;
/// The oldest an entry may be when it answers.
pub const TTL: Duration = Duration::from_secs(5);

/// See the module.
#[derive(Debug)]
pub struct ProductCache(ReadCache<Product>);

impl ProductCache {
    pub fn new() -> Arc<Self> {
        // Sized for a few thousand products at first.
        Arc::new(Self(ReadCache::new("agora_catalog_cache_reads_total", 4096, CAPACITY, TTL)))
    }

    /// The product `id`: from the cache when it holds it, fresh, else read
    /// by `load` (kept when nothing changed meanwhile).
    pub async fn get<F, Fut>(&self, id: &str, load: F) -> Result<Arc<Product>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Product, Error>>,
    {
        // A product holds until it changes: no clock.
        self.0.get(id, 0, || async { Ok((load().await?, i64::MAX)) }).await
    }

    /// Drops `id`: it changed (here, or on another replica).
    pub fn changed(&self, id: &str) {
        self.0.changed(id);
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
                cache.0.following();
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
                cache.0.lost_track();
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
