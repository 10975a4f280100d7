//! Wires the metrics endpoint (`--metrics-listen`): the per-app figures of
//! the mount table, and the deploy counters of the reload machinery.

use anyhow::{Context as _, Result};
use meshd_reload::Deployer;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Binds `addr` and serves the metrics there until `shutdown`.
pub async fn start(
    addr: SocketAddr,
    deployer: &Arc<Deployer>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(meshd_server::MountsCollector::new(
        deployer.mounts(),
    )));
    registry.register_collector(Box::new(DeployCollector(deployer.clone())));
    tracing::info!("metrics listening on http://{bound}/metrics");
    Ok(tokio::spawn(meshd_server::serve_metrics(
        listener,
        Arc::new(registry),
        shutdown.cancelled_owned(),
    )))
}

/// `meshd_deploys_total{result}`: what every reconcile pass did.
struct DeployCollector(Arc<Deployer>);

impl std::fmt::Debug for DeployCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeployCollector")
    }
}

impl Collector for DeployCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.0.totals();
        let mut metric = encoder.encode_descriptor(
            "meshd_deploys",
            "App files handled by the reload machinery: new versions deployed, new files refused, apps removed",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [
            ("deployed", totals.deployed),
            ("refused", totals.refused),
            ("removed", totals.removed),
        ] {
            let set = [("result", result)];
            ConstCounter::new(count).encode(metric.encode_family(&set)?)?;
        }
        Ok(())
    }
}
