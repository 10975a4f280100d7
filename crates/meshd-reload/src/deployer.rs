//! Bringing the live mount table in line with the apps directory.

use crate::drain::retire;
use crate::holdings::Holdings;
use crate::progress::LoadProgress;
use arc_swap::ArcSwap;
use meshd_apps::{scan, AppFiles, Ceiling, Limits, Manifest};
use meshd_routes::Prefix;
use meshd_server::Mounts;
use meshd_tenant::{load_version, AppVersion, Preopen, Runtime, TenantSettings};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Mutex, Semaphore};

/// Settings of the reload machinery.
#[derive(Debug, Clone)]
pub struct ReloadConfig {
    /// The apps directory.
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
    /// Largest `.wasm` meshd reads; a larger one is refused without being
    /// read whole (its previous version keeps serving).
    pub max_wasm_size: u64,
    /// Where who holds which route and `[files]` directory is saved, so that
    /// holdings survive a restart; `None`: not saved.
    pub holdings_file: Option<PathBuf>,
}

/// What one [`Deployer::reconcile`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Apps serving after the pass.
    pub serving: usize,
    /// New versions that went live (new apps and updates).
    pub deployed: usize,
    /// Apps whose new files were refused (the previous version, if any, kept
    /// serving).
    pub failed: usize,
    /// Apps unmounted because their `.wasm` is gone.
    pub removed: usize,
}

/// The live deployment of one app.
#[derive(Clone)]
struct Deployed {
    files: AppFiles,
    stamp: Stamp,
    content: Content,
    prefix: Prefix,
    version: Arc<AppVersion>,
}

/// Cheap change detection: size, mtime and inode of each file. Only when it
/// changes are the files read and hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    wasm: FileStamp,
    manifest: Option<FileStamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// What the files say: the hash of the wasm and the parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Content {
    wasm: blake3::Hash,
    manifest: Manifest,
}

/// A candidate new deployment, or why it was refused.
type Candidate = Result<Deployed, String>;

/// Owns the mapping from files to live versions.
pub struct Deployer {
    runtime: Arc<Runtime>,
    config: ReloadConfig,
    mounts: Arc<ArcSwap<Mounts>>,
    /// Serialises reconcile passes; holds what is deployed.
    deployed: Mutex<BTreeMap<String, Deployed>>,
    /// Every pass's counts added up, for the metrics endpoint.
    totals: [AtomicU64; 3],
    /// Who held what after the last pass (at start-up: as saved).
    holdings: std::sync::Mutex<Holdings>,
}

/// What all reconcile passes so far did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// New versions that went live.
    pub deployed: u64,
    /// New files refused (a previous version, if any, kept serving).
    pub refused: u64,
    /// Apps unmounted because their `.wasm` went away.
    pub removed: u64,
}

impl Deployer {
    /// A deployer with nothing mounted yet.
    pub fn new(runtime: Arc<Runtime>, config: ReloadConfig) -> Self {
        let holdings = config
            .holdings_file
            .as_deref()
            .map(Holdings::load)
            .unwrap_or_default();
        Deployer {
            holdings: std::sync::Mutex::new(holdings),
            runtime,
            config,
            mounts: Arc::new(ArcSwap::from_pointee(Mounts::new())),
            deployed: Mutex::new(BTreeMap::new()),
            totals: Default::default(),
        }
    }

    /// What all reconcile passes so far did.
    pub fn totals(&self) -> Totals {
        let [deployed, refused, removed] = &self.totals;
        Totals {
            deployed: deployed.load(Ordering::Relaxed),
            refused: refused.load(Ordering::Relaxed),
            removed: removed.load(Ordering::Relaxed),
        }
    }

    /// The live mount table, for the HTTP front door.
    pub fn mounts(&self) -> Arc<ArcSwap<Mounts>> {
        self.mounts.clone()
    }

    /// The settings this deployer runs with.
    pub fn config(&self) -> &ReloadConfig {
        &self.config
    }

