//! The deploy pipeline: the one task that changes what meshd serves.
//!
//! Every source sends [`Change`]s through a [`PipelineHandle`]; the
//! [`Pipeline`] applies them one at a time: it validates and compiles a new
//! version ([`prepare`]), instantiates it and runs its health check
//! ([`check`]), decides who gets which route ([`table`]), keeps its bytes
//! in the artifact store ([`history`]), publishes the new state to the
//! [`Registry`] in one atomic step, and drains what it replaced. Each change
//! is answered with what happened or a typed [`Refused`]. Readers of the
//! registry never wait for any of this.

mod check;
mod history;
mod operations;
mod prepare;
mod publish;
mod table;

use crate::change::{AppSpec, Applied, Change, PipelineHandle, Request};
use crate::drain::retire;
use crate::holdings::Holdings;
use crate::progress::LoadProgress;
use crate::ReloadConfig;
use meshd_artifacts::{ArtifactStore, StoredVersion};
use meshd_registry::{Origin, Refused, Registry};
use meshd_tenant::{AppLedger, InFlight, Runtime};
use prepare::Deployed;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// How many changes may wait for the pipeline before senders wait too.
const QUEUE: usize = 64;

/// Apps restored from the artifact store at start are deployed in batches
/// of at most this many.
const MAX_RESTORE_BATCH: usize = 1024;

/// Kept lists written in the background are published this long after the
/// first of them comes back, together with those that come meanwhile: each
/// publish rebuilds every app's status, and a start-up with thousands of
/// apps brings their lists back in many batches. Only the admin API shows
/// them, so a moment late costs nothing.
const KEPT_PUBLISH_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// What all changes so far did, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct DeployTotals {
    deployed: AtomicU64,
    refused: AtomicU64,
    removed: AtomicU64,
}

/// A copy of [`DeployTotals`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// New versions that went live.
    pub deployed: u64,
    /// New versions refused (a previous version, if any, kept serving).
    pub refused: u64,
    /// Apps unmounted and forgotten.
    pub removed: u64,
}

impl DeployTotals {
    /// The totals now.
    pub fn get(&self) -> Totals {
        Totals {
            deployed: self.deployed.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
        }
    }

