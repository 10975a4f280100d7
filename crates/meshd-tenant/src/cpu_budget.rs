//! `cpu`: how much processor time an app's guests may take together, in
//! cores averaged over time. Without it, one tenant with enough concurrent
//! requests in busy loops keeps every worker thread busy, and the others'
//! requests wait behind its slices.
//!
//! Every poll of a guest (instantiation, guest code and the host calls it
//! makes) is timed and charged to its app. The budget is a GCRA ("virtual
//! scheduling") meter: each charge moves the app's theoretical arrival time
//! on by the time the limit needs to pay for it (`ran / cores`). An app may
//! run [`BURST`] ahead of its share; past that its guests wait, at their
//! next epoch yield, and its new requests before they take an instance, until
//! its share has caught up. Idle time earns no more than the burst.
//!
//! The time charged is wall-clock time inside the poll, read from the
//! monotonic clock (a vDSO call): a thread's own CPU clock would be a system
//! call per poll. When the OS preempts a worker mid-poll, the app is charged
//! for that too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How far (in wall-clock time at its limit) an app may run ahead of its
/// share before its guests wait: `cpu × BURST` of processor time at once.
pub const BURST: Duration = Duration::from_millis(100);

/// Holding an app back is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// The processor-time meter of one app, shared by its requests and by the
/// versions of the app that follow it with the same limit.
pub struct CpuBudget {
    app: Arc<str>,
    /// Thousandths of a core; `None`: no limit (time is still counted).
    millicores: Option<u32>,
    /// The zero of the nanosecond clocks below.
    origin: Instant,
    /// Theoretical arrival time: when the app will have paid for what its
    /// guests ran, in nanoseconds since `origin`.
    paid_until: AtomicU64,
    /// Time its guests ran, in all.
    ran_ns: AtomicU64,
    /// Time its guests were made to wait, in all.
    held_ns: AtomicU64,
    /// Time its long requests gave way to short ones (the scheduler), in
    /// all.
    gave_way_ns: AtomicU64,
    /// When holding it back was last logged (nanoseconds since `origin`,
    /// plus one so that 0 means never).
    warned_at: AtomicU64,
}

impl CpuBudget {
    /// A meter for `app` at `millicores` thousandths of a core (`None`: no
    /// limit, only counting).
    pub fn new(app: Arc<str>, millicores: Option<u32>) -> Self {
        CpuBudget {
            app,
            millicores,
            origin: Instant::now(),
            paid_until: AtomicU64::new(0),
            ran_ns: AtomicU64::new(0),
            held_ns: AtomicU64::new(0),
            gave_way_ns: AtomicU64::new(0),
            warned_at: AtomicU64::new(0),
        }
    }

    /// The meter for the next version of the app: this one when the limit
    /// is the same, else a new one that keeps what the app owes and has
    /// counted, so a redeploy never refills it.
    pub fn successor(self: &Arc<Self>, millicores: Option<u32>) -> Arc<CpuBudget> {
        if self.millicores == millicores {
            return self.clone();
        }
        let next = CpuBudget {
            app: self.app.clone(),
            millicores,
            origin: self.origin,
            paid_until: AtomicU64::new(self.paid_until.load(Ordering::Relaxed)),
            ran_ns: AtomicU64::new(self.ran_ns.load(Ordering::Relaxed)),
            held_ns: AtomicU64::new(self.held_ns.load(Ordering::Relaxed)),
            gave_way_ns: AtomicU64::new(self.gave_way_ns.load(Ordering::Relaxed)),
            warned_at: AtomicU64::new(self.warned_at.load(Ordering::Relaxed)),
        };
        Arc::new(next)
    }

    /// Charges the app for a poll of one of its guests that ran from
    /// `start` to `end`.
    pub(crate) fn charge_poll(&self, start: Instant, end: Instant) {
        self.charge(self.nanos(start), self.nanos(end));
    }

    /// Counts time one of its long requests gave way to short ones.
    pub(crate) fn gave_way(&self, paused: Duration) {
        self.gave_way_ns
            .fetch_add(saturating_nanos(paused), Ordering::Relaxed);
    }

    /// Time its long requests gave way to short ones, in all.
    pub fn gave_way_total(&self) -> Duration {
        Duration::from_nanos(self.gave_way_ns.load(Ordering::Relaxed))
    }

    /// How long the app's guests must wait now before running again, if
    /// they are over their share; counted as time held back.
    pub fn hold_back(&self) -> Option<Duration> {
        // Every request and every epoch tick asks: an app without a limit
        // answers without reading the clock.
        self.millicores?;
        let now = self.nanos(Instant::now());
        let wait = self.wait_at(now)?;
        self.held_ns
            .fetch_add(saturating_nanos(wait), Ordering::Relaxed);
        self.warn_at(now);
        Some(wait)
    }