    /// Scans the apps directory and makes the mount table match it: loads new
    /// and changed apps (before they take traffic), keeps the previous version
    /// of any app whose new files are broken, unmounts removed apps, then
    /// switches the table in one atomic step and drains what it replaced.
    pub async fn reconcile(&self) -> Summary {
        self.reconcile_holding(&BTreeSet::new()).await
    }

    /// [`Deployer::reconcile`], leaving the apps named in `held` as they are
    /// (serving or not): their files are still being written, so they are
    /// neither loaded nor removed in this pass.
    pub async fn reconcile_holding(&self, held: &BTreeSet<String>) -> Summary {
        let mut deployed = self.deployed.lock().await;
        let found = match scan(&self.config.apps_dir) {
            Ok((found, errors)) => {
                for e in errors {
                    tracing::error!("{e}");
                }
                found
                    .into_iter()
                    .filter(|(name, _)| !held.contains(name))
                    .collect::<BTreeMap<_, _>>()
            }
            Err(e) => {
                tracing::error!("{e}; keeping the apps that are serving");
                return Summary {
                    serving: deployed.len(),
                    ..Summary::default()
                };
            }
        };

        let mut candidates = self.load_changed(&deployed, &found).await;
        self.check_new_versions(&deployed, &mut candidates).await;
        let mut summary = Summary::default();
        let mut next: BTreeMap<String, Deployed> = BTreeMap::new();
        let mut retired: Vec<(Arc<AppVersion>, &'static str)> = Vec::new();

        for (name, old) in deployed.iter() {
            if held.contains(name) {
                // Still being written: carried over as it is.
                next.insert(name.clone(), old.clone());
            } else if !found.contains_key(name) {
                tracing::info!(app = %name, version = %old.version.id(), "app removed; unmounting it after its requests drain");
                retired.push((old.version.clone(), "removed"));
                summary.removed += 1;
            }
        }
        for name in found.keys() {
            let old = deployed.get(name);
            match candidates.get(name) {
                None => {
                    if let Some(old) = old {
                        next.insert(name.clone(), old.clone());
                    }
                }
                Some(Ok(new)) => {
                    next.insert(name.clone(), new.clone());
                }
                Some(Err(cause)) => {
                    summary.failed += 1;
                    match old {
                        Some(old) => {
                            tracing::error!(app = %name, "new version refused: {cause}; version {} keeps serving", old.version.id());
                            next.insert(name.clone(), old.clone());
                        }
                        None => tracing::error!(app = %name, "app not loaded: {cause}"),
                    }
                }
            }
        }

        let table = {
            let mut holdings = self.holdings.lock().unwrap_or_else(|e| e.into_inner());
            let table = build_table(&mut next, &holdings);
            let now = holdings_of(&next);
            if now != *holdings {
                if let Some(file) = &self.config.holdings_file {
                    now.save(file);
                }
                *holdings = now;
            }
            table
        };
        // Switch first, then say so: once `app deployed` or `app updated`
        // is logged, requests reach the new version.
        self.mounts.store(Arc::new(table));
        for (name, new) in &next {
            match deployed.get(name) {
                Some(old) if Arc::ptr_eq(&old.version, &new.version) => {
                    if old.prefix != new.prefix {
                        tracing::info!(app = %name, from = %old.prefix, to = %new.prefix, "app moved");
                    }
                }
                Some(old) => {
                    summary.deployed += 1;
                    tracing::info!(
                        app = %name, version = %new.version.id(), previous = %old.version.id(),
                        route = %new.prefix, cache = %new.version.cache_outcome().as_str(),
                        compile_ms = new.version.compile_time().as_millis() as u64,
                        "app updated"
                    );
                    retired.push((old.version.clone(), "replaced"));
                }
                None => {
                    summary.deployed += 1;
                    tracing::info!(
                        app = %name, version = %new.version.id(), route = %new.prefix,
                        cache = %new.version.cache_outcome().as_str(),
                        compile_ms = new.version.compile_time().as_millis() as u64,
                        "app deployed"
                    );
                }
            }
        }
        // An app that lost its route to a conflict is not serving.
        for (name, old) in deployed.iter() {
            let present = found.contains_key(name) || held.contains(name);
            if present && !next.contains_key(name) {
                retired.push((old.version.clone(), "unmounted"));
            }
        }

        summary.serving = next.len();
        *deployed = next;
        drop(deployed);

        for (version, why) in retired {
            retire(version, self.config.drain_timeout, why);
        }
        let [deployed, refused, removed] = &self.totals;
        deployed.fetch_add(summary.deployed as u64, Ordering::Relaxed);
        refused.fetch_add(summary.failed as u64, Ordering::Relaxed);
        removed.fetch_add(summary.removed as u64, Ordering::Relaxed);
        summary
    }

    /// Instantiates every new version once and runs its health check, if it
    /// has one, all at once; a failing version becomes a refused candidate.
    async fn check_new_versions(
        &self,
        deployed: &BTreeMap<String, Deployed>,
        candidates: &mut BTreeMap<String, Candidate>,
    ) {
        // Each check holds an instance slot while it runs (waiting for one
        // while traffic holds them all), so many new apps at once (a
        // start-up with thousands) must not check all at once: that would
        // take every slot from the traffic (and once ran the pool out and
        // refused apps that were fine).
        let permits = Arc::new(Semaphore::new(max_concurrent_checks(
            self.runtime.config().max_instances,
        )));
        let mut checks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        for (name, candidate) in candidates.iter() {
            let Ok(new) = candidate else { continue };
            let unchanged = deployed
                .get(name)
                .is_some_and(|old| Arc::ptr_eq(&old.version, &new.version));
            if unchanged {
                continue;
            }
            let health = new.content.manifest.health.clone();
            let (name, version, prefix) = (name.clone(), new.version.clone(), new.prefix.clone());
            let timeout = self.config.health_timeout;
            let permits = permits.clone();
            let task_name = name.clone();
            let task = checks.spawn(async move {
                // The semaphore is never closed, so this always gets one.
                let _permit = permits.acquire_owned().await.ok();
                let result = match version.instantiate_once().await {
                    Err(e) => Err(format!("cannot instantiate: {e:#}")),
                    Ok(()) => match health {
                        Some(path) => crate::health::check(&version, &prefix, &path, timeout).await,
                        None => Ok(()),
                    },
                };
                (name, result)
            });
            names.insert(task.id(), task_name);
        }
        while let Some(joined) = checks.join_next().await {
            let Some((name, result)) = check_outcome(joined, &names) else {
                continue;
            };
            match result.and_then(|checked| checked) {
                Ok(()) => {
                    let version = candidates
                        .get(&name)
                        .and_then(|c| c.as_ref().ok())
                        .map(|d| d.version.id().to_owned())
                        .unwrap_or_default();
                    tracing::info!(app = %name, version = %version, "health check passed")
                }
                Err(cause) => {
                    let file = candidates
                        .get(&name)
                        .and_then(|c| c.as_ref().ok())
                        .map(|d| d.files.wasm.display().to_string())
                        .unwrap_or_default();
                    candidates.insert(name, Err(format!("{file}: {cause}")));
                }
            }
        }
    }

    /// Loads every app whose files changed since it was deployed (or that is
    /// new), at most `load_parallelism` at a time, off the async workers.
    async fn load_changed(
        &self,
        deployed: &BTreeMap<String, Deployed>,
        found: &BTreeMap<String, AppFiles>,
    ) -> BTreeMap<String, Candidate> {
        let permits = Arc::new(Semaphore::new(self.config.load_parallelism.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        for (name, files) in found {
            let old = deployed.get(name).cloned();
            let stamp = match stamp(files) {
                Ok(stamp) => stamp,
                Err(e) => {
                    // Vanished between scan and stat: the next pass sees it.
                    tracing::debug!(app = %name, error = %e, "cannot stat app files");
                    continue;
                }
            };
            if old
                .as_ref()
                .is_some_and(|o| o.stamp == stamp && o.files == *files)
            {
                continue;
            }
            let runtime = self.runtime.clone();
            let files = files.clone();
            let permits = permits.clone();
            let defaults = self.config.default_limits;
            let ceiling = self.config.ceiling;
            let max_wasm_size = self.config.max_wasm_size;
            let apps_dir = self.config.apps_dir.clone();
            let task = tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let name = files.name.clone();
                let candidate = tokio::task::spawn_blocking(move || {
                    let limits = (defaults, ceiling, max_wasm_size);
                    load_candidate(&runtime, &apps_dir, limits, files, stamp, old)
                })
                .await
                .unwrap_or_else(|e| Err(format!("loading panicked: {e}")));
                (name, candidate)
            });
            names.insert(task.id(), name.clone());
        }
        let mut candidates = BTreeMap::new();
        let mut progress = LoadProgress::new(names.len());
        while let Some(joined) = tasks.join_next().await {
            // A task that panicked refuses its app's new files.
            if let Some((name, candidate)) = check_outcome(joined, &names) {
                let candidate = candidate.and_then(|c| c);
                progress.record(candidate.as_ref().ok().map(|c| c.version.cache_outcome()));
                candidates.insert(name, candidate);
            }
        }
        candidates
    }
}

/// The outcome of one app's task of a [`JoinSet`]: what it returned, or, if
/// it panicked (or was cancelled), a refusal that says so. A check that
/// panicked must never count as passed. `None` only for a task meshd does
/// not know (never happens).
///
/// [`JoinSet`]: tokio::task::JoinSet
fn check_outcome<T>(
    joined: Result<(String, T), tokio::task::JoinError>,
    names: &HashMap<tokio::task::Id, String>,
) -> Option<(String, Result<T, String>)> {
    match joined {
        Ok((name, outcome)) => Some((name, Ok(outcome))),
        Err(e) => {
            let name = names.get(&e.id())?.clone();
            let why = if e.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            tracing::error!(app = %name, "the task loading or checking the app {why}: {e}");
            Some((
                name,
                Err(format!("loading or checking the new version {why}")),
            ))
        }
    }
}

/// How many pre-traffic checks run at once: enough to keep the cores busy
/// and hide a slow health endpoint, and never more than a quarter of the
/// instance budget, so checks leave the pool (sized `2 × max_instances`)
/// to the traffic.
fn max_concurrent_checks(max_instances: u32) -> usize {
    (max_instances as usize / 4).clamp(1, 32)
}

/// Reads, checks and (unless only the manifest or timestamps changed)
/// compiles one app.
fn load_candidate(
    runtime: &Arc<Runtime>,
    apps_dir: &Path,
    (defaults, ceiling, max_wasm_size): (Limits, Ceiling, u64),
    files: AppFiles,
    stamp: Stamp,
    old: Option<Deployed>,
) -> Candidate {
    let manifest = match &files.manifest {
        Some(path) => Manifest::load(path).map_err(|e| e.to_string())?,
        None => Manifest::default(),
    };
    let prefix = manifest
        .prefix(&files.name)
        .map_err(|e| match &files.manifest {
            Some(path) => format!("invalid manifest {}: key `route`: {e}", path.display()),
            None => format!("app name cannot be a route: {e}"),
        })?;
    let manifest_name = files.manifest.as_deref().map_or_else(
        || files.wasm.display().to_string(),
        |p| p.display().to_string(),
    );
    let settings = tenant_settings(&manifest, defaults, ceiling, apps_dir)
        .map_err(|e| format!("{manifest_name}: {e}"))?;
    let wasm = read_wasm(&files.wasm, max_wasm_size)?;
    let content = Content {
        wasm: blake3::hash(&wasm),
        manifest,
    };
    if let Some(old) = old.as_ref().filter(|old| old.content.wasm == content.wasm) {
        // Same code: no recompile. Same settings too: keep the running
        // version (no drain); otherwise a new version of the same code.
        let version = if old.version.settings() == &settings {
            old.version.clone()
        } else {
            Arc::new(old.version.with_settings(settings))
        };
        return Ok(Deployed {
            files,
            stamp,
            content,
            prefix,
            version,
        });
    }
    let mut version = load_version(runtime, &files.name, &wasm, settings)
        .map_err(|e| format!("{}: {e}", files.wasm.display()))?;
    if let Some(old) = &old {
        // The old version drains while this one serves: one limit for both.
        version.succeed(&old.version);
    }
    Ok(Deployed {
        files,
        stamp,
        content,
        prefix,
        version: Arc::new(version),
    })
}

/// Resolves an app's limits and capabilities, within the operator's ceiling.
fn tenant_settings(
    manifest: &Manifest,
    defaults: Limits,
    ceiling: Ceiling,
    apps_dir: &Path,
) -> Result<TenantSettings, String> {
    let limits = manifest.limits.or(defaults).or(Limits::BUILT_IN);
    ceiling.check(manifest, &limits)?;
    let built_in = Limits::BUILT_IN;
    let memory = limits.memory.or(built_in.memory).unwrap_or_default();
    let files = manifest
        .files
        .as_ref()
        .map(|f| {
            f.resolve(apps_dir).map(|host_dir| Preopen {
                host_dir,
                writable: f.writable,
            })
        })
        .transpose()?;
    Ok(TenantSettings {
        memory: usize::try_from(memory)
            .map_err(|_| format!("limits.memory {memory} is too large"))?,
        timeout: limits.timeout.unwrap_or_default(),
        max_concurrency: limits.max_concurrency.unwrap_or(1),
        max_body: limits.max_body.unwrap_or_default(),
        cpu: limits.cpu,
        env: manifest.env.clone().into_iter().collect(),
        files,
        outbound: manifest.outbound.rules(),
        config: manifest.config.clone().into_iter().collect(),
        reuse: manifest.reuse.unwrap_or(1),
    })
}

/// Reads a `.wasm` of at most `max` bytes. Reading stops one byte past the
/// limit, so a huge (or still growing) file never sits whole in memory.
fn read_wasm(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| describe(path, e))?;
    let mut wasm = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut wasm)
        .map_err(|e| describe(path, e))?;
    if wasm.len() as u64 > max {
        return Err(format!(
            "{} is larger than --max-wasm-size ({}); not read",
            path.display(),
            bytesize::ByteSize(max)
        ));
    }
    Ok(wasm)
}

