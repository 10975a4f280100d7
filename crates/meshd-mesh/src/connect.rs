//! Connecting to the NATS servers of the mesh.

use anyhow::Context as _;
use std::path::PathBuf;
use std::time::Duration;

/// How to reach the mesh's NATS servers.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Server URLs (`nats://host:port` or `tls://host:port`); the client
    /// fails over between them.
    pub servers: Vec<String>,
    /// This connection's name as the servers show it (the node's name).
    pub name: String,
    /// A NATS credentials file (`.creds`: a user JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// A PEM CA to trust for `tls://` servers instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// JetStream replicas for buckets this connection creates (1 on a
    /// single server; 3 on a three-server cluster).
    pub replicas: usize,
}

impl MeshConfig {
    /// A config for `servers`, a comma-separated list as `--mesh` takes it.
    pub fn from_list(servers: &str, name: &str) -> Self {
        MeshConfig {
            servers: servers
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            name: name.to_owned(),
            credentials: None,
            ca_file: None,
            replicas: 1,
        }
    }
}

/// The longest the client waits between two reconnect attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(8);

/// Connects to the mesh. With `wait_for_server`, the first connection is
/// retried in the background until a server answers (a node must start and
/// serve what it has while NATS is down); without it, an unreachable mesh
/// is an error at once (the CLI's case). Reconnects are unlimited, with a
/// jittered backoff up to a few seconds, and the client re-creates its
/// subscriptions itself.
pub async fn connect(
    config: &MeshConfig,
    wait_for_server: bool,
) -> anyhow::Result<async_nats::Client> {
    anyhow::ensure!(!config.servers.is_empty(), "no NATS server given");
    let mut options = async_nats::ConnectOptions::new()
        .name(&config.name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            let exponential = Duration::from_millis(100) * 2u32.saturating_pow(attempts.min(8) as u32);
            let capped = exponential.min(MAX_RECONNECT_DELAY);
            // Jitter: nodes that lost the same server do not all come back
            // in the same millisecond.
            capped + Duration::from_millis(fastrand::u64(0..250))
        })
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => tracing::info!("mesh: connected to NATS"),
                async_nats::Event::Disconnected => {
                    tracing::warn!("mesh: lost the connection to NATS; serving what this node has, reconnecting")
                }
                async_nats::Event::ClientError(e) => tracing::warn!(error = %e, "mesh: NATS client error"),
                async_nats::Event::ServerError(e) => tracing::warn!(error = %e, "mesh: NATS server error"),
                other => tracing::debug!(event = %other, "mesh: NATS event"),
            }
        });
    if wait_for_server {
        options = options.retry_on_initial_connect();
    }
    if let Some(path) = &config.credentials {
        options = options
            .credentials_file(path)
            .await
            .with_context(|| format!("cannot read the NATS credentials file {}", path.display()))?;
    }
    if let Some(path) = &config.ca_file {
        options = options.add_root_certificates(path.clone());
    }
    options
        .connect(config.servers.as_slice())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.servers.join(",")))
}
