//! A node following the mesh: the desired app set in, changes to the
//! node's deploy pipeline out, the node's status back.

use crate::artifacts::{self, FetchError};
use crate::buckets::{Buckets, HEARTBEAT};
use crate::desired::{now, DesiredApp, DesiredCanary, DesiredCode};
use crate::status::{NodeApp, NodeCanary, NodeRefusal, NodeStatus};
use crate::MeshConfig;
use async_nats::jetstream::kv::{Entry, Operation};
use futures::StreamExt as _;
use meshd_artifacts::ArtifactStore;
use meshd_registry::{Origin, Refused, Registry};
use meshd_reload::{AppSpec, Applied, CanarySource, Change, PipelineHandle, Snapshot};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a history watch may stay silent before a non-empty bucket is
/// taken as read (entries purged between the count and the watch).
const SYNC_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds of the wait before a broken session is started again.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Most artifact bytes held in memory for one batch of deploys.
const MAX_BATCH_BYTES: u64 = 256 << 20;

/// What a node needs to follow the mesh.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// The NATS servers and credentials.
    pub mesh: MeshConfig,
    /// This node's name in the status bucket.
    pub node: String,
    /// The node's public listening address (shown in its status).
    pub listen: Option<String>,
    /// The largest artifact this node takes (`--max-wasm-size`).
    pub max_wasm_size: u64,
    /// The meshd version, for the status.
    pub meshd_version: String,
}

/// The mesh as one more source of changes into the node's pipeline.
pub struct Follower {
    config: FollowerConfig,
    pipeline: PipelineHandle,
    registry: Arc<Registry>,
    store: ArtifactStore,
    /// The desired state of each app the node last acted on (deployed it,
    /// or refused it for good): what it compares the next desired state
    /// with. Missing: never acted on, or a try that must be repeated (NATS
    /// failed while fetching the artifact).
    applied: BTreeMap<String, DesiredApp>,
    /// What it refused, by app: the digest and the reason.
    refusals: BTreeMap<String, NodeRefusal>,
    /// The whole desired set, as last read.
    desired: BTreeMap<String, DesiredApp>,
    status: NodeStatus,
    /// Told once, when the node first has the whole desired set applied.
    first_sync: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Follower {
    /// A follower feeding `pipeline`, reading what serves from `registry`,
    /// keeping fetched artifacts in `store` (the node's artifact store).
    pub fn new(
        config: FollowerConfig,
        pipeline: PipelineHandle,
        registry: Arc<Registry>,
        store: ArtifactStore,
    ) -> Self {
        let status = NodeStatus {
            node: config.node.clone(),
            meshd_version: config.meshd_version.clone(),
            started_at: now(),
            listen: config.listen.clone(),
            ..Default::default()
        };
        Follower {
            config,
            pipeline,
            registry,
            store,
            applied: BTreeMap::new(),
            refusals: BTreeMap::new(),
            desired: BTreeMap::new(),
            status,
            first_sync: None,
        }
    }

    /// A receiver told when the node has first read and applied the whole
    /// desired set (meshd's readiness waits for it).
    pub fn first_sync(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.first_sync = Some(sender);
        receiver
    }

    /// Follows the mesh on `client` (see [`crate::connect`]) until
    /// `shutdown`. Never gives up: while NATS is
    /// unreachable the node serves what it has and tries again, waiting
    /// longer each time (1 s doubling to 30 s, with jitter) so that a fleet
    /// does not re-create its watches in a storm.
    pub async fn run(mut self, client: async_nats::Client, shutdown: CancellationToken) {
        tracing::info!(node = %self.config.node, servers = %self.config.mesh.servers.join(","), "mesh: following the desired app set");
        let mut retry = RETRY_MIN;
        loop {
            let synced_before = self.status.synced;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                ended = self.session(&client, &shutdown) => match ended {
                    Ok(()) => return,
                    Err(e) => tracing::warn!(error = format!("{e:#}"), retry_in = ?retry, "mesh: following stopped; this node keeps serving what it has"),
                },
            }
            self.status.synced = false;
            if synced_before {
                retry = RETRY_MIN;
            }
            let pause = retry + Duration::from_millis(fastrand::u64(0..1000));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
            retry = (retry * 2).min(RETRY_MAX);
        }
    }

