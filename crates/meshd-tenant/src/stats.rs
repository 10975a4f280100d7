//! What one app version has served, for the metrics endpoint: responses by
//! status class and the time to the response head, in lock-free counters
//! (recording is one clock read and a few atomic additions per request).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counters of one app version.
#[derive(Default)]
pub struct VersionStats {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    responses: [AtomicU64; 5],
    /// Requests per latency bucket (not cumulative), the last for +Inf.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_micros: AtomicU64,
}

/// A copy of [`VersionStats`] at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsSnapshot {
    /// Responses of status class `N`xx at index `N - 1`.
    pub responses: [u64; 5],
    /// Requests per bucket (each bound of [`LATENCY_BUCKETS`], then +Inf),
    /// not cumulative: the encoder adds them up.
    pub latency_buckets: Vec<(f64, u64)>,
    /// How many latencies were recorded.
    pub latency_count: u64,
    /// Their sum, in seconds.
    pub latency_sum: f64,
}

impl VersionStats {
    /// Counts one response with `status`, whose head took `elapsed`.
    pub fn record(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.responses[class].fetch_add(1, Ordering::Relaxed);
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counters now (each read on its own: a scrape during traffic may
    /// see one counter a request ahead of another).
    pub fn snapshot(&self) -> StatsSnapshot {
        let responses = std::array::from_fn(|i| self.responses[i].load(Ordering::Relaxed));
        let mut total = 0;
        let mut latency_buckets = Vec::with_capacity(self.latency.len());
        for (i, count) in self.latency.iter().enumerate() {
            let count = count.load(Ordering::Relaxed);
            total += count;
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            latency_buckets.push((bound, count));
        }
        StatsSnapshot {
            responses,
            latency_buckets,
            latency_count: total,
            latency_sum: self.latency_sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_class_and_latency_bucket() {
        let stats = VersionStats::default();
        stats.record(200, Duration::from_micros(300));
        stats.record(204, Duration::from_millis(3));
        stats.record(503, Duration::from_secs(20));
        stats.record(999, Duration::ZERO); // nonsense status: counted as 5xx
        let snap = stats.snapshot();
        assert_eq!(snap.responses, [0, 2, 0, 0, 2]);
        assert_eq!(snap.latency_count, 4);
        // <= 0.5 ms: the 300 us and the zero; (2.5 ms, 5 ms]: the 3 ms;
        // over 10 s: the 20 s.
        assert_eq!(snap.latency_buckets[0], (0.0005, 2));
        assert_eq!(snap.latency_buckets[3], (0.005, 1));
        assert_eq!(snap.latency_buckets.last(), Some(&(f64::INFINITY, 1)));
        let counted: u64 = snap.latency_buckets.iter().map(|(_, n)| n).sum();
        assert_eq!(counted, 4);
        assert!(
            (snap.latency_sum - 20.0033).abs() < 1e-9,
            "{}",
            snap.latency_sum
        );
    }
}
