//! What a source of apps asks the deploy pipeline to do, and what it
//! answers.
//!
//! Every source (the apps directory, the admin API, the mesh) speaks only
//! this: it sends [`Change`]s through a [`PipelineHandle`] and gets each one's
//! outcome back. How a change is applied (compile, check, conflicts, the
//! atomic switch, the drain) is the pipeline's alone.

use bytes::Bytes;
use meshd_artifacts::Digest;
use meshd_registry::{Origin, Refused};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::OnceLock;
use tokio::sync::{mpsc, oneshot};

/// One version of an app, as a source hands it over.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// The app's name (validated by the source: letters, digits, `-`, `_`).
    pub name: String,
    /// The source it comes from.
    pub origin: Origin,
    /// The `.wasm` code: its bytes, or a file known to hold them.
    pub wasm: Wasm,
    /// The manifest text (`NAME.toml`), if any.
    pub manifest: Option<String>,
    /// How messages name the code: a file path for the directory, `upload`
    /// for the admin API.
    pub wasm_label: String,
    /// How messages name the manifest (`None`: it has none).
    pub manifest_label: Option<String>,
}

/// An app version's code: its bytes in memory, or a file of the apps
/// directory that the directory's index knows unchanged since it was read
/// and hashed (`dir_index`). A start-up then stats such a file instead of
/// reading and hashing it; its bytes are read only if they must be compiled
/// or stored.
#[derive(Debug, Clone)]
pub struct Wasm(Code);

#[derive(Debug, Clone)]
enum Code {
    /// The bytes, and their SHA-256 once someone asked for it.
    InMemory {
        bytes: Bytes,
        digest: OnceLock<Digest>,
    },
    /// A file of `len` bytes whose SHA-256 is `digest`.
    Unread {
        path: PathBuf,
        len: u64,
        digest: Digest,
    },
}

impl Wasm {
    /// Bytes in memory whose SHA-256 the caller computed already.
    pub fn hashed(bytes: Bytes, digest: Digest) -> Wasm {
        Wasm(Code::InMemory {
            bytes,
            digest: OnceLock::from(digest),
        })
    }

    /// The file at `path`, of `len` bytes and SHA-256 `digest`, not read.
    pub fn unread(path: PathBuf, len: u64, digest: Digest) -> Wasm {
        Wasm(Code::Unread { path, len, digest })
    }

    /// The size of the code in bytes.
    pub fn len(&self) -> u64 {
        match &self.0 {
            Code::InMemory { bytes, .. } => bytes.len() as u64,
            Code::Unread { len, .. } => *len,
        }
    }

    /// Whether the code is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The SHA-256 of the code (computed on first use for bytes in memory:
    /// call it on a blocking thread).
    pub fn digest(&self) -> Digest {
        match &self.0 {
            Code::InMemory { bytes, digest } => *digest.get_or_init(|| Digest::of(bytes)),
            Code::Unread { digest, .. } => *digest,
        }
    }

    /// The bytes, if they are in memory.
    pub fn in_memory(&self) -> Option<&Bytes> {
        match &self.0 {
            Code::InMemory { bytes, .. } => Some(bytes),
            Code::Unread { .. } => None,
        }
    }

    /// The bytes: those in memory, or the file's, which must still have the
    /// digest it was known by. Blocking for a file.
    pub fn read(&self) -> Result<Bytes, String> {
        match &self.0 {
            Code::InMemory { bytes, .. } => Ok(bytes.clone()),
            Code::Unread { path, len, digest } => {
                use std::io::Read as _;
                let cannot_read =
                    |e: std::io::Error| format!("cannot read {}: {e}", path.display());
                let file = std::fs::File::open(path).map_err(cannot_read)?;
                // One byte past the known length at most: a file that grew
                // is not read whole.
                let mut bytes = Vec::with_capacity(usize::try_from(*len).unwrap_or(0));
                file.take(len.saturating_add(1))
                    .read_to_end(&mut bytes)
                    .map_err(cannot_read)?;
                if bytes.len() as u64 != *len || Digest::of(&bytes) != *digest {
                    return Err(format!(
                        "{} changed since it was listed; it is read again at the next pass",
                        path.display()
                    ));
                }
                Ok(bytes.into())
            }
        }
    }
}

impl From<Bytes> for Wasm {
    fn from(bytes: Bytes) -> Wasm {
        Wasm(Code::InMemory {
            bytes,
            digest: OnceLock::new(),
        })
    }
}

impl From<Vec<u8>> for Wasm {
    fn from(bytes: Vec<u8>) -> Wasm {
        Wasm::from(Bytes::from(bytes))
    }
}

/// Where a canary's version comes from.
#[derive(Debug, Clone)]
pub enum CanarySource {
    /// New code (and manifest), uploaded with the request.
    Upload(AppSpec),
    /// A version the app keeps, by digest (64 hex digits, or the first 12).
    Kept(String),
}

