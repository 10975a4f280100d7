//! The publishing side of the mesh: store an artifact, change the desired
//! state, and watch the nodes take it. Used by `meshd publish`, `meshd apps
//! --mesh` and the admin API of a node in mesh mode.

use crate::artifacts;
use crate::buckets::Buckets;
use crate::desired::{DesiredApp, DesiredCanary, DesiredCode};
use crate::status::{self, NodeStatus};
use crate::{connect, MeshConfig};
use async_nats::jetstream::kv::Operation;
use futures::StreamExt as _;
use meshd_artifacts::Digest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How often a compare-and-swap of one app's desired state is tried when
/// others write it at the same time.
const CAS_ATTEMPTS: usize = 10;
/// The longest a view of the mesh may take.
const VIEW_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `wait` reads the nodes' status.
/// The longest one read of every node's status may take in a wait.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Why a change of the desired state was not made.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The mesh has no app of that name.
    #[error("the mesh has no app named {0}")]
    NotFound(String),
    /// The change makes no sense as asked (no canary to promote, a bad
    /// percentage, no earlier version to roll back to...).
    #[error("{0}")]
    BadRequest(String),
    /// NATS failed or is unreachable; nothing was changed.
    #[error("{0:#}")]
    Mesh(anyhow::Error),
}

impl From<anyhow::Error> for PublishError {
    fn from(e: anyhow::Error) -> Self {
        PublishError::Mesh(e)
    }
}

/// The desired set and every live node's view of it.
#[derive(Debug, Clone, Serialize)]
pub struct MeshView {
    /// The desired state of each app, by name, with its revision.
    pub desired: BTreeMap<String, DesiredEntry>,
    /// Every node whose status has not expired.
    pub nodes: Vec<NodeStatus>,
}

/// One app's desired state and its revision in the bucket.
#[derive(Debug, Clone, Serialize)]
pub struct DesiredEntry {
    /// The bucket's revision of this value.
    pub revision: u64,
    /// The state.
    #[serde(flatten)]
    pub app: DesiredApp,
}

/// How a wait for the nodes ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitOutcome {
    /// Every live node serves the version (their names).
    Live(Vec<String>),
    /// A node refused it: its name, the refusal's kind and message.
    Refused {
        /// The node.
        node: String,
        /// The refusal's kind.
        kind: String,
        /// Its reason.
        message: String,
    },
    /// Not every node had it when the time ran out: those still waiting.
    TimedOut(Vec<String>),
    /// No node reports to the mesh.
    NoNodes,
}

/// A connection to the mesh for changing the desired state.
pub struct Publisher {
    client: async_nats::Client,
    replicas: usize,
    by: String,
}

impl Publisher {
    /// Connects (failing at once if no server answers). `by` names who
    /// publishes in the desired state.
    pub async fn connect(config: &MeshConfig, by: &str) -> anyhow::Result<Publisher> {
        let client = connect(config, false).await?;
        Ok(Publisher::with_client(client, config.replicas, by))
    }

    /// A publisher on an existing connection (a node's own).
    pub fn with_client(client: async_nats::Client, replicas: usize, by: &str) -> Publisher {
        Publisher {
            client,
            replicas,
            by: by.to_owned(),
        }
    }

    async fn buckets(&self) -> anyhow::Result<Buckets> {
        let js = async_nats::jetstream::new(self.client.clone());
        Buckets::open(&js, self.replicas).await
    }

    /// Stores `wasm` and makes it (with `manifest`) the live version of
    /// `name` on every node, replacing any canary. Answers once the desired
    /// state is stored, with it.
    pub async fn publish(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Option<String>,
    ) -> Result<DesiredEntry, PublishError> {
        let buckets = self.buckets().await?;
        let code = self.store(&buckets, wasm, manifest).await?;
        self.modify(&buckets, name, |_| {
            Ok(DesiredApp::new(code.clone(), &self.by))
        })
        .await
    }

    /// Starts (or replaces) a canary of `name` with `wasm`, taking
    /// `percent` of the requests.
    pub async fn canary(
        &self,
        name: &str,
        wasm: &[u8],
        manifest: Option<String>,
        percent: u8,
        sticky_header: Option<String>,
    ) -> Result<DesiredEntry, PublishError> {
        if !(1..=99).contains(&percent) {
            return Err(PublishError::BadRequest(format!(
                "a canary takes 1 to 99 percent of the requests, not {percent}"
            )));
        }
        let buckets = self.buckets().await?;
        let code = self.store(&buckets, wasm, manifest).await?;
        self.modify(&buckets, name, |current| {
            let mut app = current.ok_or_else(|| PublishError::NotFound(name.to_owned()))?;
            if app.live == code {
                return Err(PublishError::BadRequest(format!(
                    "the canary is the live version of app {name}"
                )));
            }
            app.canary = Some(DesiredCanary {
                code: code.clone(),
                percent,
                sticky_header: sticky_header.clone(),
            });
            Ok(self.stamp(app))
        })
        .await
    }

