//! The on-disk cache of compiled components.
//!
//! An entry is keyed by the SHA-256 digest of the `.wasm` (the digest the
//! artifact store and the logs name a version by, so a deploy hashes its
//! bytes once) and a hash of the engine's compilation settings, so a changed
//! app or a changed engine is a miss, never a wrong hit. Entries of meshd
//! before 2026-11-30, named by the BLAKE3 hash of the `.wasm`, are renamed
//! on their first use. Beside each entry (`KEY.cwasm`) lies the BLAKE3
//! hash of the artifact (`KEY.cwasm.b3`): loading native code from disk must
//! never trust the bytes blindly, so a truncated, corrupt or foreign entry is
//! detected, recompiled and replaced. The bytes that were verified are the
//! bytes that are loaded: they are mapped from a private, unnamed copy, never
//! by reopening the entry, so idle apps' code can still be paged out while a
//! change to the entry cannot reach the running code.

use anyhow::{Context as _, Result};
use meshd_artifacts::Digest;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use wasmtime::component::Component;
use wasmtime::Engine;

/// Where a compiled component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Deserialized from a verified cache entry.
    Hit,
    /// Not cached yet: compiled and stored.
    Miss,
    /// An entry existed but was unusable (the reason is given): compiled and
    /// replaced.
    Replaced(String),
    /// Another loaded version has the same bytes: its compiled code is
    /// shared, nothing was loaded.
    Shared,
    /// Not loaded yet: the same code with the same settings passed its
    /// pre-traffic check before, so it is loaded on its first request.
    Unloaded,
}

impl CacheOutcome {
    /// A short word for logs: `hit`, `miss`, `replaced`, `shared` or
    /// `unloaded`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Replaced(_) => "replaced",
            CacheOutcome::Shared => "shared",
            CacheOutcome::Unloaded => "unloaded",
        }
    }
}

/// The longest a load waits for another process's compile of the same
/// `.wasm` before compiling it too.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
/// How often a waiting load looks at the lock again.
const LOCK_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// A directory of compiled artifacts for one engine configuration.
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
    /// Which entries passed their pre-traffic check, and with which settings
    /// (see [`ArtifactCache::was_checked`]), as `DIGEST/FINGERPRINT`. Read
    /// from one listing of the directory at the first question: a start-up
    /// asks for every app, and a read of a marker file per app cost one disk
    /// read each on a cold page cache.
    checked: OnceLock<Mutex<HashSet<String>>>,
}

