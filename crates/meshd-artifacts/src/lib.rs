//! meshd's artifact store: the bytes of every app version meshd has deployed,
//! named by their SHA-256 digest, and for each app the versions it keeps for
//! rollback.
//!
//! Sources of apps (the apps directory, the admin API, the mesh) hand the
//! deploy pipeline bytes; the pipeline puts them here before it compiles them,
//! so that what serves can always be found again by digest: after a restart,
//! for a rollback, or for a node catching up. Nothing in the store is ever
//! overwritten: a blob's name is its content.
//!
//! Layout under the root (meshd uses `--data-dir/artifacts`):
//!
//! ```text
//! blobs/sha256/<hex>   wasm and manifest bytes, immutable
//! apps/<name>.json     the app's kept versions, oldest first
//! tmp/                 files being written; renamed into place once complete
//! ```
//!
//! Every file is written to `tmp/`, synced, then renamed into place, so a
//! crash leaves either the old file or the new one, never half of one. Blobs
//! are verified against their digest when read.
//!
//! The store has one writer (the deploy pipeline); reads may come from
//! anywhere. Its calls are blocking file-system calls: run them on a blocking
//! thread.

mod digest;

pub use digest::{Digest, ParseDigestError};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Blobs younger than this are never collected: the pipeline stores a
/// version's bytes before it compiles and checks it, and records the version
/// only once it is live, so a fresh blob may not be named by any version list
/// yet. Well above the longest a deploy may take.
pub const GARBAGE_GRACE: Duration = Duration::from_secs(3600);

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system call failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the bytes to store failed.
    #[error("cannot read the artifact: {0}")]
    Read(#[source] io::Error),
    /// The bytes to store are larger than allowed.
    #[error("the artifact is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    /// The bytes do not have the digest they were announced with.
    #[error("digest mismatch: expected {expected}, the bytes have {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    /// No blob with this digest is stored.
    #[error("no artifact {0} in the store")]
    Missing(Digest),
    /// A stored blob no longer has its digest (disk corruption, or someone
    /// wrote into the store).
    #[error("stored artifact {digest} is corrupt (its bytes now hash to {actual})")]
    Corrupt { digest: Digest, actual: Digest },
    /// An app's version list cannot be parsed.
    #[error("the version list {} is unreadable: {source}", path.display())]
    BadHistory {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The name cannot be an app's (it would not be a safe file name).
    #[error("{0:?} is not a valid app name")]
    BadName(String),
}

/// One deployed version of an app: its code, its manifest, and when and
/// from where it was deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVersion {
    /// The digest of the `.wasm`.
    pub wasm: Digest,
    /// The digest of the manifest text, if the version has one.
    pub manifest: Option<Digest>,
    /// When this version was last deployed.
    #[serde(with = "rfc3339")]
    pub deployed_at: SystemTime,
    /// The source that deployed it (e.g. `dir`, `api`, `mesh`).
    pub origin: String,
}

impl StoredVersion {
    /// Whether `other` is the same code with the same manifest.
    pub fn same_content(&self, other: &StoredVersion) -> bool {
        self.wasm == other.wasm && self.manifest == other.manifest
    }
}

/// The version list of one app, as stored in `apps/<name>.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    /// Oldest first; the last one is the newest deployed.
    versions: Vec<StoredVersion>,
}

/// The store. Cheap to create; holds no open files.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
    keep: usize,
    grace: Duration,
}

