//! Wires the metrics endpoint (`--metrics-listen`): the per-app figures of
//! the mount table, the deploy counters of the reload machinery, and the
//! guest memory of the tenant runtime. It is served by the front door's own
//! connection code (timeouts, a connection cap).

use anyhow::{Context as _, Result};
use meshd_registry::Registry as AppRegistry;
use meshd_reload::DeployTotals;
use meshd_server::ServeConfig;
use meshd_tenant::Runtime;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Everything meshd reports at `/metrics`: the per-app figures of the
/// registry, the deploy counters, guest memory, and the connections the
/// front door closed. One registry serves both `--metrics-listen` and the
/// admin API.
pub fn registry(
    apps: &Arc<AppRegistry>,
    deploys: &Arc<DeployTotals>,
    runtime: &Arc<Runtime>,
    serve_config: &ServeConfig,
) -> Arc<Registry> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(meshd_server::MountsCollector::new(apps.clone())));
    registry.register_collector(Box::new(DeployCollector(deploys.clone())));
    registry.register_collector(Box::new(MemoryCollector(runtime.clone())));
    registry.register_collector(Box::new(meshd_server::ClosedConnectionsCollector::new(
        serve_config.closed.clone(),
    )));
    Arc::new(registry)
}

/// Binds `addr` and serves `registry` there until `shutdown`, with the
/// timeouts of the front door's `serve_config`.
/// A socket passed by a graceful restart (or systemd) is served instead of
/// binding `addr`. Returns the task and a copy of the socket to pass on.
pub async fn start(
    addr: SocketAddr,
    passed: Option<std::net::TcpListener>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    serve_config: &ServeConfig,
) -> Result<(JoinHandle<()>, crate::handover::Passed)> {
    let listener = match passed {
        Some(socket) => tokio::net::TcpListener::from_std(socket)?,
        None => tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?,
    };
    let copy = crate::handover::Passed::dup("metrics", &listener)?;
    let bound = listener.local_addr()?;
    tracing::info!("metrics listening on http://{bound}/metrics");
    let serve_config = serve_config.clone();
    let task = tokio::spawn(async move {
        meshd_server::serve_metrics(
            listener,
            registry,
            shutdown.cancelled_owned(),
            &serve_config,
        )
        .await
    });
    Ok((task, copy))
}

/// `meshd_guest_memory_bytes` and `meshd_guest_memory_limit_bytes`: the
/// linear memory all instances hold now, and `--max-total-memory`.
struct MemoryCollector(Arc<Runtime>);

impl std::fmt::Debug for MemoryCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryCollector")
    }
}

impl Collector for MemoryCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let used = i64::try_from(self.0.guest_memory()).unwrap_or(i64::MAX);
        let limit = i64::try_from(self.0.config().max_total_memory).unwrap_or(i64::MAX);
        for (name, help, value) in [
            (
                "meshd_guest_memory_bytes",
                "Linear memory of all live app instances (serving or kept for reuse)",
                used,
            ),
            (
                "meshd_guest_memory_limit_bytes",
                "The ceiling of that memory (--max-total-memory)",
                limit,
            ),
        ] {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        encode_resident_code(&self.0, &mut encoder)
    }
}

/// `meshd_code_loaded_versions` (and `meshd_code_all_versions`), and the counters
/// `meshd_code_loads` and `meshd_code_unloads`: which versions hold their
/// compiled code in memory (lazy start and `--idle-unload`).
fn encode_resident_code(
    runtime: &Runtime,
    encoder: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let code = runtime.resident_code();
    for (name, help, value) in [
        (
            "meshd_code_loaded_versions",
            "App versions whose compiled code and pre-instance are in memory",
            code.loaded,
        ),
        (
            "meshd_code_all_versions",
            "App versions alive, loaded or not",
            code.versions,
        ),
    ] {
        let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
        let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)?;
    }
    for (name, help, value) in [
        (
            "meshd_code_loads",
            "Loads of a version's code on its first request (lazy start) or after an idle unload",
            code.loads,
        ),
        (
            "meshd_code_unloads",
            "Unloads of a version's code after --idle-unload without a request",
            code.unloads,
        ),
    ] {
        let counter = ConstCounter::new(value);
        let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)?;
    }
    Ok(())
}

/// `meshd_deploys_total{result}`: what the deploy pipeline did.
struct DeployCollector(Arc<DeployTotals>);

impl std::fmt::Debug for DeployCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeployCollector")
    }
}

impl Collector for DeployCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let totals = self.0.get();
        let mut metric = encoder.encode_descriptor(
            "meshd_deploys",
            "Changes handled by the deploy pipeline: new versions deployed, new versions refused, apps removed",
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