impl ArtifactCache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path, engine: &Engine) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create cache directory {}", dir.display()))?;
        let mut hasher = Blake3Hasher(blake3::Hasher::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hasher.0.finalize().to_hex()[..16].to_owned();
        Ok(ArtifactCache {
            dir: dir.to_owned(),
            engine_key,
            checked: OnceLock::new(),
        })
    }

    fn entry_path(&self, wasm_digest: &Digest) -> PathBuf {
        self.entry_path_of(&wasm_digest.to_hex())
    }

    /// The entry named by `hex` (the digest of its `.wasm`, in hex).
    fn entry_path_of(&self, hex: &str) -> PathBuf {
        self.dir.join(format!("{hex}-{}.cwasm", self.engine_key))
    }

    /// Returns the compiled form of the `.wasm` whose digest is
    /// `wasm_digest`: from the cache when a valid entry exists, otherwise
    /// from `compile` of the bytes `wasm` gives (only called on a miss),
    /// storing the result. Blocking: call it off the async worker threads.
    ///
    /// A miss takes the entry's lock file first, so processes sharing the
    /// cache directory (several nodes on one host, or the old and new meshd
    /// of a restart) compile a new `.wasm` once: the others wait for the
    /// entry and load it.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        wasm_digest: &Digest,
        wasm: impl FnOnce() -> Result<Vec<u8>, E>,
        compile: impl FnOnce(&[u8]) -> Result<Component, E>,
    ) -> Result<(Component, CacheOutcome), E> {
        let path = self.entry_path(wasm_digest);
        if let Ok(component) = self.read_entry(engine, &path) {
            return Ok((component, CacheOutcome::Hit));
        }
        let _lock = self.lock_entry(&path);
        let outcome = match self.read_entry(engine, &path) {
            Ok(component) => return Ok((component, CacheOutcome::Hit)),
            Err(outcome) => outcome,
        };
        let wasm = wasm()?;
        if outcome == CacheOutcome::Miss && self.adopt_old_entry(&wasm, wasm_digest, None) {
            if let Ok(component) = self.read_entry(engine, &path) {
                return Ok((component, CacheOutcome::Hit));
            }
        }
        let component = compile(&wasm)?;
        match self.store_entry(&path, &component) {
            // Load the stored bytes from a private file, so this process too
            // keeps the code file-backed rather than in anonymous memory.
            Ok(artifact) => match self.map_private_copy(engine, &artifact) {
                Ok(mapped) => Ok((mapped, outcome)),
                Err(_) => Ok((component, outcome)),
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot write compiled artifact to the cache");
                Ok((component, outcome))
            }
        }
    }

    /// The entry at `path`, loaded, or why it could not be: a miss or the
    /// reason it must be replaced.
    fn read_entry(&self, engine: &Engine, path: &Path) -> Result<Component, CacheOutcome> {
        match std::fs::read(path) {
            Ok(artifact) => self
                .load_entry(engine, path, &artifact)
                .map_err(CacheOutcome::Replaced),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CacheOutcome::Miss),
            Err(e) => Err(CacheOutcome::Replaced(format!("unreadable: {e}"))),
        }
    }

    /// Takes the lock file of the entry at `path` (`KEY.cwasm.lock`, an
    /// advisory lock the kernel drops if its holder dies), waiting at most
    /// [`LOCK_WAIT`] for another compile of the same `.wasm`. `None` (no
    /// lock: compile anyway) if it cannot be taken in time or at all; the
    /// lock only saves work, correctness never depends on it.
    fn lock_entry(&self, path: &Path) -> Option<std::fs::File> {
        let mut name = path.as_os_str().to_owned();
        name.push(".lock");
        let file = match std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(&name))
        {
            Ok(file) => file,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot open the cache entry's lock file; compiling without it");
                return None;
            }
        };
        let start = std::time::Instant::now();
        loop {
            match file.try_lock() {
                Ok(()) => return Some(file),
                Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(LOCK_POLL);
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    tracing::warn!(path = %path.display(), waited = ?LOCK_WAIT, "another process holds the cache entry's lock for too long; compiling here too");
                    return None;
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::debug!(path = %path.display(), error = %e, "cannot lock the cache entry; compiling without the lock");
                    return None;
                }
            }
        }
    }

    /// Checks `artifact` (the bytes read from `path`) against its checksum
    /// file, then loads exactly those bytes: what is verified is what runs.
    /// `path` itself is never opened again, so a rewrite of the entry after
    /// the read cannot slip in unverified code, and truncating it cannot
    /// pull pages from under the running code (SIGBUS).
    fn load_entry(
        &self,
        engine: &Engine,
        path: &Path,
        artifact: &[u8],
    ) -> Result<Component, String> {
        let expected =
            std::fs::read(checksum_path(path)).map_err(|e| format!("no checksum ({e})"))?;
        if blake3::hash(artifact).as_bytes().as_slice() != expected.as_slice() {
            return Err("checksum mismatch (corrupt or truncated entry)".into());
        }
        self.map_private_copy(engine, artifact)
            .map_err(|e| format!("incompatible entry: {e}"))
    }

    /// Loads verified `artifact` bytes. They are written to a file of this
    /// process's own, which has no name in any directory (`O_TMPFILE`, or
    /// unlinked at once), and mapped from there: nobody else can open,
    /// rewrite or truncate it, and its pages stay file-backed, so the kernel
    /// can drop the code of idle apps under memory pressure. Where that file
    /// cannot be made or mapped (no `/proc`), the bytes are deserialized
    /// from memory instead, which is just as safe but keeps them resident.
    fn map_private_copy(&self, engine: &Engine, artifact: &[u8]) -> Result<Component, String> {
        match self.write_private_copy(artifact) {
            Ok(file) => {
                use std::os::fd::AsRawFd as _;
                // wasmtime maps by path; this path names the open file itself.
                let path = format!("/proc/self/fd/{}", file.as_raw_fd());
                // SAFETY: the bytes were produced by `Component::serialize`
                // (in this process, or in this cache with a matching
                // checksum: see the module docs on trust), and wasmtime checks
                // that they were compiled by this version with a compatible
                // configuration. The file is private to this process and
                // written once, before this call; nothing modifies it after.
                let mapped = unsafe { Component::deserialize_file(engine, &path) };
                // wasmtime holds its own handle (and mapping) of the file.
                drop(file);
                match mapped {
                    Ok(component) => return Ok(component),
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "cannot map a private copy of a compiled artifact; loading it from memory")
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot write a private copy of a compiled artifact; loading it from memory")
            }
        }
        // SAFETY: as above; wasmtime copies the bytes into memory of its own.
        unsafe { Component::deserialize(engine, artifact) }.map_err(|e| format!("{e:#}"))
    }

    fn write_private_copy(&self, artifact: &[u8]) -> std::io::Result<std::fs::File> {
        let mut file = tempfile::tempfile_in(&self.dir)?;
        file.write_all(artifact)?;
        Ok(file)
    }

    /// Writes the entry for `component` and returns the artifact written.
    fn store_entry(&self, path: &Path, component: &Component) -> Result<Vec<u8>> {
        let artifact = component.serialize().map_err(anyhow::Error::from)?;
        // Artifact first, checksum second, each written to a temporary file
        // and renamed into place: a reader never sees a half-written file,
        // and a crash in between leaves a mismatch that is recompiled.
        self.write_atomically(path, &artifact)?;
        self.write_atomically(&checksum_path(path), blake3::hash(&artifact).as_bytes())?;
        Ok(artifact)
    }

    fn write_atomically(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("cannot create a file in {}", self.dir.display()))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path)
            .with_context(|| format!("cannot rename into {}", path.display()))?;
        Ok(())
    }
}