    fn count(&self, outcome: &Result<Applied, Refused>) {
        let counter = match outcome {
            Ok(Applied::Deployed) => &self.deployed,
            Ok(Applied::Removed) => &self.removed,
            Err(refusal) if refusal.is_about_the_app() => &self.refused,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A canary in progress.
struct Trial {
    deployed: Deployed,
    percent: u8,
    sticky_header: Option<http::HeaderName>,
    /// Its bytes, to keep them in the store when it is promoted.
    spec: AppSpec,
}

/// What the pipeline knows of one app.
struct Entry {
    origin: Origin,
    /// What the app keeps across its versions (its requests in flight, its
    /// budgets): every version built for it runs within it.
    ledger: Arc<AppLedger>,
    live: Option<Deployed>,
    canary: Option<Trial>,
    last_error: Option<(Refused, SystemTime)>,
    deploying: bool,
    draining: Vec<Arc<InFlight>>,
    /// Shared with each published status: a publish copies no list.
    kept: Arc<[StoredVersion]>,
    /// The route its last attempt asked for (shown while it is not live).
    asked_route: Option<meshd_routes::Route>,
}

impl Entry {
    fn new(runtime: &Runtime, name: &str, origin: Origin) -> Self {
        Entry {
            origin,
            ledger: AppLedger::new(runtime, name),
            live: None,
            canary: None,
            last_error: None,
            deploying: false,
            draining: Vec::new(),
            kept: Arc::new([]),
            asked_route: None,
        }
    }

    /// Whether nothing is left of it: no version, no error to show, no
    /// request still draining.
    fn is_gone(&self) -> bool {
        self.live.is_none()
            && !self.deploying
            && self.last_error.is_none()
            && self.draining.iter().all(|requests| requests.count() == 0)
    }

    /// Whether another source may take the name: nothing of it serves or
    /// is being deployed.
    fn is_claimed(&self) -> bool {
        self.live.is_some() || self.deploying
    }

    /// The refusal of a change of app `name` from `asked`, if the app is
    /// claimed by another source.
    fn origin_conflict(&self, name: &str, asked: Origin) -> Option<Refused> {
        (self.origin != asked && self.is_claimed()).then(|| Refused::OriginConflict {
            app: name.to_owned(),
            owner: self.origin,
            asked,
        })
    }
}

/// The single writer of the [`Registry`].
pub struct Pipeline {
    runtime: Arc<Runtime>,
    config: Arc<ReloadConfig>,
    registry: Arc<Registry>,
    store: Option<ArtifactStore>,
    apps: BTreeMap<String, Entry>,
    /// Who held what after the last change (at start-up: as saved).
    holdings: Holdings,
    totals: Arc<DeployTotals>,
    requests: mpsc::Receiver<Request>,
    /// The queue of writes to the artifact store (`None`: no store).
    history: Option<mpsc::UnboundedSender<history::Job>>,
    /// Kept lists written in the background, coming back.
    kept_updates: mpsc::UnboundedReceiver<Vec<history::KeptUpdate>>,
    /// The writer's ends of those two queues, until `run` starts it.
    writer: Option<(
        mpsc::UnboundedReceiver<history::Job>,
        mpsc::UnboundedSender<Vec<history::KeptUpdate>>,
    )>,
}

impl Pipeline {
    /// A pipeline publishing to `registry`, keeping versions in `store`,
    /// and the handle sources send their changes through.
    pub fn new(
        runtime: Arc<Runtime>,
        config: ReloadConfig,
        registry: Arc<Registry>,
        store: Option<ArtifactStore>,
    ) -> (Pipeline, PipelineHandle) {
        let holdings = config
            .holdings_file
            .as_deref()
            .map(Holdings::load)
            .unwrap_or_default();
        let (sender, requests) = mpsc::channel(QUEUE);
        let (history, jobs) = mpsc::unbounded_channel();
        let (updates, kept_updates) = mpsc::unbounded_channel();
        let pipeline = Pipeline {
            history: store.is_some().then_some(history),
            kept_updates,
            writer: Some((jobs, updates)),
            runtime,
            config: Arc::new(config),
            registry,
            store,
            apps: BTreeMap::new(),
            holdings,
            totals: Arc::default(),
            requests,
        };
        (pipeline, PipelineHandle::new(sender))
    }

    /// The deploy counters, for the metrics endpoint.
    pub fn totals(&self) -> Arc<DeployTotals> {
        self.totals.clone()
    }

    /// Brings back the apps the admin API deployed (from the artifact
    /// store), then applies changes as they come, until every handle is
    /// dropped.
    pub async fn run(mut self) {
        if let (Some(store), Some((jobs, updates))) = (self.store.clone(), self.writer.take()) {
            tokio::spawn(history::write_history(store, jobs, updates));
        }
        self.restore().await;
        // When kept lists that came back are published (`None`: none wait).
        let mut publish_kept: Option<tokio::time::Instant> = None;
        loop {
            let kept_due = async {
                match publish_kept {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                request = self.requests.recv() => {
                    let Some(Request { change, reply }) = request else { return };
                    let outcome = self.apply(change).await;
                    // The sender may have given up waiting: no matter.
                    let _ = reply.send(outcome);
                }
                Some(updates) = self.kept_updates.recv() => {
                    updates.into_iter().for_each(|update| self.take_kept(update));
                    publish_kept.get_or_insert_with(|| tokio::time::Instant::now() + KEPT_PUBLISH_DELAY);
                }
                () = kept_due => {
                    publish_kept = None;
                    self.publish();
                }
            }
        }
    }

    async fn apply(&mut self, change: Change) -> Result<Applied, Refused> {
        match change {
            Change::Upsert(spec) => {
                let name = spec.name.clone();
                let mut outcomes = self.deploy(vec![spec]).await;
                outcomes
                    .remove(&name)
                    .unwrap_or_else(|| Err(Refused::Internal("no outcome".into())))
            }
            Change::Remove { name, origin } => self.remove_by(&name, origin).await,
            Change::Snapshot(snapshot) => Ok(Applied::Snapshot(self.snapshot(snapshot).await)),
            Change::Rollback { name, origin, to } => self.rollback(&name, origin, to).await,
            Change::Canary {
                name,
                origin,
                from,
                percent,
                sticky_header,
            } => {
                self.canary(&name, origin, from, percent, sticky_header)
                    .await
            }
            Change::Promote { name, origin } => self.promote(&name, origin).await,
            Change::Abort { name, origin } => self.abort(&name, origin).await,
        }
    }

    /// The entry of `name` if `origin` may change it.
    fn owned(&self, name: &str, origin: Origin) -> Result<&Entry, Refused> {
        let entry = self
            .apps
            .get(name)
            .filter(|e| e.is_claimed() || e.last_error.is_some())
            .ok_or_else(|| Refused::NotFound(name.to_owned()))?;
        if entry.origin != origin {
            return Err(Refused::OriginConflict {
                app: name.to_owned(),
                owner: entry.origin,
                asked: origin,
            });
        }
        Ok(entry)
    }

    /// Deploys `specs` together: each is prepared and checked, then all that
    /// passed are placed and go live in one switch of the table.
    async fn deploy(&mut self, specs: Vec<AppSpec>) -> BTreeMap<String, Result<Applied, Refused>> {
        let (accepted, mut outcomes) = self.admit(specs);
        if accepted.is_empty() {
            return outcomes;
        }
        for spec in &accepted {
            let entry = self
                .apps
                .entry(spec.name.clone())
                .or_insert_with(|| Entry::new(&self.runtime, &spec.name, spec.origin));
            entry.origin = spec.origin;
            entry.deploying = true;
        }
        if !self.registry.startup().progress().done {
            self.registry.startup().expect(accepted.len());
        }
        self.publish();

        let mut candidates = self.prepare_all(&accepted).await;
        let specs: HashMap<String, AppSpec> = accepted
            .into_iter()
            .map(|spec| (spec.name.clone(), spec))
            .collect();
        let new: Vec<(String, Deployed)> = candidates
            .iter()
            .filter_map(|(name, c)| c.as_ref().ok().map(|d| (name, d)))
            .filter(|(name, d)| !self.is_live_as_is(name, d))
            .map(|(name, d)| (name.clone(), d.clone()))
            .collect();
        let failed = check::check_all(
            new,
            self.runtime.config().max_instances,
            self.config.health_timeout,
        )
        .await;
        for (name, refusal) in failed {
            candidates.insert(name, Err(refusal));
        }

        // Every app that has or wants a version, with its options.
        let placement = {
            let mut wants: BTreeMap<String, Vec<&Deployed>> = BTreeMap::new();
            for (name, entry) in &self.apps {
                let mut options = Vec::new();
                if let Some(Ok(new)) = candidates.get(name) {
                    options.push(new);
                }
                options.extend(entry.live.as_ref());
                if !options.is_empty() {
                    wants.insert(name.clone(), options);
                }
            }
            table::place(&wants, &self.holdings)
        };

        let mut retired = Vec::new();
        let mut went_live = Vec::new();
        // Live versions that stay, with a new manifest: kept as versions of
        // their own, so that a restart or a rollback finds that manifest.
        let mut new_manifest = Vec::new();
        let names: Vec<String> = self.apps.keys().cloned().collect();
        for name in names {
            let Some(entry) = self.apps.get_mut(&name) else {
                continue;
            };
            let candidate = candidates.remove(&name);
            let chosen = placement.chosen.get(&name).copied();
            let old = entry.live.take();
            if candidate.is_none() && chosen.is_none() {
                // Lost its route to a conflict without changing: only
                // possible when holdings were saved by another run.
                if let (Some(refusal), Some(_)) = (placement.refused.get(&name), &old) {
                    tracing::error!(app = %name, "app unmounted: {refusal}");
                    entry.last_error = Some((refusal.clone(), SystemTime::now()));
                }
            }
            if let Some(Ok(new)) = &candidate {
                if chosen != Some(0) {
                    entry.asked_route = Some(new.route.clone());
                }
            }
            let (now_live, outcome) = decide(
                old.as_ref(),
                candidate,
                chosen,
                placement.refused.get(&name),
            );
            entry.deploying = false;
            if let Some(outcome) = outcome {
                match &outcome {
                    Ok(_) => entry.last_error = None,
                    Err(refusal) => {
                        log_refusal(&name, refusal, now_live.as_ref());
                        entry.last_error = Some((refusal.clone(), SystemTime::now()));
                    }
                }
                self.totals.count(&outcome);
                if !self.registry.startup().progress().done {
                    self.registry.startup().decided();
                }
                outcomes.insert(name.clone(), outcome);
            }
            match (&old, &now_live) {
                (Some(old), Some(new)) if Arc::ptr_eq(&old.version, &new.version) => {
                    if old.route != new.route {
                        tracing::info!(app = %name, from = %old.route, to = %new.route, "app moved");
                    }
                    if old.manifest_digest != new.manifest_digest {
                        new_manifest.push((name.clone(), new.clone(), None));
                    }
                }
                (Some(old), Some(new)) => {
                    went_live.push((name.clone(), new.clone(), Some(old.version.id().to_owned())));
                    retired.push((old.version.clone(), "replaced"));
                    if let Some(trial) = entry.canary.take() {
                        tracing::info!(app = %name, version = %trial.deployed.version.id(), "canary stopped: the app was redeployed");
                        retired.push((trial.deployed.version, "canary stopped"));
                    }
                }
                (None, Some(new)) => went_live.push((name.clone(), new.clone(), None)),
                (Some(old), None) => retired.push((old.version.clone(), "unmounted")),
                (None, None) => {}
            }
            entry.live = now_live;
        }

        self.keep_history(&[went_live.as_slice(), &new_manifest].concat(), &specs)
            .await;
        self.update_holdings();
        // Switch first, then say so: once `app deployed` or `app updated`
        // is logged, requests reach the new version.
        self.publish();
        for (name, new, previous) in &went_live {
            log_went_live(name, new, previous.as_deref());
        }
        for (version, why) in retired {
            retire(version, self.config.drain_timeout, why);
        }
        outcomes
    }

    /// Splits `specs` into those this change may deploy and the refusals of
    /// those whose app belongs to another source.
    fn admit(
        &self,
        specs: Vec<AppSpec>,
    ) -> (Vec<AppSpec>, BTreeMap<String, Result<Applied, Refused>>) {
        let mut refused = BTreeMap::new();
        let mut accepted = Vec::new();
        for spec in specs {
            let entry = self.apps.get(&spec.name);
            match entry.and_then(|e| e.origin_conflict(&spec.name, spec.origin)) {
                Some(refusal) => {
                    log_refusal(&spec.name, &refusal, entry.and_then(|e| e.live.as_ref()));
                    refused.insert(spec.name, Err(refusal));
                }
                None => accepted.push(spec),
            }
        }
        (accepted, refused)
    }

    /// Whether `candidate` is the app's live version with the same manifest
    /// text: nothing to check. A new manifest for the running code (a new
    /// route or health path) is checked like a new version.
    fn is_live_as_is(&self, name: &str, candidate: &Deployed) -> bool {
        self.apps
            .get(name)
            .and_then(|e| e.live.as_ref())
            .is_some_and(|live| {
                Arc::ptr_eq(&live.version, &candidate.version)
                    && live.manifest_digest == candidate.manifest_digest
            })
    }

    /// Prepares every spec on `load_parallelism` blocking threads, each
    /// taking the next spec when it is done with one: a thread hand-off per
    /// app made a start-up with thousands of apps spend a tenth of its time
    /// switching threads.
    async fn prepare_all(&self, specs: &[AppSpec]) -> BTreeMap<String, Result<Deployed, Refused>> {
        let work: Vec<_> = specs
            .iter()
            .filter_map(|spec| {
                let entry = self.apps.get(&spec.name)?;
                Some((spec.clone(), entry.live.clone(), entry.ledger.clone()))
            })
            .collect();
        let total = work.len();
        let queue = Arc::new(Mutex::new(work.into_iter()));
        let (done, mut results) = mpsc::unbounded_channel();
        for _ in 0..self.config.load_parallelism.clamp(1, total.max(1)) {
            let (queue, done) = (queue.clone(), done.clone());
            let (runtime, config, store) = (
                self.runtime.clone(),
                self.config.clone(),
                self.store.clone(),
            );
            tokio::task::spawn_blocking(move || loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                let Some((spec, previous, ledger)) = next else {
                    return;
                };
                // A spec whose preparation panicked is refused; the others
                // go on.
                let prepared = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    let store = store.as_ref();
                    prepare::prepare(&runtime, &ledger, &config, store, &spec, previous.as_ref())
                }))
                .unwrap_or_else(|panic| {
                    tracing::error!(app = %spec.name, "loading the app panicked: {}", panic_message(&panic));
                    Err(Refused::Internal("loading the new version panicked".into()))
                });
                if done.send((spec.name, prepared)).is_err() {
                    return; // The deploy was dropped (meshd is stopping).
                }
            });
        }
        drop(done);
        let mut prepared = BTreeMap::new();
        let mut progress = LoadProgress::new(total);
        while let Some((name, outcome)) = results.recv().await {
            progress.record(outcome.as_ref().ok().map(|d| d.version.cache_outcome()));
            prepared.insert(name, outcome);
        }
        prepared
    }
}