    /// One watch of the desired set, from its current state on, until it
    /// fails (`Err`) or the node shuts down (`Ok`).
    async fn session(
        &mut self,
        client: &async_nats::Client,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let js = async_nats::jetstream::new(client.clone());
        let buckets = Buckets::open(&js, self.config.mesh.replicas).await?;
        // An empty bucket yields no entry at all: the node is in sync at once.
        let mut synced = buckets.desired_state().await?.messages == 0;
        let mut watch = buckets.desired.watch_with_history(">").await?;
        let mut desired = BTreeMap::new();
        if synced {
            self.resync(&buckets, desired.clone()).await;
        }
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        let sync_deadline = tokio::time::sleep(SYNC_TIMEOUT);
        tokio::pin!(sync_deadline);
        // The bucket's revision and the watch's at the last heartbeat, if
        // the watch was behind then.
        let mut behind: Option<(u64, u64)> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = heartbeat.tick() => {
                    tracing::debug!(synced, seen = self.status.desired_revision, "mesh: heartbeat");
                    if synced {
                        behind = self.check_watch(&buckets, behind).await?;
                        self.retry_pending(&buckets).await;
                    }
                    self.report(&buckets).await;
                }
                _ = &mut sync_deadline, if !synced => {
                    let values = buckets.desired_state().await?.messages;
                    tracing::warn!(values, "mesh: the desired set's history did not end in time; taking what was read as complete");
                    synced = true;
                    self.resync(&buckets, std::mem::take(&mut desired)).await;
                }
                entry = watch.next() => {
                    let entry = match entry {
                        Some(Ok(entry)) => entry,
                        Some(Err(e)) => anyhow::bail!("the watch of the desired set failed: {e}"),
                        None => anyhow::bail!("the watch of the desired set ended"),
                    };
                    self.status.desired_revision = self.status.desired_revision.max(entry.revision);
                    if synced {
                        let name = entry.key.clone();
                        let wanted = match decode(&entry) {
                            Desire::Wanted(app) => Some(*app),
                            Desire::Gone => None,
                            Desire::Unreadable => continue,
                        };
                        match &wanted {
                            Some(app) => { self.desired.insert(name.clone(), app.clone()); }
                            None => { self.desired.remove(&name); }
                        }
                        self.reconcile(&buckets, &name, wanted.as_ref()).await;
                        self.report(&buckets).await;
                    } else {
                        match decode(&entry) {
                            Desire::Wanted(app) => { desired.insert(entry.key.clone(), *app); }
                            Desire::Gone => { desired.remove(&entry.key); }
                            // Keep the last readable value, if the node had one.
                            Desire::Unreadable => {
                                if let Some(app) = self.desired.get(&entry.key) {
                                    desired.insert(entry.key.clone(), app.clone());
                                }
                            }
                        }
                        if entry.seen_current || entry.delta == 0 {
                            synced = true;
                            self.resync(&buckets, std::mem::take(&mut desired)).await;
                        }
                    }
                }
            }
        }
    }

    /// Ends the session (it is started again, with backoff) when the watch
    /// has stalled: it is behind the bucket and has delivered nothing for
    /// a whole heartbeat. Seen with a three-server cluster: a node whose
    /// server was killed reconnected to another and its watch delivered
    /// nothing more, with no error, for minutes. Returns the bucket's
    /// revision and the watch's if the watch is behind now. A failed check
    /// (NATS busy or away) is only logged: the watch reports its own
    /// failures.
    async fn check_watch(
        &self,
        buckets: &Buckets,
        behind: Option<(u64, u64)>,
    ) -> anyhow::Result<Option<(u64, u64)>> {
        let seen = self.status.desired_revision;
        if let Some((bucket, then)) = behind {
            anyhow::ensure!(
                seen != then,
                "the watch of the desired set stalled: the bucket was at revision {bucket} a heartbeat ago, the watch is still at {seen}"
            );
        }
        match buckets.desired_state().await {
            Ok(state) => {
                let last = state.last_sequence;
                tracing::debug!(bucket = last, seen, "mesh: the desired bucket's revision");
                Ok((last > seen).then_some((last, seen)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "mesh: cannot read the desired bucket's revision");
                Ok(None)
            }
        }
    }

    /// Brings the node to the whole desired set: mesh apps no longer in it
    /// are removed (they drain), new and changed ones are deployed (in
    /// batches, compiled in parallel by the pipeline), then canaries,
    /// promotions and aborts one app at a time.
    async fn resync(&mut self, buckets: &Buckets, desired: BTreeMap<String, DesiredApp>) {
        tracing::info!(apps = desired.len(), "mesh: read the desired app set");
        self.desired = desired;
        self.status.synced = true;
        let present: BTreeSet<String> = self.desired.keys().cloned().collect();
        // Forget what the mesh no longer has; the snapshot below removes it.
        self.applied.retain(|name, _| present.contains(name));
        self.refusals.retain(|name, _| present.contains(name));

        // First the live versions that differ, as one snapshot per batch.
        let mut batch: Vec<AppSpec> = Vec::new();
        let mut unreadable = Vec::new();
        let mut batch_bytes = 0;
        let mut first = true;
        let wanted: Vec<(String, DesiredApp)> = self
            .desired
            .iter()
            .map(|(name, app)| (name.clone(), app.clone()))
            .collect();
        let mut later = Vec::new();
        for (name, app) in &wanted {
            let plan = plan(self.applied.get(name), app);
            // Apps with a canary step go one at a time after the batches.
            if plan.len() != 1 || !matches!(plan[0], Step::Deploy(_)) {
                if !plan.is_empty() {
                    later.push(name.clone());
                }
                continue;
            }
            match self.spec(buckets, name, &app.live).await {
                Ok(spec) => {
                    batch_bytes += spec.wasm.len();
                    batch.push(spec);
                }
                Err(e) => unreadable.push((name.clone(), e)),
            }
            if batch_bytes >= MAX_BATCH_BYTES {
                self.send_snapshot(
                    &present,
                    std::mem::take(&mut batch),
                    std::mem::take(&mut unreadable),
                )
                .await;
                batch_bytes = 0;
                first = false;
            }
        }
        if first || !batch.is_empty() || !unreadable.is_empty() {
            self.send_snapshot(&present, batch, unreadable).await;
        }
        for name in later {
            let app = self.desired.get(&name).cloned();
            self.reconcile(buckets, &name, app.as_ref()).await;
        }
        self.report(buckets).await;
        if let Some(first_sync) = self.first_sync.take() {
            let _ = first_sync.send(());
        }
    }

    /// Sends one snapshot of the mesh's apps and records each outcome.
    async fn send_snapshot(
        &mut self,
        present: &BTreeSet<String>,
        changed: Vec<AppSpec>,
        unreadable: Vec<(String, FetchError)>,
    ) {
        let mut retry = BTreeSet::new();
        let unreadable = unreadable
            .into_iter()
            .map(|(name, e)| {
                if matches!(e, FetchError::Transfer { .. }) {
                    retry.insert(name.clone());
                }
                (name, Refused::Unreadable(e.to_string()))
            })
            .collect();
        let snapshot = Snapshot {
            origin: Origin::Mesh,
            present: present.clone(),
            changed,
            unreadable,
        };
        match self.pipeline.apply(Change::Snapshot(snapshot)).await {
            Ok(Applied::Snapshot(outcomes)) => {
                for (name, outcome) in outcomes {
                    let Some(app) = self.desired.get(&name).cloned() else {
                        continue;
                    };
                    self.record(
                        &name,
                        &app,
                        &app.live,
                        outcome.map(drop),
                        retry.contains(&name),
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "mesh: the pipeline did not take the mesh's snapshot")
            }
        }
    }

    /// Deploys again the apps whose last try failed for a passing reason.
    async fn retry_pending(&mut self, buckets: &Buckets) {
        let pending: Vec<(String, DesiredApp)> = self
            .desired
            .iter()
            .filter(|(name, app)| {
                self.applied
                    .get(*name)
                    .is_none_or(|applied| !applied.same_target(app))
            })
            .map(|(name, app)| (name.clone(), app.clone()))
            .collect();
        for (name, app) in pending {
            self.reconcile(buckets, &name, Some(&app)).await;
        }
    }

    /// Brings one app to its desired state (`None`: removed from the mesh).
    async fn reconcile(&mut self, buckets: &Buckets, name: &str, wanted: Option<&DesiredApp>) {
        let Some(wanted) = wanted else {
            self.applied.remove(name);
            self.refusals.remove(name);
            let is_ours = self
                .registry
                .load()
                .apps
                .get(name)
                .is_some_and(|s| s.origin == Origin::Mesh && !s.is_gone());
            if is_ours {
                let removal = Change::Remove {
                    name: name.to_owned(),
                    origin: Origin::Mesh,
                };
                match self.pipeline.apply(removal).await {
                    Ok(_) => {
                        tracing::info!(app = %name, "mesh: app removed from the desired set; it drains and unmounts")
                    }
                    Err(e) => {
                        tracing::warn!(app = %name, error = %e, "mesh: cannot remove the app")
                    }
                }
            }
            return;
        };
        for step in plan(self.applied.get(name), wanted) {
            let (code, outcome, passing) = match step {
                Step::Promote => {
                    let change = Change::Promote {
                        name: name.to_owned(),
                        origin: Origin::Mesh,
                    };
                    (
                        &wanted.live,
                        self.pipeline.apply(change).await.map(drop),
                        false,
                    )
                }
                Step::Abort => {
                    let change = Change::Abort {
                        name: name.to_owned(),
                        origin: Origin::Mesh,
                    };
                    let outcome = match self.pipeline.apply(change).await {
                        Err(Refused::NoCanary(_)) => Ok(()),
                        other => other.map(drop),
                    };
                    (&wanted.live, outcome, false)
                }
                Step::Deploy(code) => match self.spec(buckets, name, code).await {
                    Ok(spec) => (
                        code,
                        self.pipeline.apply(Change::Upsert(spec)).await.map(drop),
                        false,
                    ),
                    Err(e) => {
                        let passing = matches!(e, FetchError::Transfer { .. });
                        (code, Err(Refused::Unreadable(e.to_string())), passing)
                    }
                },
                Step::Canary(canary) => match self.spec(buckets, name, &canary.code).await {
                    Ok(spec) => {
                        let sticky_header = canary
                            .sticky_header
                            .as_deref()
                            .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok());
                        let change = Change::Canary {
                            name: name.to_owned(),
                            origin: Origin::Mesh,
                            from: CanarySource::Upload(spec),
                            percent: canary.percent,
                            sticky_header,
                        };
                        (
                            &canary.code,
                            self.pipeline.apply(change).await.map(drop),
                            false,
                        )
                    }
                    Err(e) => {
                        let passing = matches!(e, FetchError::Transfer { .. });
                        (
                            &canary.code,
                            Err(Refused::Unreadable(e.to_string())),
                            passing,
                        )
                    }
                },
            };
            let failed = outcome.is_err();
            self.record(name, wanted, code, outcome, passing);
            if failed {
                break;
            }
        }
    }

    /// Notes the outcome of acting on `wanted`. A refusal for a passing
    /// reason leaves the app to be tried again; any other outcome is final
    /// until the desired state changes.
    fn record(
        &mut self,
        name: &str,
        wanted: &DesiredApp,
        code: &DesiredCode,
        outcome: Result<(), Refused>,
        passing: bool,
    ) {
        match outcome {
            Ok(()) => {
                self.refusals.remove(name);
                self.applied.insert(name.to_owned(), wanted.clone());
            }
            Err(refusal) => {
                tracing::warn!(app = %name, version = %code.wasm.short(), kind = refusal.kind(), "mesh: this node refused the desired version: {refusal}");
                self.refusals.insert(
                    name.to_owned(),
                    NodeRefusal {
                        wasm: code.wasm.to_hex(),
                        kind: refusal.kind().to_owned(),
                        message: refusal.to_string(),
                        at: now(),
                        retrying: passing,
                    },
                );
                if passing {
                    self.applied.remove(name);
                } else {
                    self.applied.insert(name.to_owned(), wanted.clone());
                }
            }
        }
    }

    /// The spec of one version, its artifact fetched if this node lacks it.
    async fn spec(
        &self,
        buckets: &Buckets,
        name: &str,
        code: &DesiredCode,
    ) -> Result<AppSpec, FetchError> {
        let wasm = artifacts::fetch(
            &buckets.artifacts,
            &self.store,
            &code.wasm,
            self.config.max_wasm_size,
        )
        .await?;
        Ok(AppSpec {
            name: name.to_owned(),
            origin: Origin::Mesh,
            wasm: wasm.into(),
            manifest_label: code
                .manifest
                .as_ref()
                .map(|_| format!("manifest of mesh version {}", code.wasm.short())),
            manifest: code.manifest.clone(),
            wasm_label: format!("mesh artifact sha256:{}", code.wasm.short()),
        })
    }

    /// Writes this node's status (its heartbeat) to the nodes bucket.
    async fn report(&mut self, buckets: &Buckets) {
        let set = self.registry.load();
        let mut apps = BTreeMap::new();
        let names: BTreeSet<&String> = self
            .desired
            .keys()
            .chain(
                set.apps
                    .iter()
                    .filter(|(_, s)| s.origin == Origin::Mesh && !s.is_gone())
                    .map(|(name, _)| name),
            )
            .collect();
        for name in names {
            let serving = set.apps.get(name).filter(|s| s.origin == Origin::Mesh);
            apps.insert(
                name.clone(),
                NodeApp {
                    live: serving
                        .and_then(|s| s.live.as_ref())
                        .map(|v| v.digest.to_hex()),
                    canary: serving.and_then(|s| s.canary.as_ref()).map(|(v, percent)| {
                        NodeCanary {
                            wasm: v.digest.to_hex(),
                            percent: *percent,
                        }
                    }),
                    desired: self.desired.get(name).map(|d| d.live.wasm.to_hex()),
                    refused: self.refusals.get(name).cloned(),
                },
            );
        }
        self.status.apps = apps;
        self.status.updated_at = now();
        if let Err(e) = buckets
            .nodes
            .put(&self.config.node, self.status.encode())
            .await
        {
            tracing::debug!(error = %e, "mesh: cannot write this node's status");
        }
    }
}

