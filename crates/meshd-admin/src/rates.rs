//! Each app's recent request rate, error rate and latency, for the
//! dashboard's charts: `GET /v1/stats` (every app, in one answer) and
//! `GET /v1/apps/NAME/stats`.
//!
//! Every [`INTERVAL`] a task reads the counters every version already keeps
//! for the metrics endpoint ([`meshd_tenant::VersionStats`]), and records
//! what changed since the last reading in a fixed ring of [`BUCKETS`]
//! buckets per app: requests, 5xx responses, and the median and 99th
//! percentile of the time to the response head (from the latency
//! histogram). Nothing is added to a request's path, and memory is fixed:
//! about 1 KiB per app (1 MiB for 1,000 apps).

use crate::apps::app_name;
use crate::error::ApiError;
use crate::AdminState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use meshd_registry::Registry;
use meshd_tenant::{AppVersion, StatsSnapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

/// How long one bucket is.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// How many buckets each app keeps: five minutes.
pub const BUCKETS: usize = 60;

/// What one app did in one interval.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Bucket {
    requests: u32,
    errors: u32,
    /// Milliseconds; `None` without requests.
    p50: Option<f32>,
    p99: Option<f32>,
}

/// One app's buckets, and the counters of its versions at the last reading.
#[derive(Default)]
struct AppSeries {
    buckets: VecDeque<Bucket>,
    /// Each version read last time, and its counters then. A version is
    /// known by its allocation: a rollback to the same code makes a new
    /// version whose counters start from zero. The `Weak` keeps the address
    /// from being reused while it is here.
    seen: Vec<(Weak<AppVersion>, StatsSnapshot)>,
}

/// The recent buckets of every app.
#[derive(Default)]
pub(crate) struct Rates {
    state: Mutex<RatesState>,
}

#[derive(Default)]
struct RatesState {
    apps: HashMap<String, AppSeries>,
    /// Buckets recorded so far, up to [`BUCKETS`].
    recorded: usize,
    /// When the newest bucket ended.
    end: Option<SystemTime>,
}

impl Rates {
    /// Rates of the apps of `registry`, read every [`INTERVAL`] by a task
    /// that lives as long as the answer (when there is a tokio runtime).
    pub(crate) fn start(registry: Arc<Registry>) -> Arc<Rates> {
        let rates = Arc::new(Rates::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&rates);
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let Some(rates) = weak.upgrade() else { return };
                    rates.record(&registry, SystemTime::now());
                }
            });
        }
        rates
    }

    fn lock(&self) -> MutexGuard<'_, RatesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records one bucket for every app in `registry`, ending `now`.
    fn record(&self, registry: &Registry, now: SystemTime) {
        let set = registry.load();
        let mut state = self.lock();
        let first = state.end.is_none();
        state
            .apps
            .retain(|name, _| set.apps.get(name).is_some_and(|s| !s.is_gone()));
        for (name, status) in &set.apps {
            if status.is_gone() {
                continue;
            }
            let versions = status
                .live
                .iter()
                .chain(status.canary.as_ref().map(|(info, _)| info))
                .map(|info| &info.version);
            let series = state.apps.entry(name.clone()).or_default();
            let mut seen = Vec::new();
            let mut delta = Delta::default();
            for version in versions {
                let now = version.stats().snapshot();
                let before = series
                    .seen
                    .iter()
                    .find(|(v, _)| std::ptr::eq(v.as_ptr(), Arc::as_ptr(version)))
                    .map(|(_, s)| s);
                delta.add(&now, before);
                seen.push((Arc::downgrade(version), now));
            }
            series.seen = seen;
            // The first reading only sets where counting starts from.
            if !first {
                series.buckets.push_back(delta.bucket());
                if series.buckets.len() > BUCKETS {
                    series.buckets.pop_front();
                }
            }
        }
        if !first {
            state.recorded = (state.recorded + 1).min(BUCKETS);
        }
        state.end = Some(now);
    }

    /// The last `last` buckets of the apps `wanted` accepts.
    fn json(&self, last: usize, wanted: impl Fn(&str) -> bool) -> StatsJson {
        let state = self.lock();
        let len = last.min(state.recorded);
        let apps = state
            .apps
            .iter()
            .filter(|(name, _)| wanted(name))
            .map(|(name, series)| (name.clone(), series_json(series, len)))
            .collect();
        StatsJson {
            interval_seconds: INTERVAL.as_secs(),
            end: state
                .end
                .map(|end| humantime::format_rfc3339_seconds(end).to_string()),
            apps,
        }
    }
}