fn describe(path: &Path, e: std::io::Error) -> String {
    format!("cannot read {}: {e}", path.display())
}

fn stamp(files: &AppFiles) -> std::io::Result<Stamp> {
    Ok(Stamp {
        wasm: file_stamp(&files.wasm)?,
        manifest: files.manifest.as_deref().map(file_stamp).transpose()?,
    })
}

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// Builds the mount table for `next`.
///
/// Who gets a contested route or `[files]` directory is decided by app name:
/// an app that held a route (or a directory) after the previous pass (the
/// `holdings`; at start-up, those saved by the last run) and still asks for
/// it keeps it, however often its own files change and across restarts; any other app
/// asking for it (or, for a directory, for one inside or around it) is
/// refused, every pass, with an error naming both apps. Between apps that
/// held neither, the first by name wins. Refused apps are removed from
/// `next`.
fn build_table(next: &mut BTreeMap<String, Deployed>, holdings: &Holdings) -> Mounts {
    let mut held_routes: BTreeMap<Prefix, String> = BTreeMap::new();
    let mut held_dirs: Vec<(PathBuf, String)> = Vec::new();
    for (name, d) in next.iter() {
        if holdings.holds_route(name, d.prefix.as_str()) {
            held_routes.insert(d.prefix.clone(), name.clone());
        }
        if let Some(dir) = files_dir(d).filter(|dir| holdings.holds_dir(name, dir)) {
            held_dirs.push((dir, name.clone()));
        }
    }
    let mut order: Vec<&String> = next.keys().collect();
    // Holders first, then the rest by name (BTreeMap order, stable sort).
    order.sort_by_key(|name| {
        !(held_routes.values().any(|holder| holder == *name)
            || held_dirs.iter().any(|(_, holder)| holder == *name))
    });

    let mut table = Mounts::new();
    let mut owners: BTreeMap<Prefix, String> = BTreeMap::new();
    let mut dirs: Vec<(PathBuf, String)> = Vec::new();
    let mut refused = Vec::new();
    for name in order {
        let d = &next[name];
        if let Some(holder) = held_routes.get(&d.prefix).filter(|holder| *holder != name) {
            tracing::error!(
                app = %name, holder = %holder, route = %d.prefix,
                "route {} asked for by app {name} ({}) is held by app {holder} ({}); app {name} not mounted",
                d.prefix,
                d.files.describe(),
                next[holder].files.describe(),
            );
            refused.push(name.clone());
            continue;
        }
        let dir = files_dir(d);
        let overlapping = |placed: &[(PathBuf, String)]| {
            dir.as_ref().and_then(|dir| {
                placed
                    .iter()
                    .find(|(other, owner)| {
                        owner != name && (other.starts_with(dir) || dir.starts_with(other))
                    })
                    .cloned()
            })
        };
        if let Some((held_dir, holder)) = overlapping(&held_dirs) {
            tracing::error!(
                app = %name, holder = %holder, dir = %held_dir.display(),
                "[files] dir of app {name} ({}) overlaps {}, the directory held by app {holder} ({}); app {name} not mounted",
                d.files.describe(),
                held_dir.display(),
                next[&holder].files.describe(),
            );
            refused.push(name.clone());
            continue;
        }
        if let Some((other_dir, owner)) = overlapping(&dirs) {
            tracing::error!(
                app = %name,
                "[files] dir of {} overlaps {}, the directory of {}; app not mounted",
                d.files.describe(),
                other_dir.display(),
                next[&owner].files.describe(),
            );
            refused.push(name.clone());
            continue;
        }
        match table.insert(d.prefix.clone(), d.version.clone()) {
            Ok(()) => {
                owners.insert(d.prefix.clone(), name.clone());
                if let Some(dir) = dir {
                    dirs.push((dir, name.clone()));
                }
            }
            Err(conflict) => {
                let owner = &next[&owners[&conflict.prefix]];
                tracing::error!(
                    app = %name,
                    "route {} of {} is already taken by {}; app not mounted",
                    conflict.prefix,
                    d.files.describe(),
                    owner.files.describe(),
                );
                refused.push(name.clone());
            }
        }
    }
    for name in refused {
        next.remove(&name);
    }
    table
}

