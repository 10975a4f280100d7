//! Each node's own view, as the `meshd-nodes` bucket stores it: what it
//! serves and what it refused, rewritten as a heartbeat.

use anyhow::Context as _;
use async_nats::jetstream::kv;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A node's report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's name (`--node-name`, default the host name).
    pub node: String,
    /// The meshd version it runs.
    pub meshd_version: String,
    /// When it started (RFC 3339, its clock).
    pub started_at: String,
    /// When it wrote this report (RFC 3339, its clock; liveness is judged by
    /// the bucket's expiry, not by this).
    pub updated_at: String,
    /// Whether it has read the whole desired set since it (re)connected.
    pub synced: bool,
    /// The highest revision of the desired bucket it has taken in.
    pub desired_revision: u64,
    /// Its public listening address, if known (for people to find it).
    #[serde(default)]
    pub listen: Option<String>,
    /// Every app the mesh asked it to serve, by name.
    pub apps: BTreeMap<String, NodeApp>,
}

/// One app as one node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeApp {
    /// The digest (hex) of the version it serves, if any.
    pub live: Option<String>,
    /// The digest of its canary and the canary's share, if one runs.
    #[serde(default)]
    pub canary: Option<NodeCanary>,
    /// The digest the mesh asks for.
    pub desired: Option<String>,
    /// Why the node did not apply what the mesh asks for, if it did not.
    #[serde(default)]
    pub refused: Option<NodeRefusal>,
}

/// A canary on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCanary {
    /// Its digest (hex).
    pub wasm: String,
    /// Its share of the requests.
    pub percent: u8,
}

/// A desired version the node refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRefusal {
    /// The digest (hex) it refused.
    pub wasm: String,
    /// The refusal's kind (as the admin API names it: `compile_error`,
    /// `over_ceiling`, `unreadable`, ...).
    pub kind: String,
    /// The whole reason.
    pub message: String,
    /// When (RFC 3339, its clock).
    pub at: String,
    /// Whether the node tries again by itself (a transfer from NATS that
    /// failed): a passing refusal, which `meshd publish --wait` waits out.
    #[serde(default)]
    pub retrying: bool,
}

impl NodeStatus {
    /// The value to store.
    pub fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// Every node whose status has not expired, by name. A value that cannot be
/// read is skipped with a warning (a newer meshd may write more).
pub async fn read_all(nodes: &kv::Store) -> anyhow::Result<Vec<NodeStatus>> {
    let mut keys = nodes.keys().await.context("cannot list the mesh's nodes")?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.context("cannot list the mesh's nodes")?);
    }
    // A key listing may name a key twice (seen in the NATS restart test:
    // `meshd publish --wait` answered "live on 3 node(s): n1, n1, n2"; the
    // listing is a consumer, which can deliver a key rewritten while it
    // runs, or start again after a reconnect).
    names.sort();
    names.dedup();
    let mut statuses = Vec::new();
    for name in names {
        let Some(bytes) = nodes
            .get(&name)
            .await
            .with_context(|| format!("cannot read node {name}'s status"))?
        else {
            continue;
        };
        match serde_json::from_slice::<NodeStatus>(&bytes) {
            Ok(status) => statuses.push(status),
            Err(e) => {
                tracing::warn!(node = %name, error = %e, "unreadable node status in the mesh")
            }
        }
    }
    Ok(statuses)
}
