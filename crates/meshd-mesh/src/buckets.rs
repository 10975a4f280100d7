//! The JetStream buckets the mesh keeps its state in, opened (and created
//! on first use) the same way by every node and every publisher.

use anyhow::Context as _;
use async_nats::jetstream::{self, kv, object_store};
use std::time::Duration;

/// The desired app set: one key per app (its name), value a
/// [`crate::DesiredApp`] as JSON.
pub const DESIRED: &str = "meshd-apps";
/// The artifacts: objects named by the hex SHA-256 of their bytes.
pub const ARTIFACTS: &str = "meshd-artifacts";
/// Each node's status, one key per node (its name); entries expire.
pub const NODES: &str = "meshd-nodes";

/// How many earlier values of an app the desired bucket keeps: what a mesh
/// rollback can go back to (JetStream's maximum is 64).
pub const DESIRED_HISTORY: i64 = 10;
/// How long a node's status outlives its last heartbeat: a node silent for
/// longer is gone from the view (server-side expiry; no node's clock is
/// trusted).
pub const NODE_STATUS_TTL: Duration = Duration::from_secs(30);
/// How often a node rewrites its status.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Artifacts are stored in chunks of this size: each chunk's publish is
/// acknowledged before the next, so bigger chunks mean fewer round trips.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The three buckets.
#[derive(Clone)]
pub struct Buckets {
    /// [`DESIRED`].
    pub desired: kv::Store,
    /// [`ARTIFACTS`].
    pub artifacts: object_store::ObjectStore,
    /// [`NODES`].
    pub nodes: kv::Store,
}

impl Buckets {
    /// Opens the buckets, creating any that does not exist with `replicas`
    /// JetStream replicas.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> anyhow::Result<Buckets> {
        let replicas = replicas.max(1);
        let desired = open_kv(
            js,
            kv::Config {
                bucket: DESIRED.to_owned(),
                description:
                    "meshd: the desired app set (app name -> code digest, manifest, canary)"
                        .to_owned(),
                history: DESIRED_HISTORY,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let nodes = open_kv(
            js,
            kv::Config {
                bucket: NODES.to_owned(),
                description: "meshd: each node's status and heartbeat".to_owned(),
                history: 1,
                max_age: NODE_STATUS_TTL,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await?;
        let artifacts = if exists(js, &format!("OBJ_{ARTIFACTS}")).await? {
            js.get_object_store(ARTIFACTS)
                .await
                .with_context(|| format!("cannot open the object store {ARTIFACTS}"))?
        } else {
            js.create_object_store(object_store::Config {
                bucket: ARTIFACTS.to_owned(),
                description: Some("meshd: app artifacts by SHA-256".to_owned()),
                num_replicas: replicas,
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create the object store {ARTIFACTS}"))?
        };
        Ok(Buckets {
            desired,
            artifacts,
            nodes,
        })
    }
}

impl Buckets {
    /// The desired set's stream as the server has it now: its last
    /// revision and how many values it holds. Asked of the server each
    /// time, because async-nats' `kv::Store::status` returns the stream info
    /// cached when the bucket was opened.
    pub async fn desired_state(&self) -> anyhow::Result<jetstream::stream::State> {
        let mut stream = self.desired.stream.clone();
        let info = stream
            .info()
            .await
            .with_context(|| format!("cannot read the state of the bucket {DESIRED}"))?;
        Ok(info.state.clone())
    }
}

/// Opens a key-value bucket, creating it if it does not exist. An existing
/// bucket is used as it is (its settings may have been tuned by hand).
///
/// The bucket's stream is created here with the key-value layout (what
/// `Context::create_key_value` would make) because async-nats 0.51's
/// `create_key_value` first reads the account's info, and cannot parse
/// nats-server 2.9's (it lacks `reserved_memory`): the stream API alone
/// works with 2.9 and every later server.
async fn open_kv(js: &jetstream::Context, config: kv::Config) -> anyhow::Result<kv::Store> {
    let bucket = config.bucket.clone();
    if exists(js, &format!("KV_{bucket}")).await? {
        return js
            .get_key_value(&bucket)
            .await
            .with_context(|| format!("cannot open the key-value bucket {bucket}"));
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{bucket}"),
        description: Some(config.description),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: config.history.max(1),
        max_age: config.max_age,
        storage: jetstream::stream::StorageType::File,
        num_replicas: config.num_replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        ..Default::default()
    };
    match js.create_stream(stream).await {
        Ok(_) => {}
        // Another node may have created it between our two calls.
        Err(e) => {
            tracing::debug!(bucket = %bucket, error = %e, "mesh: cannot create the bucket; another node may have")
        }
    }
    js.get_key_value(&bucket)
        .await
        .with_context(|| format!("cannot open the key-value bucket {bucket}"))
}

/// Whether a bucket's stream exists. Only the server's "stream not found"
/// means it does not: any other failure (a request timing out while a
/// cluster elects a new stream leader, say) is an error, never a reason to
/// create the bucket, which would fail on an existing bucket of other
/// settings (its replicas) and hide the real cause.
async fn exists(js: &jetstream::Context, stream: &str) -> anyhow::Result<bool> {
    match js.get_stream(stream).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(error)
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(anyhow::anyhow!("cannot look up the stream {stream}: {e}")),
        },
    }
}