/// The text a panic was raised with, if it was text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// What serves an app after a change, and the outcome to answer (`None`:
/// the change did not touch the app), from its version before the change
/// (`old`), its new candidate (or why it was refused), the option placement
/// chose for it (0: the candidate, 1: the old version) and, if its first
/// option was not placed, why.
fn decide(
    old: Option<&Deployed>,
    candidate: Option<Result<Deployed, Refused>>,
    chosen: Option<usize>,
    placement_refusal: Option<&Refused>,
) -> (Option<Deployed>, Option<Result<Applied, Refused>>) {
    match (candidate, chosen) {
        (Some(Ok(new)), Some(0)) => {
            // The same running version with the same manifest text: a new
            // manifest that changes no setting (a route, a health path)
            // reuses the version but is a change.
            let unchanged = old.is_some_and(|o| {
                Arc::ptr_eq(&o.version, &new.version) && o.manifest_digest == new.manifest_digest
            });
            let applied = if unchanged {
                Applied::Unchanged
            } else {
                Applied::Deployed
            };
            (Some(new), Some(Ok(applied)))
        }
        (Some(Ok(_)), chosen) => {
            let refusal = placement_refusal
                .cloned()
                .unwrap_or_else(|| Refused::Internal("the version could not be placed".into()));
            // Placed with its old version (the second option), or not at all.
            (chosen.and(old.cloned()), Some(Err(refusal)))
        }
        (Some(Err(refusal)), _) => (old.cloned(), Some(Err(refusal))),
        (None, Some(_)) => (old.cloned(), None),
        (None, None) => (None, None),
    }
}

/// Says why a change of `name` was refused, and what serves it meanwhile.
fn log_refusal(name: &str, refusal: &Refused, serving: Option<&Deployed>) {
    match serving {
        Some(serving) => tracing::error!(
            app = %name,
            "new version refused: {refusal}; version {} keeps serving",
            serving.version.id()
        ),
        None => tracing::error!(app = %name, "app not loaded: {refusal}"),
    }
}

/// Says that `new` went live for `name` (replacing `previous`, if any).
fn log_went_live(name: &str, new: &Deployed, previous: Option<&str>) {
    let version = &new.version;
    match previous {
        Some(previous) => tracing::info!(
            app = %name, version = %version.id(), previous = %previous,
            route = %new.route, cache = %version.cache_outcome().as_str(),
            compile_ms = version.compile_time().as_millis() as u64,
            "app updated"
        ),
        None => tracing::info!(
            app = %name, version = %version.id(), route = %new.route,
            cache = %version.cache_outcome().as_str(),
            compile_ms = version.compile_time().as_millis() as u64,
            "app deployed"
        ),
    }
}
