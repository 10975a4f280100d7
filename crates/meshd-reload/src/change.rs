//! What a source of apps asks the deploy pipeline to do, and what it
//! answers.
//!
//! Every source (the apps directory, the admin API, the mesh) speaks only
//! this: it sends [`Change`]s through a [`PipelineHandle`] and gets each one's
//! outcome back. How a change is applied (compile, check, conflicts, the
//! atomic switch, the drain) is the pipeline's alone.

use bytes::Bytes;
use meshd_registry::{Origin, Refused};
use std::collections::{BTreeMap, BTreeSet};
use tokio::sync::{mpsc, oneshot};

/// One version of an app, as a source hands it over.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// The app's name (validated by the source: letters, digits, `-`, `_`).
    pub name: String,
    /// The source it comes from.
    pub origin: Origin,
    /// The `.wasm` bytes.
    pub wasm: Bytes,
    /// The manifest text (`NAME.toml`), if any.
    pub manifest: Option<String>,
    /// How messages name the code: a file path for the directory, `upload`
    /// for the admin API.
    pub wasm_label: String,
    /// How messages name the manifest (`None`: it has none).
    pub manifest_label: Option<String>,
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
