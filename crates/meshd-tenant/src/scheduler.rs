//! Short requests first: a request that has run for longer than
//! [`LONG_AFTER`] (times its app's `cpu_weight`) is *long*. While short
//! requests, of any app, are running, long requests together get only a
//! floor share of the processor ([`Scheduler::floor`]: a twentieth of the
//! workers, at least [`MIN_FLOOR`] thousandths of a core); when no short
//! request is running they take whatever is free.
//!
//! Without this, a guest spinning in a busy loop yields at every epoch tick
//! to the back of tokio's run queue and comes round again after the requests
//! queued before it: it still takes its worker for one tick in every few,
//! and two of them on two cores leave a short request about half the
//! machine. A static `cpu` cap cannot do better without throttling a busy
//! app on an idle machine; this favours little CPU used over a lot, as a
//! kernel's scheduler favours interactive tasks.
//!
//! While short work runs, long requests also run on at most as many workers
//! at once as the floor rounds up to (one on a machine of up to twenty).
//!
//! The state is three atomics shared daemon-wide: when a short request last
//! ran (written at most every [`SEEN_EVERY`]), a GCRA meter of the floor,
//! and how many long requests are in a poll. A short request reads the clock as the `cpu` meter already does
//! and does at most one relaxed load and store more; only long requests
//! ever wait, and only they pay for a timer.

