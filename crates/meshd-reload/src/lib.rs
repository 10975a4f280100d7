//! The reload machinery of meshd: the deploy pipeline and the apps
//! directory as a source of apps.
//!
//! Sources of apps send [`Change`]s through a [`PipelineHandle`]. The
//! [`Pipeline`], one task and the only writer of the registry, applies them
//! make-before-break: a new version is compiled and pre-instantiated (and
//! health-checked) before the table is switched, a broken new version never
//! replaces a working one, and a replaced or removed version drains its
//! in-flight requests before it is retired. Each change is answered with
//! what happened or a typed refusal.
//!
//! [`DirSource`] turns the apps directory into changes; [`DirWatch`] runs it
//! whenever the directory changes. The admin API (meshd-admin) is another
//! source. [`expire_idle_instances`] drops reused instances that sat idle too
//! long.
#![deny(missing_docs)]

mod atomic_file;
mod change;
mod dir_index;
mod dir_source;
mod drain;
mod health;
mod holdings;
mod idle;
mod pipeline;
mod progress;
mod readers;
mod watch;

pub use change::{AppSpec, Applied, CanarySource, Change, PipelineHandle, Request, Snapshot, Wasm};
pub use dir_index::INDEX_FILE;
pub use dir_source::{DirSource, Summary};
pub use idle::expire_idle_instances;
pub use pipeline::{DeployTotals, Pipeline, Totals};
pub use watch::DirWatch;

use meshd_apps::{Ceiling, Limits};
use std::path::PathBuf;
use std::time::Duration;

/// Settings of the deploy pipeline.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// The apps directory: `[files] dir` of every app is relative to it.
    pub apps_dir: PathBuf,
    /// How long a replaced or removed version may take to finish its
    /// in-flight requests before they are cancelled.
    pub drain_timeout: Duration,
    /// How many apps are compiled at once.
    pub load_parallelism: usize,
    /// How long a new version's health check (manifest key `health`) may
    /// take.
    pub health_timeout: Duration,
    /// Daemon-wide default limits; a manifest's `[limits]` override them,
    /// and [`Limits::BUILT_IN`] fills what neither sets.
    pub default_limits: Limits,
    /// The most any app may run with; an app whose manifest asks for more
    /// is refused (its previous version keeps serving).
    pub ceiling: Ceiling,
    /// Largest `.wasm` meshd takes; a larger one is refused without being
    /// read whole (its previous version keeps serving).
    pub max_wasm_size: u64,
    /// Where who holds which route and `[files]` directory is saved, so that
    /// holdings survive a restart; `None`: not saved.
    pub holdings_file: Option<PathBuf>,
    /// Whether the apps the mesh deployed are brought back from the artifact
    /// store at start (the node follows a mesh, and serves what it last had
    /// until the mesh is reachable). Apps of the admin API always are.
    pub restore_mesh: bool,
}