    /// Makes the canary of `name` its live version on every node.
    pub async fn promote(&self, name: &str) -> Result<DesiredEntry, PublishError> {
        let buckets = self.buckets().await?;
        self.modify(&buckets, name, |current| {
            let mut app = current.ok_or_else(|| PublishError::NotFound(name.to_owned()))?;
            let canary = app.canary.take().ok_or_else(|| {
                PublishError::BadRequest(format!("app {name} has no canary in the mesh"))
            })?;
            app.live = canary.code;
            Ok(self.stamp(app))
        })
        .await
    }

    /// Stops the canary of `name` on every node.
    pub async fn abort(&self, name: &str) -> Result<DesiredEntry, PublishError> {
        let buckets = self.buckets().await?;
        self.modify(&buckets, name, |current| {
            let mut app = current.ok_or_else(|| PublishError::NotFound(name.to_owned()))?;
            if app.canary.take().is_none() {
                return Err(PublishError::BadRequest(format!(
                    "app {name} has no canary in the mesh"
                )));
            }
            Ok(self.stamp(app))
        })
        .await
    }

    /// Publishes an earlier version of `name` again: the one whose digest
    /// starts with `to` (at least 12 hex digits), or the one before the
    /// live version. Earlier versions are the desired bucket's history of
    /// the app (the last [`crate::buckets::DESIRED_HISTORY`] values).
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> Result<DesiredEntry, PublishError> {
        let buckets = self.buckets().await?;
        let mut history =
            buckets.desired.history(name).await.map_err(|e| {
                anyhow::anyhow!("cannot read app {name}'s history in the mesh: {e}")
            })?;
        let mut versions: Vec<DesiredCode> = Vec::new();
        while let Some(entry) = history.next().await {
            let entry = entry.map_err(|e| {
                anyhow::anyhow!("cannot read app {name}'s history in the mesh: {e}")
            })?;
            if entry.operation != Operation::Put {
                continue;
            }
            if let Ok(app) = DesiredApp::decode(name, &entry.value) {
                versions.retain(|v| *v != app.live);
                versions.push(app.live);
            }
        }
        let target = self
            .modify(&buckets, name, |current| {
                let app = current.ok_or_else(|| PublishError::NotFound(name.to_owned()))?;
                let target = match to {
                    Some(wanted) => {
                        let wanted = wanted.strip_prefix("sha256:").unwrap_or(wanted);
                        versions
                            .iter()
                            .rev()
                            .find(|v| wanted.len() >= 12 && v.wasm.to_hex().starts_with(wanted))
                            .cloned()
                            .ok_or_else(|| {
                                PublishError::BadRequest(format!(
                                    "app {name} has no version {wanted} in the mesh's history"
                                ))
                            })?
                    }
                    None => {
                        let at = versions.iter().position(|v| *v == app.live);
                        match at {
                            Some(at) if at > 0 => versions[at - 1].clone(),
                            _ => {
                                return Err(PublishError::BadRequest(format!(
                                    "app {name} has no earlier version in the mesh's history"
                                )))
                            }
                        }
                    }
                };
                Ok(DesiredApp::new(target, &self.by))
            })
            .await?;
        Ok(target)
    }