/// A change to what meshd serves.
#[derive(Debug, Clone)]
pub enum Change {
    /// Deploy this version of an app (new, or replacing its live version).
    Upsert(AppSpec),
    /// Unmount an app after its requests drain, and forget its versions.
    Remove {
        /// The app.
        name: String,
        /// The source asking (must own the app).
        origin: Origin,
    },
    /// Everything one source has: apps of that origin not in it are
    /// removed; apps of other origins are left alone.
    Snapshot(Snapshot),
    /// Serve a kept version again: the one before the live one, or `to`.
    Rollback {
        /// The app.
        name: String,
        /// The source asking (must own the app).
        origin: Origin,
        /// A kept version's digest (64 hex digits, or the first 12).
        to: Option<String>,
    },
    /// Start a canary: a second version takes `percent` of the requests.
    Canary {
        /// The app (must be live).
        name: String,
        /// The source asking (must own the app).
        origin: Origin,
        /// The version to try.
        from: CanarySource,
        /// Its share of the requests, 1–99.
        percent: u8,
        /// A request header that keeps one client on one side.
        sticky_header: Option<http::HeaderName>,
    },
    /// The canary becomes the live version; the old one drains.
    Promote {
        /// The app.
        name: String,
        /// The source asking (must own the app).
        origin: Origin,
    },
    /// The canary stops and drains; the live version takes all requests.
    Abort {
        /// The app.
        name: String,
        /// The source asking (must own the app).
        origin: Origin,
    },
}

/// The full set of one source's apps, with the ones that changed since its
/// last snapshot.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The source.
    pub origin: Origin,
    /// Every app the source has now (changed or not, readable or not).
    pub present: BTreeSet<String>,
    /// The apps whose files changed (or that are new): deployed.
    pub changed: Vec<AppSpec>,
    /// Apps whose files the source could not read: refused as they are.
    pub unreadable: Vec<(String, Refused)>,
}

/// What the pipeline did with a change it accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// A new version is live (or, for a canary, on trial).
    Deployed,
    /// The same code and manifest were live already: nothing changed.
    Unchanged,
    /// The app is unmounted (its requests drain) and forgotten.
    Removed,
    /// The outcome of each changed or unreadable app of a snapshot (apps it
    /// did not change are not listed).
    Snapshot(BTreeMap<String, Result<Applied, Refused>>),
}

/// A change with the way back to whoever sent it.
#[derive(Debug)]
pub struct Request {
    /// The change.
    pub change: Change,
    /// Where the outcome goes (the sender may have given up: no matter).
    pub reply: oneshot::Sender<Result<Applied, Refused>>,
}

/// How sources talk to the pipeline. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PipelineHandle {
    requests: mpsc::Sender<Request>,
}

impl PipelineHandle {
    /// A handle sending into `requests` (the pipeline task holds the
    /// receiver).
    pub fn new(requests: mpsc::Sender<Request>) -> Self {
        PipelineHandle { requests }
    }

    /// Sends `change` and waits until the pipeline has decided it (and, if
    /// it went through, published the result to the registry).
    pub async fn apply(&self, change: Change) -> Result<Applied, Refused> {
        let (reply, outcome) = oneshot::channel();
        self.requests
            .send(Request { change, reply })
            .await
            .map_err(|_| Refused::Stopped)?;
        outcome.await.unwrap_or(Err(Refused::Stopped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unread_file_is_read_only_while_it_has_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hello.wasm");
        std::fs::write(&path, b"\0asm first").unwrap();
        let wasm = Wasm::unread(path.clone(), 10, Digest::of(b"\0asm first"));
        assert_eq!(wasm.len(), 10);
        assert_eq!(wasm.digest(), Digest::of(b"\0asm first"));
        assert!(wasm.in_memory().is_none());
        assert_eq!(&wasm.read().unwrap()[..], b"\0asm first");

        // Rewritten since it was listed: same length, other bytes; then
        // longer. Neither is taken for the code of the digest.
        std::fs::write(&path, b"\0asm other").unwrap();
        let error = wasm.read().unwrap_err();
        assert!(error.contains("changed since it was listed"), "{error}");
        std::fs::write(&path, b"\0asm first and more").unwrap();
        assert!(wasm.read().is_err());
    }

    #[test]
    fn bytes_in_memory_are_hashed_once_when_asked() {
        let wasm = Wasm::from(b"\0asm code".to_vec());
        assert_eq!(wasm.len(), 9);
        assert_eq!(wasm.digest(), Digest::of(b"\0asm code"));
        assert_eq!(&wasm.read().unwrap()[..], b"\0asm code");
        assert!(wasm.in_memory().is_some());
    }
}
