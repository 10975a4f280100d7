//! Progress of a long load pass, for the log: with many apps to load (a
//! start-up with thousands, a cold cache), an operator sees how far meshd
//! has got and whether it is compiling or loading from the cache.

use meshd_tenant::CacheOutcome;
use std::time::{Duration, Instant};

/// Passes with fewer loads than this finish quickly enough that their
/// per-app lines say everything.
const MIN_LOADS_TO_REPORT: usize = 20;

/// How often a line is written while a pass goes on.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Counts the loads of one pass and logs how far it has got, at most once a
/// second, and once at the end.
pub(crate) struct LoadProgress {
    total: usize,
    decided: usize,
    cache_hits: usize,
    compiled: usize,
    shared: usize,
    /// Left unloaded until their first request (lazy start).
    unloaded: usize,
    refused: usize,
    started: Instant,
    last_report: Instant,
}

impl LoadProgress {
    pub(crate) fn new(total: usize) -> Self {
        let now = Instant::now();
        if total >= MIN_LOADS_TO_REPORT {
            tracing::info!(total, "loading apps");
        }
        LoadProgress {
            total,
            decided: 0,
            cache_hits: 0,
            compiled: 0,
            shared: 0,
            unloaded: 0,
            refused: 0,
            started: now,
            last_report: now,
        }
    }

    /// One app's load ended: with this cache outcome, or refused (`None`).
    pub(crate) fn record(&mut self, outcome: Option<&CacheOutcome>) {
        self.decided += 1;
        match outcome {
            Some(CacheOutcome::Hit) => self.cache_hits += 1,
            Some(CacheOutcome::Miss | CacheOutcome::Replaced(_)) => self.compiled += 1,
            Some(CacheOutcome::Shared) => self.shared += 1,
            Some(CacheOutcome::Unloaded) => self.unloaded += 1,
            None => self.refused += 1,
        }
        if self.total < MIN_LOADS_TO_REPORT {
            return;
        }
        let done = self.decided == self.total;
        if done || self.last_report.elapsed() >= REPORT_EVERY {
            self.last_report = Instant::now();
            tracing::info!(
                decided = self.decided,
                total = self.total,
                cache_hits = self.cache_hits,
                compiled = self.compiled,
                shared = self.shared,
                unloaded = self.unloaded,
                refused = self.refused,
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "{} of {} apps loaded{}",
                self.decided,
                self.total,
                if done { "" } else { " so far" },
            );
        }
    }
}
