//! The quota of an app's writable `[files]` directory (`--files-quota`).
//!
//! meshd measures the directory (the disk blocks of everything under it)
//! in a thread of its own, at most once per [`REFRESH`], started by the
//! app's requests. While the last measurement is over the quota, the app's
//! guests cannot open a file for writing or create one (`open-at` answers
//! the filesystem's `quota` error); they can still read, and remove files
//! to get back under it.
//!
//! What this does not stop: a guest that opened a file for writing while
//! under the quota can write to it until its request ends, and the
//! measurement lags the writes by up to [`REFRESH`] plus the walk. So one
//! request can overshoot the quota by what it writes in its lifetime (its
//! `timeout`). A hard limit at every write needs the filesystem's own
//! quotas (docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How old a measurement may get before a request starts a new one.
pub const REFRESH: Duration = Duration::from_secs(1);

/// Most entries one measurement walks; a directory with more counts as over
/// the quota (so a tenant cannot make measuring it expensive).
const MAX_ENTRIES: u64 = 100_000;

/// One request's view of its app's quota: what to measure and the limit.
pub(crate) struct FilesQuota {
    pub(crate) usage: Arc<DiskUsage>,
    pub(crate) app: Arc<str>,
    pub(crate) dir: PathBuf,
    pub(crate) quota: u64,
}

impl FilesQuota {
    /// Whether the app was over its quota at the last measurement (see
    /// [`DiskUsage::over_quota`]).
    pub(crate) fn exceeded(&self) -> bool {
        self.usage.over_quota(&self.app, &self.dir, self.quota)
    }
}

/// The last known usage of one app's writable directory.
#[derive(Debug, Default)]
pub(crate) struct DiskUsage {
    /// Bytes on disk at the last measurement.
    used: AtomicU64,
    over: AtomicBool,
    measured_at: Mutex<Option<Instant>>,
    measuring: AtomicBool,
}

impl DiskUsage {
    /// Whether the app was over `quota` at the last measurement. Starts a
    /// new measurement of `dir` if that one is older than [`REFRESH`].
    pub(crate) fn over_quota(self: &Arc<Self>, app: &Arc<str>, dir: &Path, quota: u64) -> bool {
        let stale = {
            let measured_at = self.measured_at.lock().unwrap_or_else(|e| e.into_inner());
            measured_at.is_none_or(|at| at.elapsed() >= REFRESH)
        };
        if stale && !self.measuring.swap(true, Ordering::AcqRel) {
            let (usage, app, dir) = (self.clone(), app.clone(), dir.to_owned());
            let spawned = std::thread::Builder::new()
                .name("meshd-files-quota".into())
                .spawn(move || usage.measure(&app, &dir, quota));
            if spawned.is_err() {
                self.measuring.store(false, Ordering::Release);
            }
        }
        self.over.load(Ordering::Acquire)
    }

    fn measure(&self, app: &str, dir: &Path, quota: u64) {
        let (used, complete) = usage_of(dir);
        let over = used > quota || !complete;
        let was_over = self.over.swap(over, Ordering::AcqRel);
        self.used.store(used, Ordering::Release);
        *self.measured_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.measuring.store(false, Ordering::Release);
        if over && !was_over {
            tracing::warn!(
                app = %app, used, quota, dir = %dir.display(),
                "app is over its files quota (--files-quota): its guests cannot write files until it is under again"
            );
        } else if was_over && !over {
            tracing::info!(app = %app, used, quota, "app is under its files quota again");
        }
    }
}

/// Bytes on disk of everything under `dir` (not following symbolic links),
/// and whether the walk saw all of it (at most [`MAX_ENTRIES`]).
fn usage_of(dir: &Path) -> (u64, bool) {
    use std::os::unix::fs::MetadataExt;
    let mut used = 0u64;
    let mut entries = 0u64;
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(listing) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.flatten() {
            entries += 1;
            if entries > MAX_ENTRIES {
                return (used, false);
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            // Blocks, not the length: a sparse file takes what it uses.
            used = used.saturating_add(meta.blocks().saturating_mul(512));
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    (used, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_files_in_subdirectories_by_their_blocks() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/a"), vec![1u8; 64 << 10]).unwrap();
        std::fs::write(dir.path().join("b"), vec![1u8; 64 << 10]).unwrap();
        let (used, complete) = usage_of(dir.path());
        assert!(complete);
        assert!(used >= 128 << 10, "{used}");
        // A sparse file of 1 GiB takes (almost) nothing.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();
        let (with_sparse, _) = usage_of(dir.path());
        assert!(with_sparse < used + (1 << 20), "{with_sparse}");
    }
}