/// What an entry of the desired bucket says of its app.
enum Desire {
    /// Serve this.
    Wanted(Box<DesiredApp>),
    /// Removed from the mesh.
    Gone,
    /// A value this node cannot read: logged, and the app left as it is
    /// (a bad value never takes an app down by itself).
    Unreadable,
}

fn decode(entry: &Entry) -> Desire {
    match entry.operation {
        Operation::Delete | Operation::Purge => Desire::Gone,
        Operation::Put => match DesiredApp::decode(&entry.key, &entry.value) {
            Ok(app) => Desire::Wanted(Box::new(app)),
            Err(e) => {
                tracing::error!(app = %entry.key, revision = entry.revision, "mesh: {e}; the app is left as it is");
                Desire::Unreadable
            }
        },
    }
}

/// One thing to ask of the pipeline.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    /// Make the running canary the live version.
    Promote,
    /// Stop the running canary.
    Abort,
    /// Deploy this live version.
    Deploy(&'a DesiredCode),
    /// Start this canary.
    Canary(&'a DesiredCanary),
}

/// What to ask of the pipeline to go from what the node last applied
/// (`from`) to `to`. A canary that became the live version is promoted
/// (no second compile; its instances are warm); any other change of canary
/// stops the old one first; a redeploy stops a canary by itself.
fn plan<'a>(from: Option<&DesiredApp>, to: &'a DesiredApp) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut live = from.map(|f| &f.live);
    let mut canary = from.and_then(|f| f.canary.as_ref());
    if let Some(running) = canary {
        if to.canary.as_ref() != Some(running) {
            if running.code == to.live {
                steps.push(Step::Promote);
                live = Some(&to.live);
            } else {
                steps.push(Step::Abort);
            }
            canary = None;
        }
    }
    if live != Some(&to.live) {
        steps.push(Step::Deploy(&to.live));
        canary = None;
    }
    if let Some(wanted) = &to.canary {
        if canary != Some(wanted) {
            steps.push(Step::Canary(wanted));
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshd_artifacts::Digest;

    fn code(byte: u8) -> DesiredCode {
        DesiredCode {
            wasm: Digest::of(&[byte]),
            size: 1,
            manifest: None,
        }
    }

    fn app(live: u8, canary: Option<(u8, u8)>) -> DesiredApp {
        let mut app = DesiredApp::new(code(live), "test");
        app.canary = canary.map(|(byte, percent)| DesiredCanary {
            code: code(byte),
            percent,
            sticky_header: None,
        });
        app
    }

    #[test]
    fn a_new_app_is_deployed() {
        let to = app(1, None);
        assert_eq!(plan(None, &to), [Step::Deploy(&to.live)]);
    }

    #[test]
    fn the_same_state_needs_nothing() {
        assert!(plan(Some(&app(1, Some((2, 10)))), &app(1, Some((2, 10)))).is_empty());
    }

    #[test]
    fn a_canary_starts_on_the_live_version() {
        let to = app(1, Some((2, 10)));
        assert_eq!(
            plan(Some(&app(1, None)), &to),
            [Step::Canary(to.canary.as_ref().unwrap())]
        );
    }

    #[test]
    fn a_canary_that_became_live_is_promoted() {
        assert_eq!(
            plan(Some(&app(1, Some((2, 10)))), &app(2, None)),
            [Step::Promote]
        );
    }

    #[test]
    fn a_dropped_canary_is_aborted() {
        assert_eq!(
            plan(Some(&app(1, Some((2, 10)))), &app(1, None)),
            [Step::Abort]
        );
    }

    #[test]
    fn a_new_split_restarts_the_canary() {
        let to = app(1, Some((2, 50)));
        assert_eq!(
            plan(Some(&app(1, Some((2, 10)))), &to),
            [Step::Abort, Step::Canary(to.canary.as_ref().unwrap())]
        );
    }

    #[test]
    fn a_redeploy_with_a_canary_deploys_then_starts_the_canary_again() {
        let to = app(3, Some((2, 10)));
        assert_eq!(
            plan(Some(&app(1, Some((2, 10)))), &to),
            [
                Step::Deploy(&to.live),
                Step::Canary(to.canary.as_ref().unwrap())
            ]
        );
    }

    #[test]
    fn a_node_that_missed_the_canary_deploys_the_promoted_version() {
        let to = app(2, None);
        assert_eq!(plan(Some(&app(1, None)), &to), [Step::Deploy(&to.live)]);
    }
}
