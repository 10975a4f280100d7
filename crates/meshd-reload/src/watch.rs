//! Watching the apps directory and reconciling when it changes.
//!
//! File events are coalesced: a reconcile runs only once every changed app
//! file has been quiet for the settle time and has been closed by its writer,
//! so a file copied slowly onto its live name, or a burst of writes, is loaded
//! once, complete, with the last content.

use crate::Deployer;
use meshd_apps::is_app_file;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A file still open for writing is waited for at most this long after its
/// last write (its writer may have died without closing it).
const MAX_OPEN_WAIT: Duration = Duration::from_secs(10);

/// A registered watch on the apps directory. Create it *before* the initial
/// [`Deployer::reconcile`], so no change between that scan and
/// [`DirWatch::run`] is missed.
pub struct DirWatch {
    dir: PathBuf,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    // Dropping the watcher stops the events.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl DirWatch {
    /// Starts watching `dir`; with `enabled` false (or if the platform
    /// refuses), only rescans on request will happen.
    pub fn start(dir: &std::path::Path, enabled: bool) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let watcher = if enabled {
            match start_watcher(dir, tx) {
                Ok(watcher) => {
                    tracing::info!(dir = %dir.display(), "watching the apps directory for changes");
                    Some(watcher)
                }
                Err(e) => {
                    tracing::error!(dir = %dir.display(), "cannot watch the apps directory: {e}; changes need SIGHUP or a restart");
                    None
                }
            }
        } else {
            None
        };
        DirWatch {
            dir: dir.to_owned(),
            events,
            _watcher: watcher,
        }
    }

    /// Calls [`Deployer::reconcile`] once changes have settled for `settle`,
    /// and at once whenever `rescan` yields (SIGHUP). Returns when `shutdown`
    /// resolves.
    pub async fn run(
        mut self,
        deployer: Arc<Deployer>,
        settle: Duration,
        mut rescan: mpsc::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) {
        let dir = self.dir.clone();
        let events = &mut self.events;
        let mut pending: HashMap<PathBuf, Pending> = HashMap::new();
        tokio::pin!(shutdown);
        loop {
            let wake = next_wake(&pending, settle);
            tokio::select! {
                () = &mut shutdown => return,
                Some(()) = rescan.recv() => {
                    tracing::info!("rescan requested");
                    pending.clear();
                    deployer.reconcile().await;
                }
                Some(event) = events.recv() => match event {
                    Ok(event) => note(&mut pending, event),
                    Err(e) => {
                        // The kernel's queue overflowed or similar: a full rescan
                        // is the safe answer.
                        tracing::warn!(error = %e, "file watch error; rescanning");
                        pending.insert(dir.clone(), Pending { last: Instant::now(), writing: false });
                    }
                },
                () = sleep_until(wake) => {
                    if ready(&pending, settle) {
                        pending.clear();
                        deployer.reconcile().await;
                    }
                }
            }
        }
    }
}

fn start_watcher(
    dir: &std::path::Path,
    tx: mpsc::UnboundedSender<notify::Result<notify::Event>>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event| {
        // The receiver only goes away at shutdown.
        let _ = tx.send(event);
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// One changed path: when it last changed, and whether a writer still has it
/// open.
struct Pending {
    last: Instant,
    writing: bool,
}

fn note(pending: &mut HashMap<PathBuf, Pending>, event: notify::Event) {
    let writing = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
        // Opens and reads change nothing, and meshd's own reads of a file
        // must not schedule another pass.
        EventKind::Access(_) => return,
        EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => true,
        _ => false,
    };
    for path in event.paths {
        if !is_app_file(&path) {
            continue;
        }
        pending.insert(
            path,
            Pending {
                last: Instant::now(),
                writing,
            },
        );
    }
}

fn quiet_for(p: &Pending) -> Duration {
    if p.writing {
        MAX_OPEN_WAIT
    } else {
        Duration::ZERO
    }
}

fn ready(pending: &HashMap<PathBuf, Pending>, settle: Duration) -> bool {
    !pending.is_empty()
        && pending
            .values()
            .all(|p| p.last.elapsed() >= settle.max(quiet_for(p)))
}

fn next_wake(pending: &HashMap<PathBuf, Pending>, settle: Duration) -> Option<Instant> {
    pending
        .values()
        .map(|p| p.last + settle.max(quiet_for(p)))
        .max()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
