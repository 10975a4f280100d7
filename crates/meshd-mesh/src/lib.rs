//! The mesh: many meshd nodes serve one set of apps, kept in NATS JetStream.
//!
//! Three buckets hold everything the nodes share (see [`buckets`]):
//!
//! - `meshd-apps`, a key-value bucket: the **desired app set**, one key per
//!   app whose value is a [`DesiredApp`] (the code's digest, the manifest,
//!   the canary split). Its history is the app's version history: a mesh
//!   rollback puts an earlier value again.
//! - `meshd-artifacts`, an object store: the `.wasm` files, each named by
//!   the hex SHA-256 of its bytes.
//! - `meshd-nodes`, a key-value bucket whose entries expire: each node's
//!   [`NodeStatus`] (what it serves, what it refused and why), rewritten as
//!   a heartbeat.
//!
//! A node started with `--mesh` runs a [`Follower`]: it watches the desired
//! set from its current state, fetches missing artifacts into the node's
//! artifact store (verified against their digest before they are used), and
//! feeds each change into the node's deploy pipeline as one more source of
//! changes (`Origin::Mesh`). The swap, the checks and the drain are the
//! pipeline's: the mesh never deploys anything itself. [`Publisher`] is the
//! other side: `meshd publish` and the admin API in mesh mode store an
//! artifact and record the desired state, and can wait until every live
//! node reports it.
#![deny(missing_docs)]

pub mod artifacts;
pub mod buckets;
mod connect;
pub mod desired;
mod follower;
mod publisher;
pub mod status;

pub use connect::{connect, MeshConfig};
pub use desired::{DesiredApp, DesiredCanary, DesiredCode};
pub use follower::{Follower, FollowerConfig};
pub use publisher::{DesiredEntry, MeshView, PublishError, Publisher, WaitOutcome};
pub use status::{NodeApp, NodeStatus};