    /// Removes `name` from the desired set: every node drains and unmounts
    /// it. Its history stays (a publish of the same name may roll back).
    pub async fn remove(&self, name: &str) -> Result<(), PublishError> {
        let buckets = self.buckets().await?;
        let exists = buckets
            .desired
            .get(name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot read app {name} in the mesh: {e}"))?
            .is_some();
        if !exists {
            return Err(PublishError::NotFound(name.to_owned()));
        }
        buckets
            .desired
            .delete(name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove app {name} from the mesh: {e}"))?;
        Ok(())
    }

    /// The desired set and every live node's status (within 30 s: key
    /// listings are consumers, which a failing server can leave silent).
    pub async fn view(&self) -> anyhow::Result<MeshView> {
        tokio::time::timeout(VIEW_TIMEOUT, self.read_view())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "the mesh did not answer within {} s",
                    VIEW_TIMEOUT.as_secs()
                )
            })?
    }

    async fn read_view(&self) -> anyhow::Result<MeshView> {
        let buckets = self.buckets().await?;
        let mut desired = BTreeMap::new();
        let mut keys = buckets
            .desired
            .keys()
            .await
            .map_err(|e| anyhow::anyhow!("cannot list the mesh's apps: {e}"))?;
        let mut names = Vec::new();
        while let Some(key) = keys.next().await {
            names.push(key.map_err(|e| anyhow::anyhow!("cannot list the mesh's apps: {e}"))?);
        }
        for name in names {
            let entry = buckets
                .desired
                .entry(&name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read app {name} in the mesh: {e}"))?;
            if let Some(entry) = entry.filter(|e| e.operation == Operation::Put) {
                match DesiredApp::decode(&name, &entry.value) {
                    Ok(app) => {
                        desired.insert(
                            name,
                            DesiredEntry {
                                revision: entry.revision,
                                app,
                            },
                        );
                    }
                    Err(e) => tracing::warn!("{e}"),
                }
            }
        }
        let nodes = status::read_all(&buckets.nodes).await?;
        Ok(MeshView { desired, nodes })
    }

    /// Waits until every live node serves `digest` for `name` (as its live
    /// version, or as its canary when `canary`), one refuses it, or
    /// `timeout` passes.
    pub async fn wait(
        &self,
        name: &str,
        digest: &Digest,
        canary: bool,
        timeout: Duration,
    ) -> anyhow::Result<WaitOutcome> {
        let buckets = self.buckets().await?;
        let wanted = digest.to_hex();
        let deadline = Instant::now() + timeout;
        loop {
            // A failed read (a request timing out while a cluster elects a
            // new stream leader) is tried again until the deadline: the
            // publish itself is stored already.
            // Bounded: a key listing whose consumer stops delivering never
            // ends on its own (seen: `meshd publish --wait --wait-timeout
            // 60s` hung for 11 minutes in the e2e tests).
            let read = tokio::time::timeout(READ_TIMEOUT, status::read_all(&buckets.nodes))
                .await
                .unwrap_or_else(|_| {
                    Err(anyhow::anyhow!(
                        "reading the nodes' status took more than {READ_TIMEOUT:?}"
                    ))
                });
            let nodes = match read {
                Ok(nodes) => nodes,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(
                        error = format!("{e:#}"),
                        "mesh: cannot read the nodes' status; trying again"
                    );
                    tokio::time::sleep(WAIT_POLL).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut waiting = Vec::new();
            let mut live = Vec::new();
            for node in &nodes {
                let app = node.apps.get(name);
                let serving = app.and_then(|a| {
                    if canary {
                        a.canary.as_ref().map(|c| c.wasm.as_str())
                    } else {
                        a.live.as_deref()
                    }
                });
                if serving == Some(wanted.as_str()) {
                    live.push(node.node.clone());
                    continue;
                }
                if let Some(refused) = app.and_then(|a| a.refused.as_ref()) {
                    // A passing refusal (a failed transfer) is tried
                    // again by the node: wait for its next try.
                    if refused.wasm == wanted && !refused.retrying {
                        return Ok(WaitOutcome::Refused {
                            node: node.node.clone(),
                            kind: refused.kind.clone(),
                            message: refused.message.clone(),
                        });
                    }
                }
                waiting.push(node.node.clone());
            }
            if nodes.is_empty() {
                if Instant::now() >= deadline {
                    return Ok(WaitOutcome::NoNodes);
                }
            } else if waiting.is_empty() {
                return Ok(WaitOutcome::Live(live));
            } else if Instant::now() >= deadline {
                return Ok(WaitOutcome::TimedOut(waiting));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// Stores the artifact and returns the code to name in the state.
    async fn store(
        &self,
        buckets: &Buckets,
        wasm: &[u8],
        manifest: Option<String>,
    ) -> anyhow::Result<DesiredCode> {
        let digest = artifacts::upload(&buckets.artifacts, wasm).await?;
        Ok(DesiredCode {
            wasm: digest,
            size: wasm.len() as u64,
            manifest,
        })
    }

    /// `app`, as published now by this publisher.
    fn stamp(&self, app: DesiredApp) -> DesiredApp {
        DesiredApp {
            published_at: crate::desired::now(),
            by: self.by.clone(),
            ..app
        }
    }

    /// Changes the desired state of `name` with compare-and-swap, so that
    /// two publishers at once never lose one's change: `change` gets the
    /// current state and returns the new one; on a conflict it runs again
    /// on the newer state.
    async fn modify(
        &self,
        buckets: &Buckets,
        name: &str,
        mut change: impl FnMut(Option<DesiredApp>) -> Result<DesiredApp, PublishError>,
    ) -> Result<DesiredEntry, PublishError> {
        let mut last_error = String::new();
        for _ in 0..CAS_ATTEMPTS {
            let entry = buckets
                .desired
                .entry(name)
                .await
                .map_err(|e| anyhow::anyhow!("cannot read app {name} in the mesh: {e}"))?;
            let current = entry
                .as_ref()
                .filter(|e| e.operation == Operation::Put)
                .map(|e| DesiredApp::decode(name, &e.value))
                .transpose()
                .map_err(|e| anyhow::anyhow!(e))?;
            let next = change(current)?;
            let written = match &entry {
                Some(entry) => buckets
                    .desired
                    .update(name, next.encode(), entry.revision)
                    .await
                    .map_err(|e| e.to_string()),
                None => buckets
                    .desired
                    .create(name, next.encode())
                    .await
                    .map_err(|e| e.to_string()),
            };
            match written {
                Ok(revision) => {
                    return Ok(DesiredEntry {
                        revision,
                        app: next,
                    })
                }
                Err(e) => {
                    tracing::debug!(app = %name, error = %e, "mesh: cannot write the desired state (a concurrent change?); trying again");
                    last_error = e;
                }
            }
        }
        Err(PublishError::Mesh(anyhow::anyhow!(
            "cannot change app {name} in the mesh after {CAS_ATTEMPTS} tries (others changing it at the same time, or NATS failing): {last_error}"
        )))
    }
}