/// The last `len` buckets of `series`, the oldest first; an app younger
/// than that has zeros (and no latencies) before its first bucket.
fn series_json(series: &AppSeries, len: usize) -> SeriesJson {
    let have = series.buckets.len().min(len);
    let padding = std::iter::repeat_n(Bucket::default(), len - have);
    let buckets: Vec<Bucket> = padding
        .chain(
            series
                .buckets
                .iter()
                .skip(series.buckets.len() - have)
                .copied(),
        )
        .collect();
    SeriesJson {
        requests: buckets.iter().map(|b| b.requests).collect(),
        errors: buckets.iter().map(|b| b.errors).collect(),
        p50_ms: buckets.iter().map(|b| b.p50).collect(),
        p99_ms: buckets.iter().map(|b| b.p99).collect(),
    }
}

/// What an app's versions did since the last reading, together.
#[derive(Default)]
struct Delta {
    requests: u64,
    errors: u64,
    /// Requests per latency bucket: (upper bound in seconds, count).
    latency: Vec<(f64, u64)>,
}

impl Delta {
    /// Adds what a version did from `before` (`None`: from zero) to `now`.
    fn add(&mut self, now: &StatsSnapshot, before: Option<&StatsSnapshot>) {
        let zero = StatsSnapshot {
            responses: [0; 5],
            latency_buckets: Vec::new(),
            latency_count: 0,
            latency_sum: 0.0,
        };
        let before = before.unwrap_or(&zero);
        let requests: u64 = now.responses.iter().sum();
        let requests_before: u64 = before.responses.iter().sum();
        self.requests += requests.saturating_sub(requests_before);
        self.errors += now.responses[4].saturating_sub(before.responses[4]);
        if self.latency.is_empty() {
            self.latency = now.latency_buckets.iter().map(|&(b, _)| (b, 0)).collect();
        }
        for (i, &(_, count)) in now.latency_buckets.iter().enumerate() {
            let earlier = before.latency_buckets.get(i).map_or(0, |&(_, c)| c);
            if let Some(slot) = self.latency.get_mut(i) {
                slot.1 += count.saturating_sub(earlier);
            }
        }
    }

    fn bucket(&self) -> Bucket {
        Bucket {
            requests: u32::try_from(self.requests).unwrap_or(u32::MAX),
            errors: u32::try_from(self.errors).unwrap_or(u32::MAX),
            p50: quantile(&self.latency, 0.5).map(|s| (s * 1000.0) as f32),
            p99: quantile(&self.latency, 0.99).map(|s| (s * 1000.0) as f32),
        }
    }
}

/// The `q` quantile of a histogram (upper bounds in seconds, counts not
/// cumulative), interpolated linearly within its bucket as Prometheus'
/// `histogram_quantile` does; past the last finite bound, that bound.
fn quantile(buckets: &[(f64, u64)], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().map(|&(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for &(upper, count) in buckets {
        if count > 0 && (below + count) as f64 >= rank {
            if upper.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below as f64) / count as f64;
            return Some(lower + (upper - lower) * within);
        }
        below += count;
        if upper.is_finite() {
            lower = upper;
        }
    }
    Some(lower)
}

/// `GET /v1/stats` and `GET /v1/apps/NAME/stats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsJson {
    /// The length of one bucket, in seconds.
    pub interval_seconds: u64,
    /// When the newest bucket ended, RFC 3339 UTC (`null` before the first).
    pub end: Option<String>,
    /// Each app's buckets, the oldest first, all of the same length.
    pub apps: BTreeMap<String, SeriesJson>,
}

