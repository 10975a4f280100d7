//! The metrics endpoint: Prometheus/OpenMetrics text at `GET /metrics`, on a
//! listener of its own (so no app's route can shadow it, and operators can
//! keep it off the public interface).

use crate::listen::{serve_with, ClosedConnections, ServeConfig};
use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use meshd_registry::Side;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Per-app figures of the mounted versions (live and canary), read from the
/// registry at each scrape.
pub struct MountsCollector {
    registry: Arc<meshd_registry::Registry>,
}

impl std::fmt::Debug for MountsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountsCollector").finish_non_exhaustive()
    }
}

impl MountsCollector {
    /// A collector over the registry's routes.
    pub fn new(registry: Arc<meshd_registry::Registry>) -> Self {
        MountsCollector { registry }
    }
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Collector for MountsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let apps = self.registry.load();
        let mut versions = Vec::new();
        for (_, mount) in apps.routes.iter() {
            versions.push((&mount.live, Side::Live, mount.live.stats().snapshot()));
            if let Some(canary) = &mount.canary {
                let stats = canary.version.stats().snapshot();
                versions.push((&canary.version, Side::Canary, stats));
            }
        }
        let labels = |v: &meshd_tenant::AppVersion, side: Side| {
            [
                ("app", v.app().to_owned()),
                ("version", v.id().to_owned()),
                ("side", side.as_str().to_owned()),
            ]
        };

        let gauge = ConstGauge::new(apps.routes.len() as i64);
        let metric = encoder.encode_descriptor(
            "meshd_apps_mounted",
            "Apps in the mount table",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)?;

        let mut metric = encoder.encode_descriptor(
            "meshd_requests",
            "Responses sent, by app version and status class",
            None,
            MetricType::Counter,
        )?;
        for (version, side, stats) in &versions {
            for (class, count) in STATUS_CLASSES.iter().zip(stats.responses) {
                let [app, id, side] = labels(version, *side);
                let set = [app, id, side, ("status", (*class).to_owned())];
                ConstCounter::new(count).encode(metric.encode_family(&set)?)?;
            }
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_request_duration_seconds",
            "Time from routing a request to its response head",
            None,
            MetricType::Histogram,
        )?;
        for (version, side, stats) in &versions {
            let set = labels(version, *side);
            metric.encode_family(&set)?.encode_histogram::<NoLabelSet>(
                stats.latency_sum,
                stats.latency_count,
                &stats.latency_buckets,
                None,
            )?;
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_requests_in_flight",
            "Requests of the version being served now",
            None,
            MetricType::Gauge,
        )?;
        for (version, side, _) in &versions {
            let set = labels(version, *side);
            let count = version.in_flight().count() as i64;
            ConstGauge::new(count).encode(metric.encode_family(&set)?)?;
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_guest_log_lines_dropped",
            "Guest log lines dropped over --guest-log-rate",
            None,
            MetricType::Counter,
        )?;
        for (version, side, _) in &versions {
            let set = labels(version, *side);
            let dropped = version.log_lines_dropped();
            ConstCounter::new(dropped).encode(metric.encode_family(&set)?)?;
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_guest_run_seconds",
            "Time the app's guests ran on meshd's worker threads (instantiation, guest code, its host calls)",
            None,
            MetricType::Counter,
        )?;
        for (version, side, _) in &versions {
            let set = labels(version, *side);
            let (ran, _) = version.cpu_time();
            ConstCounter::new(ran.as_secs_f64()).encode(metric.encode_family(&set)?)?;
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_guest_cpu_wait_seconds",
            "Time the app's guests were told to wait because the app was over its cpu limit",
            None,
            MetricType::Counter,
        )?;
        for (version, side, _) in &versions {
            let set = labels(version, *side);
            let (_, held) = version.cpu_time();
            ConstCounter::new(held.as_secs_f64()).encode(metric.encode_family(&set)?)?;
        }

        let mut metric = encoder.encode_descriptor(
            "meshd_guest_gave_way_seconds",
            "Time the app's long requests waited for short requests (of any app) to run",
            None,
            MetricType::Counter,
        )?;
        for (version, side, _) in &versions {
            let set = labels(version, *side);
            let gave_way = version.cpu_gave_way();
            ConstCounter::new(gave_way.as_secs_f64()).encode(metric.encode_family(&set)?)?;
        }
        Ok(())
    }
}

/// Most connections the metrics listener keeps open at once: enough for a
/// few scrapers and a person with curl, and no more, so a flood of
/// connections to it cannot take meshd's file descriptors.
pub const MAX_METRICS_CONNECTIONS: usize = 32;

/// `meshd_connections_closed_total{reason}`: front-door connections meshd
/// closed itself, for a write timeout or for being idle.
pub struct ClosedConnectionsCollector(Arc<ClosedConnections>);

impl ClosedConnectionsCollector {
    /// A collector over the front door's counts.
    pub fn new(closed: Arc<ClosedConnections>) -> Self {
        ClosedConnectionsCollector(closed)
    }
}

impl std::fmt::Debug for ClosedConnectionsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClosedConnectionsCollector")
    }
}

impl Collector for ClosedConnectionsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "meshd_connections_closed",
            "Client connections meshd closed itself: a response made no progress for --write-timeout, or no request for --idle-timeout",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in [
            ("write_timeout", &self.0.write_timeout),
            ("idle", &self.0.idle),
        ] {
            let count = count.load(std::sync::atomic::Ordering::Relaxed);
            ConstCounter::new(count).encode(metric.encode_family(&[("reason", reason)])?)?;
        }
        Ok(())
    }
}

/// Serves `registry` at `GET /metrics` on `listener` until `shutdown`
/// resolves; every other path is 404. The listener has the front door's
/// protections (`front_door`'s timeouts; the same accept loop and connection
/// handling), with its own connection cap, [`MAX_METRICS_CONNECTIONS`].
pub async fn serve_metrics(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    front_door: &ServeConfig,
) {
    let config = ServeConfig {
        max_connections: MAX_METRICS_CONNECTIONS,
        closed: Arc::default(),
        ..front_door.clone()
    };
    let handler = move |req: Request<hyper::body::Incoming>| {
        let resp = scrape(&registry, req.uri().path());
        async move { resp }
    };
    serve_with(listener, shutdown, &config, "metrics", handler).await;
}

fn scrape(registry: &Registry, path: &str) -> Response<Full<Bytes>> {
    if path != "/metrics" {
        return text(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n".into(),
            "text/plain; charset=utf-8",
        );
    }
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, registry) {
        Ok(()) => text(
            StatusCode::OK,
            body,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
            "text/plain; charset=utf-8",
        ),
    }
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}
