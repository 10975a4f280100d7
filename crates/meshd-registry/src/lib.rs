//! What meshd serves, as one immutable snapshot.
//!
//! The deploy pipeline (meshd-reload) is the registry's only writer: after
//! every change it builds a new [`AppSet`] and [`Registry::publish`]es it in
//! one atomic step. Everything else reads: the front door routes each request
//! through [`AppSet::routes`] (one atomic load, no lock), and the metrics
//! endpoint and the admin API read [`AppSet::apps`]. A reader never waits for
//! a compile or a health check in progress: it sees the last published set.
//!
//! An app's [`Mount`] holds its live version and, during a canary, a second
//! version that takes a share of its requests ([`Mount::pick`]).
#![deny(missing_docs)]

mod app;
mod mount;
mod refused;

pub use app::{AppState, AppStatus, Origin, ParseOriginError, VersionInfo};
pub use mount::{Canary, Mount, Side};
pub use refused::Refused;

use arc_swap::ArcSwap;
use meshd_routes::RouteTable;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// The route table: which app (and which of its versions) serves a host and
/// prefix.
pub type Routes = RouteTable<Arc<Mount>>;

/// One published state of meshd: routes and every app it knows.
#[derive(Default)]
pub struct AppSet {
    /// The mount table the front door routes by.
    pub routes: Routes,
    /// Every app meshd knows (serving, loading, refused or draining), by
    /// name.
    pub apps: BTreeMap<String, AppStatus>,
}

impl AppSet {
    /// The status of the app called `name`, if meshd knows it.
    pub fn app(&self, name: &str) -> Option<&AppStatus> {
        self.apps.get(name)
    }
}

/// How far the first load of meshd has got, for `/readyz`.
#[derive(Debug, Default)]
pub struct Startup {
    decided: AtomicUsize,
    total: AtomicUsize,
    done: AtomicBool,
}

/// A copy of [`Startup`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupProgress {
    /// Apps of the first load decided (live or refused).
    pub decided: usize,
    /// Apps the first load has to decide (grows as sources report).
    pub total: usize,
    /// Whether every source's first load has been decided.
    pub done: bool,
}

impl Startup {
    /// `count` more apps to decide.
    pub fn expect(&self, count: usize) {
        self.total.fetch_add(count, Ordering::Relaxed);
    }

    /// One more app decided.
    pub fn decided(&self) {
        self.decided.fetch_add(1, Ordering::Relaxed);
    }

    /// The first load is over.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Release);
    }

    /// The progress now.
    pub fn progress(&self) -> StartupProgress {
        let done = self.done.load(Ordering::Acquire);
        let total = self.total.load(Ordering::Relaxed);
        let decided = self.decided.load(Ordering::Relaxed).min(total);
        StartupProgress {
            decided: if done { total } else { decided },
            total,
            done,
        }
    }
}

/// The current [`AppSet`], swapped atomically by the pipeline.
pub struct Registry {
    current: ArcSwap<AppSet>,
    startup: Startup,
    /// Counts publications: what [`Registry::subscribe`] hands out, for
    /// readers that act on changes (the ACME client follows the routes'
    /// hosts) rather than on every request.
    published: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            current: ArcSwap::default(),
            startup: Startup::default(),
            published: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Registry {
    /// A registry with nothing in it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last published set. Cheap; never blocks. Hold the result only as
    /// long as needed: it keeps the versions in it alive.
    pub fn load(&self) -> Arc<AppSet> {
        self.current.load_full()
    }

    /// A short-lived view of the current set for the request path (no
    /// reference count traffic).
    pub fn peek(&self) -> arc_swap::Guard<Arc<AppSet>> {
        self.current.load()
    }

    /// Makes `set` the current one. Only the deploy pipeline calls this.
    pub fn publish(&self, set: AppSet) {
        self.current.store(Arc::new(set));
        self.published.send_modify(|count| *count += 1);
    }

    /// A receiver that is marked changed after every [`Registry::publish`]
    /// (several publications may be seen as one); read the set with
    /// [`Registry::load`] when it is.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// How far the first load has got.
    pub fn startup(&self) -> &Startup {
        &self.startup
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_progress_counts_until_finished() {
        let startup = Startup::default();
        startup.expect(3);
        startup.decided();
        assert_eq!(
            startup.progress(),
            StartupProgress {
                decided: 1,
                total: 3,
                done: false
            }
        );
        startup.finish();
        // Once finished, everything counts as decided.
        assert_eq!(
            startup.progress(),
            StartupProgress {
                decided: 3,
                total: 3,
                done: true
            }
        );
    }
}