impl ArtifactCache {
    /// Whether the `.wasm` of `wasm_digest` is cached and passed its
    /// pre-traffic check with settings of `fingerprint` (see
    /// [`ArtifactCache::mark_checked`]): such a version may start unloaded.
    ///
    /// Answered from the listing taken at the first call (and the markers
    /// written since): an entry removed since then is found on first use
    /// and compiled again; a marker another process wrote since is missed,
    /// and the version is checked again. Both are safe.
    pub(crate) fn was_checked(&self, wasm_digest: &Digest, fingerprint: &str) -> bool {
        self.checked_set()
            .contains(&checked_key(&wasm_digest.to_hex(), fingerprint))
    }

    /// Whether the `.wasm` of `wasm_digest` is known to have passed its
    /// check with settings of `fingerprint`, asking only what is in memory:
    /// never lists the directory, so an async task may ask. `false` when
    /// not known yet, which only costs a [`ArtifactCache::mark_checked`]
    /// that finds the marker there.
    pub(crate) fn is_known_checked(&self, wasm_digest: &Digest, fingerprint: &str) -> bool {
        self.checked.get().is_some_and(|set| {
            set.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&checked_key(&wasm_digest.to_hex(), fingerprint))
        })
    }

    /// Notes beside the entry (`KEY.cwasm.checked-FINGERPRINT`, empty) that
    /// the `.wasm` of `wasm_digest` instantiated with settings of
    /// `fingerprint`. Only saves work: a missing marker means the next start
    /// loads and checks the version as usual.
    pub(crate) fn mark_checked(&self, wasm_digest: &Digest, fingerprint: &str) {
        let key = checked_key(&wasm_digest.to_hex(), fingerprint);
        if self.checked_set().contains(&key) {
            return;
        }
        let entry = self.entry_path(wasm_digest);
        if !entry.is_file() {
            // The entry could not be stored: nothing to start from unloaded.
            return;
        }
        let path = checked_path(&entry, fingerprint);
        let written = std::fs::File::create(&path).and_then(|file| file.sync_all());
        match written {
            Ok(()) => {
                self.checked_set().insert(key);
            }
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot write the checked marker of a cache entry")
            }
        }
    }

    /// Renames the entry of `wasm` that a meshd from before 2026-11-30 left
    /// under the BLAKE3 hash of the `.wasm` to its name now (by
    /// `wasm_digest`), with its checksum and, given `fingerprint`, its
    /// checked marker of those settings: an upgrade neither recompiles nor
    /// checks again what it had. Whether an entry was adopted (it is then
    /// verified like any other when it is loaded). Blocking (a hash of
    /// `wasm` and a few renames); only called for a version the cache does
    /// not know by its digest.
    pub(crate) fn adopt_old_entry(
        &self,
        wasm: &[u8],
        wasm_digest: &Digest,
        fingerprint: Option<&str>,
    ) -> bool {
        let old_hex = blake3::hash(wasm).to_hex();
        let (old, new) = (self.entry_path_of(&old_hex), self.entry_path(wasm_digest));
        if !old.is_file() || new.exists() {
            return false;
        }
        // The checksum before the entry: a crash in between leaves either
        // the old entry without its checksum or the new one without it, both
        // found unusable on load and compiled again, never trusted.
        let moved = std::fs::rename(checksum_path(&old), checksum_path(&new))
            .and_then(|()| std::fs::rename(&old, &new));
        if let Err(e) = moved {
            tracing::debug!(entry = %old.display(), error = %e, "cannot rename a cache entry of the old name; compiling it again");
            return false;
        }
        if let Some(fingerprint) = fingerprint {
            let was_checked = self
                .checked_set()
                .remove(&checked_key(&old_hex, fingerprint));
            if was_checked
                && std::fs::rename(
                    checked_path(&old, fingerprint),
                    checked_path(&new, fingerprint),
                )
                .is_ok()
            {
                self.checked_set()
                    .insert(checked_key(&wasm_digest.to_hex(), fingerprint));
            }
        }
        true
    }

    fn checked_set(&self) -> MutexGuard<'_, HashSet<String>> {
        self.checked
            .get_or_init(|| Mutex::new(self.list_checked()))
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The `DIGEST/FINGERPRINT` of every marker in the directory whose entry
    /// is there too, for this engine. Markers of the old form are read.
    fn list_checked(&self) -> HashSet<String> {
        let entry_suffix = format!("-{}.cwasm", self.engine_key);
        let mut entries = HashSet::new();
        let mut markers = Vec::new();
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return HashSet::new();
        };
        for dirent in listing.flatten() {
            let name = dirent.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((digest, rest)) = name.split_once(&entry_suffix) else {
                continue;
            };
            match rest {
                "" => {
                    entries.insert(digest.to_owned());
                }
                ".checked" => {
                    // The old form, holding the fingerprint: read once and
                    // renamed to the new form, so later starts list it.
                    let legacy = dirent.path();
                    if let Ok(fingerprint) = std::fs::read_to_string(&legacy) {
                        let entry = self.dir.join(format!("{digest}{entry_suffix}"));
                        let _ = std::fs::rename(&legacy, checked_path(&entry, &fingerprint));
                        markers.push((digest.to_owned(), fingerprint));
                    }
                }
                _ => {
                    if let Some(fingerprint) = rest.strip_prefix(".checked-") {
                        markers.push((digest.to_owned(), fingerprint.to_owned()));
                    }
                }
            }
        }
        markers
            .into_iter()
            .filter(|(digest, _)| entries.contains(digest))
            .map(|(digest, fingerprint)| checked_key(&digest, &fingerprint))
            .collect()
    }
}

