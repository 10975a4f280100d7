//! The on-disk cache of compiled components.
//!
//! An entry is keyed by the BLAKE3 hash of the `.wasm` and a hash of the
//! engine's compilation settings, so a changed app or a changed engine is a
//! miss, never a wrong hit. Beside each entry (`KEY.cwasm`) lies the BLAKE3
//! hash of the artifact (`KEY.cwasm.b3`): loading native code from disk must
//! never trust the bytes blindly, so a truncated, corrupt or foreign entry is
//! detected, recompiled and replaced. A valid entry is mapped from its file,
//! not copied, so idle apps' code can be paged out.

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

    /// Returns the compiled form of `wasm`, from the cache when a valid entry
    /// exists, otherwise compiling it and storing the result. Blocking: call
    /// it off the async worker threads.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        wasm_digest: &blake3::Hash,
    ) -> Result<(Component, CacheOutcome)> {
        let path = self.entry_path(wasm_digest);
        let outcome = match std::fs::read(&path) {
            Ok(artifact) => match self.load_entry(engine, &path, &artifact) {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(reason) => CacheOutcome::Replaced(reason),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => CacheOutcome::Miss,
            Err(e) => CacheOutcome::Replaced(format!("unreadable: {e}")),
        };
        let component = Component::from_binary(engine, wasm).map_err(anyhow::Error::from)?;
        match self.store_entry(&path, &component) {
            // Use the stored entry from now on, so this process too keeps the
            // code file-backed rather than in anonymous memory.
            Ok(artifact) => match self.load_entry(engine, &path, &artifact) {
                Ok(mapped) => Ok((mapped, outcome)),
                Err(_) => Ok((component, outcome)),
            },
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot write compiled artifact to the cache");
                Ok((component, outcome))
            }
        }
    }

    /// Checks `artifact` (the bytes of `path`) against its checksum file,
    /// then maps `path` into memory: the code stays file-backed, so pages of
    /// apps that are not running can be dropped by the kernel.
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
        // SAFETY: the file was produced by `Component::serialize` in this
        // cache (its checksum matches what we wrote), and wasmtime itself
        // checks that it was compiled by this version with a compatible
        // configuration. The cache directory belongs to meshd, not to tenants
        // (meshd refuses a cache directory inside the apps directory).
        unsafe { Component::deserialize_file(engine, path) }
            .map_err(|e| format!("incompatible entry: {e}"))
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
