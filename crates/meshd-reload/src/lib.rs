//! The reload machinery of meshd.
//!
//! A [`Deployer`] owns the mapping from the files in the apps directory to the
//! versions that serve traffic. [`Deployer::reconcile`] brings the live mount
//! table in line with the directory, one app at a time and make-before-break:
//! a changed app's new version is compiled and pre-instantiated before the
//! table is switched, a broken new version never replaces a working one, and a
//! replaced or removed version drains its in-flight requests before it is
//! retired. [`DirWatch`] runs `reconcile` whenever the directory changes.
//! [`expire_idle_instances`] drops reused instances that sat idle too long.
#![deny(missing_docs)]

mod change;
mod deployer;
mod drain;
mod health;
mod holdings;
mod idle;
mod progress;
mod watch;

pub use change::{AppSpec, Applied, CanarySource, Change, PipelineHandle, Request, Snapshot};
pub use deployer::{Deployer, ReloadConfig, Summary, Totals};
pub use idle::expire_idle_instances;
pub use watch::DirWatch;
