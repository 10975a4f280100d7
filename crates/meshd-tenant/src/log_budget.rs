//! How many lines an app may add to meshd's log per second: its stdout,
//! stderr and wasi:logging together, and, on a budget of their own, meshd's
//! warnings about its requests (traps, timeouts, denied outbound requests),
//! which a tenant can also cause at will. One tenant printing or failing in
//! a loop must not flood the log (and the disk behind it) or spend meshd's
//! CPU on it. Lines over the rate are dropped and counted; the count is
//! logged when a line of the same kind next gets through.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// An app may log this many seconds' worth of lines at once.
const BURST_SECONDS: u32 = 10;

/// meshd's own warnings about one app's requests, a second.
pub const WARNINGS_PER_SECOND: u32 = 10;

/// The log budget of one app version, shared by all its requests.
pub struct LogBudget {
    app: Arc<str>,
    /// The guest's lines.
    lines: Gate,
    /// Guest lines dropped in all.
    dropped_total: AtomicU64,
    /// meshd's warnings about the app's requests.
    warnings: Gate,
}

/// A rate limit that counts what it turns away until a line gets through.
struct Gate {
    /// `None`: no limit.
    limiter: Option<DefaultDirectRateLimiter>,
    dropped: AtomicU64,
}

impl Gate {
    /// `per_second` lines a second, with bursts of [`BURST_SECONDS`]
    /// seconds' worth; 0 means no limit.
    fn new(per_second: u32) -> Self {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = rate.saturating_mul(NonZeroU32::MIN.saturating_add(BURST_SECONDS - 1));
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Gate {
            limiter,
            dropped: AtomicU64::new(0),
        }
    }

    /// `Some(n)` if one more line may pass now, `n` being how many were
    /// turned away since the last one passed; `None` if it may not.
    fn pass(&self) -> Option<u64> {
        let Some(limiter) = &self.limiter else {
            return Some(0);
        };
        if limiter.check().is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.dropped.swap(0, Ordering::Relaxed))
    }
}

impl LogBudget {
    /// `lines_per_second` guest lines a second on average, with bursts of
    /// [`BURST_SECONDS`] seconds' worth (0 means no limit), and
    /// [`WARNINGS_PER_SECOND`] of meshd's warnings.
    pub fn new(app: Arc<str>, lines_per_second: u32) -> Self {
        LogBudget {
            app,
            lines: Gate::new(lines_per_second),
            dropped_total: AtomicU64::new(0),
            warnings: Gate::new(WARNINGS_PER_SECOND),
        }
    }

    /// Whether meshd may log one more warning about the app's requests now.
    /// When it may and warnings were suppressed before it, says how many
    /// first.
    pub fn admit_warning(&self) -> bool {
        let Some(suppressed) = self.warnings.pass() else {
            return false;
        };
        if suppressed > 0 {
            tracing::warn!(
                app = %self.app,
                suppressed,
                "warnings about the app's requests suppressed: more than {WARNINGS_PER_SECOND} a second"
            );
        }
        true
    }

    /// Lines dropped since the budget was made.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total.load(Ordering::Relaxed)
    }

    /// Whether one more guest line may be logged now. When it may and lines
    /// were dropped before it, says how many first.
    pub fn admit(&self) -> bool {
        let Some(dropped) = self.lines.pass() else {
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        if dropped > 0 {
            tracing::warn!(
                app = %self.app,
                dropped,
                "guest log lines dropped: the app logged faster than --guest-log-rate allows"
            );
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_dropped_and_counted() {
        let budget = LogBudget::new("app".into(), 5);
        let admitted = (0..1000).filter(|_| budget.admit()).count();
        // 10 s worth of 5 lines a second, and perhaps one more that the
        // clock refilled while the loop ran.
        assert!((50..=52).contains(&admitted), "{admitted}");
        assert!(budget.lines.dropped.load(Ordering::Relaxed) >= 948);
        assert_eq!(budget.dropped_total(), 1000 - admitted as u64);
    }

    #[test]
    fn warnings_have_a_budget_of_their_own() {
        let budget = LogBudget::new("app".into(), 0);
        let admitted = (0..1000).filter(|_| budget.admit_warning()).count();
        let burst = (WARNINGS_PER_SECOND * BURST_SECONDS) as usize;
        assert!((burst..=burst + 2).contains(&admitted), "{admitted}");
        // The guest's lines are not held back by them.
        assert!(budget.admit());
    }

    #[test]
    fn zero_means_no_limit() {
        let budget = LogBudget::new("app".into(), 0);
        assert!((0..100_000).all(|_| budget.admit()));
    }
}