/// Who holds what in a table built by [`build_table`].
fn holdings_of(table: &BTreeMap<String, Deployed>) -> Holdings {
    let mut holdings = Holdings::default();
    for (name, d) in table {
        holdings.add(name, d.prefix.as_str(), files_dir(d).as_deref());
    }
    holdings
}

/// The canonical `[files]` directory of a deployment, if it has one.
fn files_dir(d: &Deployed) -> Option<PathBuf> {
    d.version
        .settings()
        .files
        .as_ref()
        .map(|f| f.host_dir.clone())
}

trait Describe {
    fn describe(&self) -> String;
}

impl Describe for AppFiles {
    /// The file that sets the app's route: its manifest if it has one.
    fn describe(&self) -> String {
        self.manifest
            .as_ref()
            .unwrap_or(&self.wasm)
            .display()
            .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_check_that_panics_refuses_its_version() {
        let mut checks = tokio::task::JoinSet::new();
        let mut names = HashMap::new();
        let task = checks.spawn(async {
            if std::hint::black_box(true) {
                panic!("the check blew up");
            }
            ("shop".to_owned(), Ok::<(), String>(()))
        });
        names.insert(task.id(), "shop".to_owned());
        let task = checks.spawn(async { ("fine".to_owned(), Ok::<(), String>(())) });
        names.insert(task.id(), "fine".to_owned());

        let mut outcomes = BTreeMap::new();
        while let Some(joined) = checks.join_next().await {
            let (name, result) = check_outcome(joined, &names).expect("a known task");
            outcomes.insert(name, result.and_then(|checked| checked));
        }
        let refusal = outcomes["shop"].as_ref().unwrap_err();
        assert!(refusal.contains("panicked"), "{refusal}");
        assert_eq!(outcomes["fine"], Ok(()));
    }
}