fn checked_key(digest_hex: &str, fingerprint: &str) -> String {
    format!("{digest_hex}/{fingerprint}")
}

/// `<entry>.cwasm.checked-FINGERPRINT`: the `.wasm` passed its pre-traffic
/// check with settings of that fingerprint. Empty: the name says it all, so
/// one listing of the directory answers for every app.
fn checked_path(entry: &Path, fingerprint: &str) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".checked-");
    name.push(fingerprint);
    PathBuf::from(name)
}

/// `<entry>.cwasm.checked` holding the fingerprint: the marker's old form.
#[cfg(test)]
fn legacy_checked_path(entry: &Path) -> PathBuf {
    let mut name = entry.as_os_str().to_owned();
    name.push(".checked");
    PathBuf::from(name)
}

/// `<entry>.cwasm.b3`: the BLAKE3 hash of the artifact.
fn checksum_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".b3");
    PathBuf::from(name)
}

/// Feeds `Hash` impls into BLAKE3, which is stable across Rust versions
/// (unlike `DefaultHasher`).
struct Blake3Hasher(blake3::Hasher);

impl Hasher for Blake3Hasher {
    fn finish(&self) -> u64 {
        let bytes = self.0.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&bytes.as_bytes()[..8]);
        u64::from_le_bytes(first)
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};

    /// The bytes every test "compiles" (text, which `Component::new` takes).
    fn wat() -> Result<Vec<u8>, wasmtime::Error> {
        Ok(b"(component)".to_vec())
    }

    /// Writes the entry of `(component)` and its checksum under the name
    /// `hex`, as a meshd of the old naming left them; returns the entry.
    fn leave_old_entry(cache: &ArtifactCache, engine: &Engine, hex: &str) -> PathBuf {
        let old = cache.entry_path_of(hex);
        let artifact = Component::new(engine, "(component)")
            .and_then(|c| c.serialize())
            .expect("artifact");
        std::fs::write(&old, &artifact).expect("old entry");
        std::fs::write(checksum_path(&old), blake3::hash(&artifact).as_bytes())
            .expect("old checksum");
        old
    }

    /// Loads `digest` from `cache`, failing the test if it would compile.
    fn load_without_compiling(
        cache: &ArtifactCache,
        engine: &Engine,
        digest: &Digest,
    ) -> CacheOutcome {
        let never = |_: &[u8]| -> Result<Component, wasmtime::Error> {
            panic!("an adopted entry is not compiled again")
        };
        cache
            .load_or_compile(engine, digest, wat, never)
            .expect("load")
            .1
    }

    /// An entry, its checksum and its checked marker left by a meshd that
    /// named entries by the BLAKE3 of the `.wasm` are renamed on first use:
    /// the version is neither compiled nor checked again.
    #[test]
    fn an_entry_of_the_old_name_is_adopted_not_compiled_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).expect("cache");
        let old_hex = blake3::hash(b"(component)").to_hex();
        let old = leave_old_entry(&cache, &engine, &old_hex);
        std::fs::write(checked_path(&old, "settings-a"), "").expect("old marker");

        // A start finds it by the settings it was checked with...
        let digest = Digest::of(b"(component)");
        let next = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(!next.was_checked(&digest, "settings-a"));
        assert!(next.adopt_old_entry(b"(component)", &digest, Some("settings-a")));
        assert!(next.was_checked(&digest, "settings-a"));
        assert!(!old.exists(), "renamed");
        // ...and its load is a hit, with no compile.
        assert_eq!(
            load_without_compiling(&next, &engine, &digest),
            CacheOutcome::Hit
        );
        let later = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(
            later.was_checked(&digest, "settings-a"),
            "the marker moved too"
        );

        // A load that misses adopts an old entry too (no fingerprint: its
        // marker stays behind, the version is checked again).
        let other = dir.path().join("other");
        let cache = ArtifactCache::open(&other, &engine).expect("cache");
        let old = leave_old_entry(&cache, &engine, &old_hex);
        assert_eq!(
            load_without_compiling(&cache, &engine, &digest),
            CacheOutcome::Hit
        );
        assert!(cache.entry_path(&digest).is_file() && !old.exists());
    }

    /// A version may start unloaded only if its entry exists and it was
    /// checked with the same settings.
    #[test]
    fn the_checked_marker_needs_the_entry_and_the_same_settings() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).expect("cache");
        let digest = Digest::of(b"(component)");
        cache.mark_checked(&digest, "settings-a");
        assert!(!cache.was_checked(&digest, "settings-a"), "no entry yet");
        cache
            .load_or_compile(&engine, &digest, wat, |wasm| Component::new(&engine, wasm))
            .expect("load");
        assert!(
            !cache.was_checked(&digest, "settings-a"),
            "marked before the entry existed"
        );
        assert!(!cache.is_known_checked(&digest, "settings-a"));
        cache.mark_checked(&digest, "settings-a");
        assert!(cache.was_checked(&digest, "settings-a"));
        assert!(cache.is_known_checked(&digest, "settings-a"));
        assert!(!cache.was_checked(&digest, "settings-b"));
        assert!(!cache.is_known_checked(&digest, "settings-b"));
        cache.mark_checked(&digest, "settings-b");
        assert!(cache.was_checked(&digest, "settings-b"));
        assert!(cache.was_checked(&digest, "settings-a"), "both passed");

        // The next process finds the markers in one listing of the directory,
        // and knows of none before it.
        let next = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(!next.is_known_checked(&digest, "settings-a"));
        assert!(next.was_checked(&digest, "settings-a"));
        assert!(next.was_checked(&digest, "settings-b"));
        assert!(!next.was_checked(&digest, "settings-c"));
        // ...but not once the entry is gone.
        std::fs::remove_file(next.entry_path(&digest)).expect("remove the entry");
        let after = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(!after.was_checked(&digest, "settings-a"));
    }

    /// A marker of the old form (`KEY.cwasm.checked` holding the settings'
    /// fingerprint) still counts, and is renamed to the new form.
    #[test]
    fn a_marker_of_the_old_form_counts_and_is_renamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let digest = Digest::of(b"(component)");
        let cache = ArtifactCache::open(dir.path(), &engine).expect("cache");
        cache
            .load_or_compile(&engine, &digest, wat, |wasm| Component::new(&engine, wasm))
            .expect("load");
        let legacy = legacy_checked_path(&cache.entry_path(&digest));
        std::fs::write(&legacy, "settings-a").expect("old marker");
        let next = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(next.was_checked(&digest, "settings-a"));
        assert!(!next.was_checked(&digest, "settings-b"));
        assert!(!legacy.exists(), "renamed to the new form");
        let last = ArtifactCache::open(dir.path(), &engine).expect("cache");
        assert!(last.was_checked(&digest, "settings-a"));
    }

    /// Two loads of one new `.wasm` at once (as two processes sharing the
    /// directory would: each opens the lock file itself) compile it once;
    /// the other waits and loads the entry.
    #[test]
    fn a_new_wasm_is_compiled_once_by_loads_sharing_the_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = Engine::default();
        let digest = Digest::of(b"(component)");
        let compiles = Arc::new(AtomicUsize::new(0));
        let start = Arc::new(Barrier::new(2));
        let loads: Vec<_> = (0..2)
            .map(|_| {
                let (dir, engine) = (dir.path().to_owned(), engine.clone());
                let (compiles, start) = (compiles.clone(), start.clone());
                std::thread::spawn(move || {
                    let cache = ArtifactCache::open(&dir, &engine).expect("cache");
                    start.wait();
                    let (_, outcome) = cache
                        .load_or_compile(&engine, &digest, wat, |wasm| {
                            compiles.fetch_add(1, Ordering::SeqCst);
                            // Long enough for the other load to find the lock taken.
                            std::thread::sleep(std::time::Duration::from_millis(300));
                            Component::new(&engine, wasm)
                        })
                        .expect("load");
                    outcome
                })
            })
            .collect();
        let mut outcomes: Vec<_> = loads
            .into_iter()
            .map(|load| load.join().expect("thread").as_str())
            .collect();
        outcomes.sort();
        assert_eq!(compiles.load(Ordering::SeqCst), 1);
        assert_eq!(outcomes, ["hit", "miss"]);
    }
}