use crate::cpu_budget::CpuBudget;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Processor time a request may use before it is long (at `cpu_weight` 1;
/// the weight scales it). Most requests of a web app take well under a
/// millisecond; a few milliseconds leaves room for a slow one, and is short
/// next to the seconds a runaway request runs before its deadline.
pub const LONG_AFTER: Duration = Duration::from_millis(5);

/// A short request that ran this recently counts as short work running.
/// Under load short requests run every few microseconds; this rides over
/// the gaps between them (a client's round trip) without keeping long
/// requests waiting for long after the short ones have stopped.
const SHORT_RECENT: Duration = Duration::from_millis(2);

/// The time a short request last ran is written at most this often, so
/// requests on different cores do not fight over its cache line.
const SEEN_EVERY: Duration = Duration::from_micros(100);

/// The least share of the processor long requests keep together while short
/// ones run, in thousandths of a core, whatever the number of workers.
///
/// The floor trades the two sides of a noisy neighbour against each other:
/// on two cores shared with the load, every tenth of a core the long
/// requests keep raises the short ones' p99. With two guests spinning next
/// to hello under load (bench/noisy.sh), a floor of 0.2 gave hello a p99 of
/// 1.9-3.4 ms and the spinners 22% of a core; 0.12 gives 1.8-3.0 ms and
/// 14-15%, still above the tenth of a core issue #17 asks for them
/// (docs/benchmarks.md).
pub const MIN_FLOOR: u32 = 120;

/// The floor per worker, in thousandths of a core: a twentieth of the
/// machine.
const FLOOR_PER_WORKER: u32 = 50;

/// How far long requests may run ahead of the floor before they wait.
const FLOOR_BURST: Duration = Duration::from_millis(5);

/// The most the floor meter may be owed: long requests running freely (no
/// short work) do not pile up a debt that would stop them for long once
/// short work comes back.
const MAX_DEBT: Duration = Duration::from_millis(50);

/// The most one poll counts towards making a request long: two epoch ticks,
/// the longest a guest runs wasm before it yields. The time is wall-clock
/// time inside the poll, so a poll the OS preempted can last much longer;
/// capped, one preemption alone never makes a short request long (under
/// load, hello requests of a debug build were being held back for it).
const MAX_COUNTED_POLL: Duration = Duration::from_millis(2);

/// A long request waiting for its turn looks again at least this often, so
/// it runs soon after short work has stopped.
const MAX_PAUSE: Duration = Duration::from_millis(2);

/// How long a long request waits when as many long requests as may run at
/// once while short work runs are already running (see
/// [`Scheduler::max_long_polls`]). Below tokio's timer tick (1 ms), so it
/// is one tick.
const LONG_POLL_WAIT: Duration = Duration::from_micros(500);

/// The daemon-wide state: shared by every request of every app.
pub struct Scheduler {
    /// Share of the processor long requests keep while short ones run, in
    /// thousandths of a core.
    floor: u32,
    /// The zero of the nanosecond clocks below.
    origin: Instant,
    /// When a short request last ran, in nanoseconds since `origin` (0:
    /// never).
    short_seen_at: AtomicU64,
    /// Theoretical arrival time of the floor meter: when long requests
    /// will have paid for what they ran, at the floor's rate.
    floor_paid_until: AtomicU64,
    /// Polls of long requests running right now.
    long_polls: AtomicUsize,
    /// The most long requests that run at once while short work runs: the
    /// floor's share rounded up to whole workers. The meter bounds their
    /// average, not how many run together: two spinning guests on two
    /// workers could take both for a slice each and leave short requests
    /// none (their p99 beside two spinners: docs/benchmarks.md).
    max_long_polls: usize,
}

impl Scheduler {
    /// The scheduler of a daemon with `workers` threads running guests.
    pub fn new(workers: usize) -> Self {
        let share = u32::try_from(workers)
            .unwrap_or(u32::MAX)
            .saturating_mul(FLOOR_PER_WORKER);
        let floor = share.max(MIN_FLOOR);
        Scheduler {
            floor,
            long_polls: AtomicUsize::new(0),
            max_long_polls: usize::try_from(floor.div_ceil(1000)).unwrap_or(1).max(1),
            origin: Instant::now(),
            short_seen_at: AtomicU64::new(0),
            floor_paid_until: AtomicU64::new(0),
        }
    }

    /// The scheduler for the tokio runtime this is called in (its worker
    /// threads), or for the machine's processors outside one.
    pub fn for_current_runtime() -> Self {
        let workers = match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.metrics().num_workers(),
            Err(_) => std::thread::available_parallelism().map_or(1, usize::from),
        };
        Scheduler::new(workers)
    }

    /// The share of the processor long requests keep together while short
    /// ones run, in thousandths of a core.
    pub fn floor(&self) -> u32 {
        self.floor
    }

    /// A short request ran until `end` (nanoseconds since `origin`).
    fn saw_short(&self, end: u64) {
        let seen = self.short_seen_at.load(Ordering::Relaxed);
        if seen == 0 || end > seen.saturating_add(nanos(SEEN_EVERY)) {
            // 0 means never.
            self.short_seen_at.store(end.max(1), Ordering::Relaxed);
        }
    }

    /// A long request of an app with `weight` (thousandths) ran from
    /// `start` to `end`: the floor pays for it, at `1 / weight` of its time.
    fn charge_long(&self, start: u64, end: u64, weight: u32) {
        let ran = end.saturating_sub(start);
        let cost =
            ran.saturating_mul(1_000_000) / (u64::from(self.floor) * u64::from(weight.max(1)));
        let cap = start.saturating_add(nanos(MAX_DEBT));
        // Never fails: the closure always returns Some.
        let _ = self
            .floor_paid_until
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |paid| {
                Some(paid.max(start).min(cap).saturating_add(cost))
            });
    }

    /// How long a long request must wait at `now` before it runs again: only
    /// while short work runs, and only when long requests are ahead of the
    /// floor.
    fn wait_at(&self, now: u64) -> Option<Duration> {
        let seen = self.short_seen_at.load(Ordering::Relaxed);
        if seen == 0 || now.saturating_sub(seen) > nanos(SHORT_RECENT) {
            return None;
        }
        // Checked, then counted when the poll starts: two requests that
        // look at once may both run, one slice over the limit at most.
        if self.long_polls.load(Ordering::Relaxed) >= self.max_long_polls {
            return Some(LONG_POLL_WAIT);
        }
        let paid = self.floor_paid_until.load(Ordering::Relaxed);
        let allowed = now.saturating_add(nanos(FLOOR_BURST));
        (paid > allowed).then(|| Duration::from_nanos(paid - allowed).min(MAX_PAUSE))
    }

    fn nanos(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.origin))
    }
}

/// One request's place in the scheduler: the time it has run so far, and
/// the pause it is in while it gives way to short requests.
pub(crate) struct Turn {
    /// Time the request has run, in nanoseconds, each poll counted up to
    /// [`MAX_COUNTED_POLL`].
    ran: u64,
    /// When it becomes long, in nanoseconds run.
    long_after: u64,
    /// Its app's `cpu_weight`, in thousandths.
    weight: u32,
    pause: Option<Pause>,
}

struct Pause {
    sleep: Pin<Box<tokio::time::Sleep>>,
    since: Instant,
}