impl ArtifactStore {
    /// Opens (creating if needed) the store at `root`, keeping at most
    /// `keep` versions per app (at least one). Files left in `tmp/` by a
    /// crash are removed.
    pub fn open(root: &Path, keep: usize) -> Result<Self, StoreError> {
        let store = ArtifactStore {
            root: root.to_owned(),
            keep: keep.max(1),
            grace: GARBAGE_GRACE,
        };
        for dir in [store.blobs_dir(), store.apps_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_error("cannot create", &dir))?;
        }
        let tmp = store.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(io_error("cannot list", &tmp))? {
            let path = entry.map_err(io_error("cannot list", &tmp))?.path();
            // A leftover we cannot remove only wastes space.
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove a partial artifact");
            }
        }
        Ok(store)
    }

    /// The same store with another grace period for garbage collection
    /// (default [`GARBAGE_GRACE`]); zero collects unrecorded blobs at once.
    pub fn with_garbage_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Stores `bytes` and returns their digest. Storing bytes already there
    /// changes nothing.
    pub fn put(&self, bytes: &[u8]) -> Result<Digest, StoreError> {
        self.put_reader(bytes, u64::MAX, None)
    }

    /// Stores what `reader` yields, up to `limit` bytes, hashing as it
    /// writes, and returns the digest. With `expected`, bytes of any other
    /// digest are refused (nothing is stored). Reading stops one byte past
    /// the limit: a larger artifact is refused without being read whole.
    pub fn put_reader(
        &self,
        mut reader: impl Read,
        limit: u64,
        expected: Option<&Digest>,
    ) -> Result<Digest, StoreError> {
        let (tmp_path, mut file) = self.temp_file()?;
        let cleanup = TempGuard(&tmp_path);
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::Read(e)),
            };
            written += n as u64;
            if written > limit {
                return Err(StoreError::TooLarge { limit });
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n])
                .map_err(io_error("cannot write", &tmp_path))?;
        }
        let digest = Digest::from_bytes(hasher.finalize().into());
        if let Some(expected) = expected {
            if *expected != digest {
                return Err(StoreError::DigestMismatch {
                    expected: *expected,
                    actual: digest,
                });
            }
        }
        let path = self.blob_path(&digest);
        if path.exists() {
            // Same name, same content. Freshen it so that garbage collection
            // leaves it alone until it is recorded.
            let _ = File::options()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            return Ok(digest);
        }
        file.sync_all()
            .map_err(io_error("cannot sync", &tmp_path))?;
        drop(file);
        fs::rename(&tmp_path, &path).map_err(io_error("cannot move into place", &path))?;
        cleanup.disarm();
        self.sync_dir(&self.blobs_dir());
        Ok(digest)
    }

    /// The bytes stored under `digest`, verified against it.
    pub fn get(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Missing(*digest))
            }
            Err(e) => return Err(io_error("cannot read", &path)(e)),
        };
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::Corrupt {
                digest: *digest,
                actual,
            });
        }
        Ok(bytes)
    }

    /// Whether a blob with this digest is stored (not verified).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// The kept versions of `app`, oldest first (empty if none).
    pub fn versions(&self, app: &str) -> Result<Vec<StoredVersion>, StoreError> {
        Ok(self.read_history(app)?.versions)
    }

    /// Records that `version` of `app` was deployed: it becomes the newest
    /// (an earlier entry with the same content moves to the end), the
    /// oldest beyond the keep count are forgotten, and blobs no app keeps
    /// any more are deleted. Both blobs must be stored already. Returns the
    /// versions now kept, oldest first.
    pub fn record(
        &self,
        app: &str,
        version: StoredVersion,
    ) -> Result<Vec<StoredVersion>, StoreError> {
        for digest in std::iter::once(&version.wasm).chain(version.manifest.as_ref()) {
            if !self.contains(digest) {
                return Err(StoreError::Missing(*digest));
            }
        }
        let mut history = self.read_history(app)?;
        history.versions.retain(|v| !v.same_content(&version));
        history.versions.push(version);
        let excess = history.versions.len().saturating_sub(self.keep);
        history.versions.drain(..excess);
        self.write_history(app, &history)?;
        if excess > 0 {
            self.collect_garbage()?;
        }
        Ok(history.versions)
    }

    /// Forgets `app` and every version it kept; blobs no other app keeps are
    /// deleted.
    pub fn forget(&self, app: &str) -> Result<(), StoreError> {
        let path = self.history_path(app)?;
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error("cannot remove", &path)(e)),
        }
        self.sync_dir(&self.apps_dir());
        self.collect_garbage()?;
        Ok(())
    }

    /// The apps with kept versions, by name.
    pub fn apps(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.apps_dir();
        let mut apps = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_error("cannot list", &dir))? {
            let path = entry.map_err(io_error("cannot list", &dir))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                if let Some(name) = path.file_stem().and_then(|s| s.to_str()) {
                    if is_valid_name(name) {
                        apps.push(name.to_owned());
                    }
                }
            }
        }
        apps.sort();
        Ok(apps)
    }

    /// Deletes every blob that no app's version list names and that is older
    /// than the grace period. Returns how many were deleted.
    pub fn collect_garbage(&self) -> Result<usize, StoreError> {
        let mut kept = BTreeSet::new();
        for app in self.apps()? {
            for version in self.versions(&app)? {
                kept.insert(version.wasm.to_hex());
                if let Some(manifest) = version.manifest {
                    kept.insert(manifest.to_hex());
                }
            }
        }
        let dir = self.blobs_dir();
        let mut deleted = 0;
        for entry in fs::read_dir(&dir).map_err(io_error("cannot list", &dir))? {
            let path = entry.map_err(io_error("cannot list", &dir))?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.parse::<Digest>().is_err() || kept.contains(name) {
                continue;
            }
            let young = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < self.grace);
            if !young {
                fs::remove_file(&path).map_err(io_error("cannot remove", &path))?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn read_history(&self, app: &str) -> Result<History, StoreError> {
        let path = self.history_path(app)?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| StoreError::BadHistory { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(History::default()),
            Err(e) => Err(io_error("cannot read", &path)(e)),
        }
    }

    fn write_history(&self, app: &str, history: &History) -> Result<(), StoreError> {
        let path = self.history_path(app)?;
        let json = serde_json::to_vec_pretty(history).map_err(|source| StoreError::BadHistory {
            path: path.clone(),
            source,
        })?;
        let (tmp_path, mut file) = self.temp_file()?;
        let cleanup = TempGuard(&tmp_path);
        file.write_all(&json)
            .and_then(|()| file.sync_all())
            .map_err(io_error("cannot write", &tmp_path))?;
        drop(file);
        fs::rename(&tmp_path, &path).map_err(io_error("cannot move into place", &path))?;
        cleanup.disarm();
        self.sync_dir(&self.apps_dir());
        Ok(())
    }

    /// A new, uniquely named file in `tmp/`.
    fn temp_file(&self) -> Result<(PathBuf, File), StoreError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tmp = self.tmp_dir();
        loop {
            let name = format!(
                "{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let path = tmp.join(name);
            match File::options().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_error("cannot create", &path)(e)),
            }
        }
    }

    /// Makes a rename in `dir` durable. Best effort: a failure here means a
    /// crash might forget the newest change, which the source will send
    /// again.
    fn sync_dir(&self, dir: &Path) {
        if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
            tracing::debug!(dir = %dir.display(), error = %e, "cannot sync the directory");
        }
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    fn apps_dir(&self) -> PathBuf {
        self.root.join("apps")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.to_hex())
    }

    fn history_path(&self, app: &str) -> Result<PathBuf, StoreError> {
        if !is_valid_name(app) {
            return Err(StoreError::BadName(app.to_owned()));
        }
        Ok(self.apps_dir().join(format!("{app}.json")))
    }
}

/// App names as meshd accepts them (ASCII letters, digits, `-` and `_`,
/// starting with a letter or digit): always a safe file name.
fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn io_error<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Removes a temporary file unless disarmed (it was renamed into place).
struct TempGuard<'a>(&'a Path);

impl TempGuard<'_> {
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for TempGuard<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

/// `SystemTime` as an RFC 3339 string (seconds precision), for the version
/// lists people read.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_seconds(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