/// One app's buckets, the oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesJson {
    /// Responses in each bucket.
    pub requests: Vec<u32>,
    /// 5xx responses in each bucket.
    pub errors: Vec<u32>,
    /// The median time to the response head, in milliseconds (`null`
    /// without requests).
    pub p50_ms: Vec<Option<f32>>,
    /// The 99th percentile of the same.
    pub p99_ms: Vec<Option<f32>>,
}

/// The query of the stats endpoints.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatsQuery {
    /// Only the newest `last` buckets.
    #[serde(default)]
    last: Option<usize>,
}

fn buckets_asked(query: Result<Query<StatsQuery>, QueryRejection>) -> Result<usize, ApiError> {
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("bad query: {}", e.body_text())))?;
    Ok(query.last.unwrap_or(BUCKETS).min(BUCKETS))
}

/// `GET /v1/stats`: every app's buckets.
pub(crate) async fn all(
    Extension(rates): Extension<Arc<Rates>>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsJson>, ApiError> {
    let last = buckets_asked(query)?;
    Ok(Json(rates.json(last, |_| true)))
}

/// `GET /v1/apps/NAME/stats`: one app's buckets.
pub(crate) async fn one(
    State(state): State<Arc<AdminState>>,
    Extension(rates): Extension<Arc<Rates>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<StatsJson>, ApiError> {
    let name = app_name(name)?;
    let last = buckets_asked(query)?;
    crate::apps::require_known(&state, &name)?;
    let mut json = rates.json(last, |app| app == name);
    if json.apps.is_empty() {
        // Not read yet: an app deployed within the last interval.
        let len = last.min(rates.lock().recorded);
        json.apps
            .insert(name, series_json(&AppSeries::default(), len));
    }
    Ok(Json(json))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let buckets = [(0.001, 0), (0.01, 10), (0.1, 0), (f64::INFINITY, 0)];
        let p50 = quantile(&buckets, 0.5).unwrap();
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(&buckets, 0.0).map(|q| q <= 0.01), Some(true));
        assert_eq!(quantile(&[(0.001, 0)], 0.5), None);
        // Past the last bound: that bound.
        let slow = [(0.001, 1), (10.0, 0), (f64::INFINITY, 99)];
        assert_eq!(quantile(&slow, 0.99), Some(10.0));
        assert_eq!(quantile(&slow, 0.01), Some(0.001));
    }

    fn snapshot(responses: [u64; 5], latency: [u64; 3]) -> StatsSnapshot {
        StatsSnapshot {
            responses,
            latency_buckets: vec![
                (0.001, latency[0]),
                (0.01, latency[1]),
                (f64::INFINITY, latency[2]),
            ],
            latency_count: latency.iter().sum(),
            latency_sum: 0.0,
        }
    }

    #[test]
    fn a_bucket_holds_what_changed_across_versions() {
        let mut delta = Delta::default();
        // The live version: 10 more responses, 2 of them 5xx.
        delta.add(
            &snapshot([0, 18, 0, 0, 2], [20, 0, 0]),
            Some(&snapshot([0, 10, 0, 0, 0], [10, 0, 0])),
        );
        // A canary new since the last reading: all of its 4.
        delta.add(&snapshot([0, 4, 0, 0, 0], [0, 4, 0]), None);
        let bucket = delta.bucket();
        assert_eq!((bucket.requests, bucket.errors), (14, 2));
        // 10 of 14 under 1 ms, so the median is under 1 ms; the slowest
        // are under 10 ms.
        assert!(bucket.p50.unwrap() <= 1.0, "{bucket:?}");
        let p99 = bucket.p99.unwrap();
        assert!(p99 > 1.0 && p99 <= 10.0, "{bucket:?}");
        assert_eq!(Delta::default().bucket(), Bucket::default());
    }

    #[test]
    fn series_are_padded_to_the_same_length() {
        let mut series = AppSeries::default();
        series.buckets.push_back(Bucket {
            requests: 3,
            ..Bucket::default()
        });
        let json = series_json(&series, 3);
        assert_eq!(json.requests, [0, 0, 3]);
        assert_eq!(json.p50_ms, [None, None, None]);
        assert_eq!(series_json(&series, 0).requests, Vec::<u32>::new());
    }
}