impl Turn {
    /// A new request of an app with `weight` (thousandths; 1000 is the
    /// default weight of 1).
    pub(crate) fn new(weight: u32) -> Self {
        let long_after = nanos(LONG_AFTER).saturating_mul(u64::from(weight)) / 1000;
        Turn {
            ran: 0,
            long_after,
            weight,
            pause: None,
        }
    }

    /// Whether the request has used more than a short one may.
    pub(crate) fn is_long(&self) -> bool {
        self.ran >= self.long_after
    }

    /// Runs one poll of the guest, unless it is long and must give way
    /// first; charges the time to the app's `budget` and the scheduler.
    pub(crate) fn poll<R>(
        &mut self,
        scheduler: &Scheduler,
        budget: &CpuBudget,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<R>,
    ) -> Poll<R> {
        loop {
            if let Some(pause) = &mut self.pause {
                if pause.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                budget.gave_way(pause.since.elapsed());
                self.pause = None;
            }
            if !self.is_long() {
                break;
            }
            match scheduler.wait_at(scheduler.nanos(Instant::now())) {
                Some(wait) => {
                    self.pause = Some(Pause {
                        sleep: Box::pin(tokio::time::sleep(wait)),
                        since: Instant::now(),
                    });
                }
                None => break,
            }
        }
        let long = self.is_long();
        if long {
            scheduler.long_polls.fetch_add(1, Ordering::Relaxed);
        }
        let start = Instant::now();
        let result = poll(cx);
        let end = Instant::now();
        if long {
            scheduler.long_polls.fetch_sub(1, Ordering::Relaxed);
        }
        budget.charge_poll(start, end);
        let (start, end) = (scheduler.nanos(start), scheduler.nanos(end));
        if self.is_long() {
            scheduler.charge_long(start, end, self.weight);
        } else {
            scheduler.saw_short(end);
        }
        self.count(end.saturating_sub(start));
        result
    }

