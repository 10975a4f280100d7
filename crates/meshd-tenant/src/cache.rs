//! The on-disk cache of compiled components.
//!
//! An entry is keyed by the BLAKE3 hash of the `.wasm` and a hash of the
//! engine's compilation settings, so a changed app or a changed engine is a
//! miss, never a wrong hit. Beside each entry (`KEY.cwasm`) lies the BLAKE3
//! hash of the artifact (`KEY.cwasm.b3`): loading native code from disk must
//! never trust the bytes blindly, so a truncated, corrupt or foreign entry is
//! detected, recompiled and replaced. The bytes that were verified are the
//! bytes that are loaded: they are mapped from a private, unnamed copy, never
//! by reopening the entry, so idle apps' code can still be paged out while a
//! change to the entry cannot reach the running code.

use anyhow::{Context as _, Result};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
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
}

impl CacheOutcome {
    /// A short word for logs: `hit`, `miss`, `replaced` or `shared`.
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Replaced(_) => "replaced",
            CacheOutcome::Shared => "shared",
        }
    }
}

/// A directory of compiled artifacts for one engine configuration.
pub struct ArtifactCache {
    dir: PathBuf,
    engine_key: String,
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
        })
    }

    fn entry_path(&self, wasm_digest: &blake3::Hash) -> PathBuf {
        self.dir.join(format!(
            "{}-{}.cwasm",
            wasm_digest.to_hex(),
            self.engine_key
        ))
    }

    /// Returns the compiled form of the `.wasm` whose hash is `wasm_digest`:
    /// from the cache when a valid entry exists, otherwise from `compile`,
    /// storing the result. Blocking: call it off the async worker threads.
    pub fn load_or_compile<E>(
        &self,
        engine: &Engine,
        wasm_digest: &blake3::Hash,
        compile: impl FnOnce() -> Result<Component, E>,
    ) -> Result<(Component, CacheOutcome), E> {
        let path = self.entry_path(wasm_digest);
        let outcome = match std::fs::read(&path) {
            Ok(artifact) => match self.load_entry(engine, &path, &artifact) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(reason) => CacheOutcome::Replaced(reason),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
            Err(e) => CacheOutcome::Replaced(format!("unreadable: {e}")),
        };
        let component = compile()?;
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
