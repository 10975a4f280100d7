//! Watching the apps directory and reconciling when it changes.
//!
//! File events are coalesced per app: an app's change is loaded once all its
//! changed files have been quiet for the settle time and closed by their
//! writer, so a file copied slowly onto its live name, or a burst of writes,
//! is loaded once, complete, with the last content. Apps whose files are
//! still changing are held back from the pass, not the other way round: one
//! app's writer never delays another's deploy.

use crate::DirSource;
use meshd_apps::is_app_file;
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{RecursiveMode, Watcher};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A file still open for writing is waited for at most this long after its
/// last write (its writer may have died without closing it).
const MAX_OPEN_WAIT: Duration = Duration::from_secs(10);

/// A registered watch on the apps directory. Create it *before* the initial
/// [`DirSource::sync`], so no change between that scan and
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

    /// Calls [`DirSource::sync`] whenever an app's changed files have
    /// settled for `settle`, and at once whenever `rescan` yields (SIGHUP).
    /// Readiness is per app: a pass loads the apps whose files are quiet and
    /// holds back (with [`DirSource::sync_holding`]) those still being
    /// written, so one app's busy writer never delays another app's deploy
    /// or removal. A change pending for [`max_pending`] goes through even if
    /// its file is still changing. Returns when `shutdown` resolves.
    pub async fn run(
        mut self,
        mut source: DirSource,
        settle: Duration,
        mut rescan: mpsc::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) {
        let dir = self.dir.clone();
        let events = &mut self.events;
        let mut pending = Pending::default();
        tokio::pin!(shutdown);
        loop {
            let wake = pending.next_wake(settle);
            tokio::select! {
                () = &mut shutdown => return,
                Some(()) = rescan.recv() => {
                    tracing::info!("rescan requested");
                    pending = Pending::default();
                    source.sync().await;
                }
                Some(event) = events.recv() => match event {
                    Ok(event) => pending.note(event, Instant::now()),
                    Err(e) => {
                        // The kernel's queue overflowed or similar: a full rescan
                        // is the safe answer.
                        tracing::warn!(error = %e, "file watch error; rescanning");
                        pending.note_path(dir.clone(), false, Instant::now());
                    }
                },
                () = sleep_until(wake) => {
                    if let Some(held) = pending.take_ready(settle, Instant::now()) {
                        if !held.is_empty() {
                            tracing::debug!(held = ?held, "deploying the apps whose files settled; holding back those still changing");
                        }
                        source.sync_holding(&held).await;
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

/// How long an app's change may stay pending because its files keep
/// changing: after this it is loaded anyway (a half-written file is refused
/// and the working version keeps serving), so an app whose files never
/// settle is still retried, and never waits forever.
pub(crate) fn max_pending(settle: Duration) -> Duration {
    (settle * 10).max(MAX_OPEN_WAIT)
}

/// One changed path: when its current run of changes began, when it last
/// changed, and whether a writer still has it open.
#[derive(Debug, Clone, Copy)]
struct PathState {
    first: Instant,
    last: Instant,
    writing: bool,
}

/// The changed paths not yet reconciled: app files, and the apps directory
/// itself for a full rescan.
#[derive(Default)]
struct Pending {
    paths: HashMap<PathBuf, PathState>,
}

impl Pending {
    fn note(&mut self, event: notify::Event, now: Instant) {
        let writing = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => false,
            // Opens and reads change nothing, and meshd's own reads of a file
            // must not schedule another pass.
            EventKind::Access(_) => return,
            EventKind::Create(_) | EventKind::Modify(ModifyKind::Data(_)) => true,
            _ => false,
        };
        for path in event.paths {
            if is_app_file(&path) {
                self.note_path(path, writing, now);
            }
        }
    }

    fn note_path(&mut self, path: PathBuf, writing: bool, now: Instant) {
        let state = self.paths.entry(path).or_insert(PathState {
            first: now,
            last: now,
            writing,
        });
        state.last = now;
        state.writing = writing;
    }

    /// When each app (by name; `None` for a full rescan) is ready: all its
    /// paths quiet long enough, or its oldest change pending for
    /// [`max_pending`].
    fn ready_at(&self, settle: Duration) -> HashMap<Option<String>, Instant> {
        let mut apps: HashMap<Option<String>, (Instant, Instant)> = HashMap::new();
        for (path, state) in &self.paths {
            let quiet_at = add(state.last, settle.max(quiet_for(state)));
            let entry = apps
                .entry(app_name(path))
                .or_insert((quiet_at, state.first));
            entry.0 = entry.0.max(quiet_at);
            entry.1 = entry.1.min(state.first);
        }
        apps.into_iter()
            .map(|(app, (quiet_at, first))| (app, quiet_at.min(add(first, max_pending(settle)))))
            .collect()
    }

    /// The earliest time an app becomes ready.
    fn next_wake(&self, settle: Duration) -> Option<Instant> {
        self.ready_at(settle).into_values().min()
    }

    /// If any app is ready: forgets the ready apps' changes and returns the
    /// names of the apps still changing, which the pass must hold back.
    fn take_ready(&mut self, settle: Duration, now: Instant) -> Option<BTreeSet<String>> {
        let ready_at = self.ready_at(settle);
        if !ready_at.values().any(|at| *at <= now) {
            return None;
        }
        let held: BTreeSet<String> = ready_at
            .iter()
            .filter(|(_, at)| **at > now)
            .filter_map(|(app, _)| app.clone())
            .collect();
        self.paths
            .retain(|path, _| app_name(path).is_some_and(|name| held.contains(&name)));
        Some(held)
    }
}

/// The app an app file belongs to (`NAME` of `NAME.wasm` or `NAME.toml`);
/// `None` for anything else (the directory itself: a full rescan).
fn app_name(path: &std::path::Path) -> Option<String> {
    if !is_app_file(path) {
        return None;
    }
    path.file_stem()
        .and_then(|stem| stem.to_str())
        .map(str::to_owned)
}

fn quiet_for(p: &PathState) -> Duration {
    if p.writing {
        MAX_OPEN_WAIT
    } else {
        Duration::ZERO
    }
}

/// `at + by` that cannot panic (durations are capped at a day anyway).
fn add(at: Instant, by: Duration) -> Instant {
    at.checked_add(by).unwrap_or(at)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_millis(250);
    const STEP: Duration = Duration::from_millis(50);

    fn held(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn a_quiet_app_goes_through_while_another_keeps_changing() {
        let mut now = Instant::now();
        let mut pending = Pending::default();
        pending.note_path("apps/busy.toml".into(), false, now);
        pending.note_path("apps/new.wasm".into(), false, now);
        pending.note_path("apps/new.toml".into(), false, now);
        // busy.toml is rewritten every 50 ms, faster than the settle time.
        for _ in 0..5 {
            now += STEP;
            pending.note_path("apps/busy.toml".into(), false, now);
        }
        assert_eq!(pending.take_ready(SETTLE, now), Some(held(&["busy"])));
        let left: Vec<_> = pending.paths.keys().cloned().collect();
        assert_eq!(left, vec![PathBuf::from("apps/busy.toml")]);
        // Nothing else is ready while busy keeps changing.
        now += STEP;
        pending.note_path("apps/busy.toml".into(), false, now);
        assert_eq!(pending.take_ready(SETTLE, now), None);
    }

    #[test]
    fn an_app_that_never_settles_goes_through_after_the_maximum_delay() {
        let started = Instant::now();
        let mut now = started;
        let mut pending = Pending::default();
        pending.note_path("apps/busy.wasm".into(), true, now);
        while now < started + max_pending(SETTLE) {
            assert_eq!(pending.take_ready(SETTLE, now), None);
            now += STEP;
            pending.note_path("apps/busy.wasm".into(), true, now);
        }
        assert_eq!(pending.take_ready(SETTLE, now), Some(held(&[])));
        assert!(pending.paths.is_empty());
    }

    #[test]
    fn a_file_still_open_for_writing_waits_longer_than_the_settle_time() {
        let mut now = Instant::now();
        let mut pending = Pending::default();
        pending.note_path("apps/slow.wasm".into(), true, now);
        now += SETTLE * 2;
        assert_eq!(pending.take_ready(SETTLE, now), None);
        // Its writer closes it: ready after the settle time.
        pending.note_path("apps/slow.wasm".into(), false, now);
        now += SETTLE;
        assert_eq!(pending.take_ready(SETTLE, now), Some(held(&[])));
    }

    #[test]
    fn the_next_wake_is_the_first_app_to_be_ready() {
        let first = Instant::now();
        let mut pending = Pending::default();
        pending.note_path("apps/a.wasm".into(), false, first);
        pending.note_path("apps/b.wasm".into(), false, first + STEP);
        assert_eq!(pending.next_wake(SETTLE), Some(first + SETTLE));
    }
}