    /// Counts a poll of `ran` nanoseconds towards making the request long.
    fn count(&mut self, ran: u64) {
        self.ran = self.ran.saturating_add(ran.min(nanos(MAX_COUNTED_POLL)));
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn the_floor_is_a_twentieth_of_the_workers_and_at_least_the_minimum() {
        assert_eq!(Scheduler::new(1).floor(), MIN_FLOOR);
        assert_eq!(Scheduler::new(2).floor(), MIN_FLOOR);
        assert_eq!(Scheduler::new(16).floor(), 800);
        assert_eq!(Scheduler::new(64).floor(), 3200);
    }

    #[test]
    fn long_requests_never_wait_without_short_work() {
        let scheduler = Scheduler::new(2);
        // Two long requests running back to back for a second, nothing else.
        for slice in 0..1000 {
            scheduler.charge_long(slice * MS, (slice + 1) * MS, 1000);
            scheduler.charge_long(slice * MS, (slice + 1) * MS, 1000);
            assert_eq!(scheduler.wait_at((slice + 1) * MS), None);
        }
    }

    #[test]
    fn while_short_work_runs_long_requests_keep_only_the_floor() {
        let scheduler = Scheduler::new(2);
        // Short work runs all along; a long request runs a 1 ms slice
        // whenever it is not told to wait, for a simulated second.
        let mut ran = 0;
        let mut now = 10 * MS;
        while now < 1010 * MS {
            scheduler.saw_short(now);
            match scheduler.wait_at(now) {
                // Waiting: time passes in steps of 100 µs.
                Some(wait) => {
                    assert!(wait <= MAX_PAUSE, "{wait:?}");
                    now += MS / 10;
                }
                None => {
                    scheduler.charge_long(now, now + MS, 1000);
                    ran += MS;
                    now += MS;
                }
            }
        }
        // The floor of two workers (0.12 of a core), plus the burst.
        assert!((115 * MS..=135 * MS).contains(&ran), "ran {} ms", ran / MS);
    }

    #[test]
    fn a_heavier_weight_gets_a_larger_share_of_the_floor() {
        let run_for_a_second = |weight| {
            let scheduler = Scheduler::new(2);
            let mut ran = 0;
            let mut now = 10 * MS;
            while now < 1010 * MS {
                scheduler.saw_short(now);
                if scheduler.wait_at(now).is_some() {
                    now += MS / 10;
                } else {
                    scheduler.charge_long(now, now + MS, weight);
                    ran += MS;
                    now += MS;
                }
            }
            ran
        };
        let one = run_for_a_second(1000);
        let two = run_for_a_second(2000);
        assert!(two > one * 19 / 10 && two < one * 21 / 10, "{one} vs {two}");
    }

    #[test]
    fn short_work_counts_only_while_it_is_recent() {
        let scheduler = Scheduler::new(2);
        // Long requests far ahead of the floor.
        scheduler.charge_long(0, 100 * MS, 1000);
        assert_eq!(scheduler.wait_at(100 * MS), None, "no short work yet");
        scheduler.saw_short(100 * MS);
        assert!(scheduler.wait_at(101 * MS).is_some());
        assert!(scheduler.wait_at(102 * MS).is_some());
        assert_eq!(
            scheduler.wait_at(103 * MS),
            None,
            "short work stopped 3 ms ago"
        );
    }

    #[test]
    fn running_freely_piles_up_no_more_than_the_largest_debt() {
        let scheduler = Scheduler::new(2);
        // A minute of two long requests running with nothing else.
        for slice in 0..60_000 {
            scheduler.charge_long(slice * MS, (slice + 1) * MS, 1000);
            scheduler.charge_long(slice * MS, (slice + 1) * MS, 1000);
        }
        let now = 60_000 * MS;
        scheduler.saw_short(now);
        let paid = scheduler.floor_paid_until.load(Ordering::Relaxed);
        // At most the largest debt and one slice (1 ms at the floor: 8.3 ms)
        // ahead, not the minutes two cores' worth would cost.
        assert!(paid <= now + 59 * MS, "{} ms ahead", (paid - now) / MS);
        assert!(scheduler.wait_at(now).is_some());
    }

    #[test]
    fn a_request_is_long_after_its_weighted_threshold() {
        let mut turn = Turn::new(1000);
        assert!(!turn.is_long());
        turn.ran = nanos(LONG_AFTER) - 1;
        assert!(!turn.is_long());
        turn.ran = nanos(LONG_AFTER);
        assert!(turn.is_long());
        let mut heavy = Turn::new(4000);
        heavy.ran = nanos(LONG_AFTER) * 3;
        assert!(!heavy.is_long(), "weight 4: long after 20 ms");
        let light = Turn::new(500);
        assert_eq!(light.long_after, nanos(LONG_AFTER) / 2);
    }

    #[test]
    fn one_slow_poll_alone_does_not_make_a_request_long() {
        let mut turn = Turn::new(1000);
        // Preempted by the OS for 50 ms in its one poll.
        turn.count(50 * MS);
        assert!(!turn.is_long());
        // A guest that yields at every tick is long after a few.
        for _ in 0..4 {
            turn.count(MS);
        }
        assert!(turn.is_long());
    }

    #[tokio::test]
    async fn a_long_request_gives_way_and_its_pause_is_counted() {
        let scheduler = Scheduler::new(2);
        let budget = CpuBudget::new("app".into(), None);
        let mut turn = Turn::new(1000);
        turn.ran = nanos(LONG_AFTER);
        // Long requests ahead of the floor while short work runs.
        let now = scheduler.nanos(Instant::now());
        scheduler.charge_long(now, now + 20 * MS, 1000);
        scheduler.saw_short(now);
        let mut polled = 0;
        let outcome = std::future::poll_fn(|cx| {
            turn.poll(&scheduler, &budget, cx, |_| {
                polled += 1;
                Poll::Ready(())
            })
        })
        .await;
        assert_eq!(outcome, ());
        assert_eq!(polled, 1);
        assert!(budget.gave_way_total() > Duration::ZERO);
    }

    #[test]
    fn while_short_work_runs_long_requests_run_on_at_most_the_floor_s_workers() {
        let scheduler = Scheduler::new(2);
        assert_eq!(scheduler.max_long_polls, 1);
        assert_eq!(Scheduler::new(16).max_long_polls, 1);
        assert_eq!(Scheduler::new(64).max_long_polls, 4);
        let now = 10 * MS;
        // One long request is in a poll; the floor is not spent.
        scheduler.long_polls.store(1, Ordering::Relaxed);
        assert_eq!(scheduler.wait_at(now), None, "no short work: no limit");
        scheduler.saw_short(now);
        assert_eq!(scheduler.wait_at(now), Some(LONG_POLL_WAIT));
        scheduler.long_polls.store(0, Ordering::Relaxed);
        assert_eq!(scheduler.wait_at(now), None);
    }
}
