//! Files that change under a running process: a certificate and key that
//! cert-manager renewed, a JWKS the identity provider rotated, a service
//! token its issuer refreshed.
//!
//! [`Reloading`] reads its files at start (a file that is missing or does
//! not parse fails the start), then reads them again every interval and,
//! when their bytes changed, swaps in what they now hold. A change that does
//! not parse is logged and counted (`agora_security_reloads_total{what,
//! outcome}`), and the last good value stays in use.
//!
//! Written here rather than taken from a file-watching crate: Kubernetes
//! updates a mounted Secret by swapping a symlink to a new directory,
//! which inotify watches follow badly, while reading a few small files every
//! few seconds costs nothing and cannot miss a change.

use std::{
    path::PathBuf,
    sync::{
        Arc, PoisonError, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;

/// Reads the files' contents and turns them into the value in use.
type Load<T> = dyn Fn(&[Vec<u8>]) -> anyhow::Result<T> + Send + Sync;

/// A value loaded from files and kept current.
pub struct Reloading<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Reloading<T> {
    fn clone(&self) -> Self {
        Self { shared: self.shared.clone() }
    }
}

impl<T> std::fmt::Debug for Reloading<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").field("what", &self.shared.what).finish_non_exhaustive()
    }
}

struct Shared<T> {
    what: &'static str,
    current: RwLock<Arc<T>>,
    /// Changes seen since the start, loaded or not.
    changes: AtomicU64,
}

fn read_all(what: &str, files: &[PathBuf]) -> anyhow::Result<Vec<Vec<u8>>> {
    files
        .iter()
        .map(|file| {
            std::fs::read(file).with_context(|| format!("reading the {what} file {}", file.display()))
        })
        .collect()
}

impl<T: Send + Sync + 'static> Reloading<T> {
    /// Loads `what` from `files` now, and again whenever they change,
    /// checking every `every`. The watch ends when the last handle is
    /// dropped. Needs a Tokio runtime.
    pub fn start(
        what: &'static str,
        files: Vec<PathBuf>,
        every: Duration,
        load: impl Fn(&[Vec<u8>]) -> anyhow::Result<T> + Send + Sync + 'static,
    ) -> anyhow::Result<Self> {
        let contents = read_all(what, &files)?;
        let value = load(&contents).with_context(|| {
            let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
            format!("loading the {what} from {}", names.join(", "))
        })?;
        let shared =
            Arc::new(Shared { what, current: RwLock::new(Arc::new(value)), changes: AtomicU64::new(0) });
        tokio::spawn(watch(Arc::downgrade(&shared), files, contents, every, Box::new(load)));
        Ok(Self { shared })
    }

    /// A value with no files behind it, which never changes.
    pub fn fixed(what: &'static str, value: T) -> Self {
        Self {
            shared: Arc::new(Shared {
                what,
                current: RwLock::new(Arc::new(value)),
                changes: AtomicU64::new(0),
            }),
        }
    }

    /// The value in use now.
    pub fn get(&self) -> Arc<T> {
        self.shared.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// How many times the files were seen changed, whether the change
    /// loaded or not.
    pub fn changes_seen(&self) -> u64 {
        self.shared.changes.load(Ordering::Acquire)
    }
}

async fn watch<T>(
    shared: Weak<Shared<T>>,
    files: Vec<PathBuf>,
    mut last: Vec<Vec<u8>>,
    every: Duration,
    load: Box<Load<T>>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    // The last problem reported, so a file that stays broken is reported once.
    let mut reported: Option<String> = None;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let what = shared.what;
        let outcome = read_all(what, &files).and_then(|now| {
            if now == last {
                return Ok(None);
            }
            let loaded = load(&now);
            last = now;
            loaded.map(Some)
        });
        let changed = !matches!(outcome, Ok(None));
        match outcome {
            Ok(None) => {}
            Ok(Some(value)) => {
                *shared.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(value);
                reported = None;
                metrics::counter!("agora_security_reloads_total", "what" => what, "outcome" => "ok")
                    .increment(1);
                tracing::info!(what, "reloaded");
            }
            Err(err) => {
                let problem = format!("{err:#}");
                if reported.as_deref() != Some(problem.as_str()) {
                    metrics::counter!("agora_security_reloads_total", "what" => what, "outcome" => "error")
                        .increment(1);
                    tracing::warn!(what, error = %problem, "cannot reload; the last good one stays in use");
                    reported = Some(problem);
                }
            }
        }
        if changed {
            shared.changes.fetch_add(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A changed file is picked up; a broken change keeps the last good
    /// value; dropping the handle ends the watch.
    #[tokio::test]
    async fn changes_are_picked_up_and_broken_ones_ignored() {
        let (dir, file) = crate::scratch_file("reload", "number", "1");
        let parse =
            |c: &[Vec<u8>]| -> anyhow::Result<u32> { Ok(std::str::from_utf8(&c[0])?.trim().parse()?) };
        let value = Reloading::start("number", vec![file.clone()], Duration::from_millis(10), parse).unwrap();
        assert_eq!(*value.get(), 1);

        // Waits (bounded) until the watch saw `n` changes.
        let seen = async |n: u64| {
            for _ in 0..500 {
                if value.changes_seen() >= n {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        std::fs::write(&file, "2").unwrap();
        assert!(seen(1).await);
        assert_eq!(*value.get(), 2, "the change is picked up");
        std::fs::write(&file, "two").unwrap();
        assert!(seen(2).await);
        assert_eq!(*value.get(), 2, "a broken file keeps the last good value");
        std::fs::write(&file, "3").unwrap();
        assert!(seen(3).await);
        assert_eq!(*value.get(), 3, "a fixed file is picked up again");

        assert!(Reloading::start("number", vec![dir.join("absent")], Duration::from_secs(1), parse).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