    /// Time the app's guests have run, in all.
    pub fn ran(&self) -> Duration {
        Duration::from_nanos(self.ran_ns.load(Ordering::Relaxed))
    }

    /// Time the app's guests have been made to wait, in all.
    pub fn held(&self) -> Duration {
        Duration::from_nanos(self.held_ns.load(Ordering::Relaxed))
    }

    /// Charges a poll that ran from `start` to `end` (nanoseconds since
    /// `origin`).
    fn charge(&self, start: u64, end: u64) {
        // Paying starts at `start` at the earliest: time the app spent
        // idle before it is not credited (beyond the burst).
        let ran = end.saturating_sub(start);
        self.ran_ns.fetch_add(ran, Ordering::Relaxed);
        let Some(millicores) = self.millicores else {
            return;
        };
        // The wall-clock time the limit needs to pay for `ran`.
        let cost = ran.saturating_mul(1000) / u64::from(millicores.max(1));
        // Never fails: the closure always returns Some.
        let _ = self
            .paid_until
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |paid| {
                Some(paid.max(start).saturating_add(cost))
            });
    }

    /// How long to wait at `now`, if the app is more than [`BURST`] ahead of
    /// its share.
    fn wait_at(&self, now: u64) -> Option<Duration> {
        self.millicores?;
        let paid = self.paid_until.load(Ordering::Relaxed);
        let allowed = now.saturating_add(saturating_nanos(BURST));
        (paid > allowed).then(|| Duration::from_nanos(paid - allowed))
    }

    fn warn_at(&self, now: u64) {
        let last = self.warned_at.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= saturating_nanos(WARN_EVERY);
        if due
            && self
                .warned_at
                .compare_exchange(last, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                app = %self.app,
                cpu = %meshd_apps::cores_text(self.millicores.unwrap_or_default()),
                "app is over its cpu limit: its guests wait for their share"
            );
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        saturating_nanos(at.saturating_duration_since(self.origin))
    }
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn budget(millicores: Option<u32>) -> CpuBudget {
        CpuBudget::new("app".into(), millicores)
    }

    #[test]
    fn an_app_within_its_share_never_waits() {
        // One core: a guest running back to back stays level with its share.
        let one_core = budget(Some(1000));
        for slice in 0..1000 {
            one_core.charge(slice * MS, (slice + 1) * MS);
            assert_eq!(one_core.wait_at((slice + 1) * MS), None);
        }
        assert_eq!(one_core.ran(), Duration::from_secs(1));
    }

    #[test]
    fn an_app_over_its_share_waits_past_its_burst() {
        // Half a core, two guests running on two threads at once: each
        // millisecond of wall time costs 4 ms of the share.
        let half = budget(Some(500));
        let mut now = 0;
        while half.wait_at(now).is_none() {
            half.charge(now, now + MS);
            half.charge(now, now + MS);
            now += MS;
        }
        // 100 ms ahead after about 100 / 3 ms of both running.
        assert!((33 * MS..=35 * MS).contains(&now), "{now}");
        let wait = half.wait_at(now).expect("over its share");
        assert!(wait <= Duration::from_millis(3), "{wait:?}");
        // Waiting that long brings it back within its burst.
        let later = now + saturating_nanos(wait);
        assert_eq!(half.wait_at(later), None);
    }

    #[test]
    fn idle_time_earns_no_more_than_the_burst() {
        let quarter = budget(Some(250));
        // Idle for a minute, then 10 slices of 10 ms back to back: the
        // first 25 ms are the burst (100 ms at a quarter core), the rest
        // must be paid for at four times their length.
        let start = 60_000 * MS;
        for slice in 0..10 {
            quarter.charge(start + slice * 10 * MS, start + (slice + 1) * 10 * MS);
        }
        let end = start + 100 * MS;
        let wait = quarter.wait_at(end).expect("over its share");
        // Paid until start + 400 ms; allowed until end + 100 ms.
        assert_eq!(wait, Duration::from_millis(200));
    }

    #[test]
    fn no_limit_counts_but_never_waits() {
        let unlimited = budget(None);
        for slice in 0..100 {
            unlimited.charge(0, slice * 100 * MS);
        }
        assert_eq!(unlimited.wait_at(MS), None);
        assert!(unlimited.ran() > Duration::from_secs(400));
    }

    #[test]
    fn a_successor_with_another_limit_keeps_the_debt() {
        let first = Arc::new(budget(Some(1000)));
        first.charge(0, 500 * MS);
        first.charge(0, 500 * MS);
        assert!(Arc::ptr_eq(&first, &first.successor(Some(1000))));
        let next = first.successor(Some(2000));
        assert!(!Arc::ptr_eq(&first, &next));
        assert_eq!(next.ran(), first.ran());
        assert_eq!(
            next.wait_at(500 * MS),
            first.wait_at(500 * MS),
            "what the app owes carries over"
        );
    }
}
