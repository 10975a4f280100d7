//! The epoch ticker: a dedicated OS thread that advances the engine's epoch
//! every [`EPOCH_TICK`] while guests run, so a running guest yields (and can
//! be stopped) at every tick. It must not be a tokio task: with every worker
//! busy running wasm, a task would never get to tick.
//!
//! Nothing needs the epoch while no guest runs, so after [`IDLE_TICKS`]
//! ticks without a guest poll the thread sleeps instead of waking a
//! thousand times a second; the next guest poll wakes it. How no wake-up is
//! lost: a poll stores the tick it saw, then looks whether the ticker
//! sleeps; the ticker says it sleeps, then looks at the last poll again
//! before it parks. With both orders sequentially consistent, at least one
//! of them sees the other. A guest that keeps running inside one poll
//! begun before the ticker slept (wasm entered after a long host call) is
//! covered by [`MAX_NAP`]: the ticker never sleeps longer than that
//! without ticking once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use wasmtime::Engine;

/// How often the engine's epoch advances. A running guest yields to the async
/// runtime at every tick, so this bounds how long one guest can hold a worker
/// thread before another request gets it. At 10 ms, two spinning guests on
/// two cores cut a neighbour's throughput to 6% of its solo figure; at 1 ms
/// to about 40% (bench/noisy.sh, docs/benchmarks.md).
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Ticks without a guest poll after which the ticker sleeps.
const IDLE_TICKS: u64 = 100;

/// The longest the ticker sleeps without ticking.
const MAX_NAP: Duration = Duration::from_millis(100);

/// What the ticker thread and the guests' polls share.
#[derive(Default)]
struct Shared {
    /// Ticks so far (written by the ticker only).
    ticks: AtomicU64,
    /// The tick the last guest poll saw.
    last_poll: AtomicU64,
    /// Set while the ticker is about to park or parked.
    asleep: AtomicBool,
    stop: AtomicBool,
}

/// The ticker of one engine; stopped when dropped.
pub(crate) struct EpochTicker {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts the thread ticking `engine`.
    pub(crate) fn start(engine: &Engine) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let weak = engine.weak();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("meshd-epoch".into())
                .spawn(move || {
                    while !shared.stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match weak.upgrade() {
                            Some(engine) => engine.increment_epoch(),
                            None => break,
                        }
                        let now = shared.ticks.load(Ordering::Relaxed) + 1;
                        shared.ticks.store(now, Ordering::Relaxed);
                        shared.nap_if_idle(now);
                    }
                })?
        };
        Ok(EpochTicker {
            shared,
            thread: Some(thread),
        })
    }

    /// Says a guest is about to run: call it before every poll of guest
    /// code. Cheap: two relaxed loads, and at most once per tick a store.
    pub(crate) fn guest_runs(&self) {
        let shared = &*self.shared;
        let now = shared.ticks.load(Ordering::Relaxed);
        if shared.last_poll.load(Ordering::Relaxed) == now {
            return;
        }
        shared.last_poll.store(now, Ordering::SeqCst);
        if shared.asleep.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Ticks so far.
    #[cfg(test)]
    fn ticks(&self) -> u64 {
        self.shared.ticks.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Parks the ticker (at most [`MAX_NAP`]) if no guest has polled for
    /// [`IDLE_TICKS`] ticks by tick `now`.
    fn nap_if_idle(&self, now: u64) {
        let idle = |order| now.saturating_sub(self.last_poll.load(order)) > IDLE_TICKS;
        if !idle(Ordering::Relaxed) {
            return;
        }
        self.asleep.store(true, Ordering::SeqCst);
        if idle(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
            std::thread::park_timeout(MAX_NAP);
        }
        self.asleep.store(false, Ordering::SeqCst);
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.wake();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (at most 10 s) until `done`.
    fn wait_until(done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn an_idle_ticker_sleeps_and_a_guest_poll_wakes_it() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine).unwrap();
        // No guest: after IDLE_TICKS it ticks only once per MAX_NAP.
        wait_until(|| ticker.ticks() > IDLE_TICKS);
        std::thread::sleep(MAX_NAP);
        let before = ticker.ticks();
        std::thread::sleep(MAX_NAP * 5);
        let idle_ticks = ticker.ticks() - before;
        assert!(idle_ticks <= 10, "{idle_ticks} ticks in 500 ms while idle");

        // A guest polls: ticking resumes at once, and goes on while guests
        // keep polling (here every tick).
        ticker.guest_runs();
        let woken = ticker.ticks();
        wait_until(|| {
            ticker.guest_runs();
            ticker.ticks() >= woken + 2 * IDLE_TICKS
        });
        // Far more than MAX_NAP allows: it never slept meanwhile.
    }

    #[test]
    fn dropping_the_ticker_stops_its_thread_even_asleep() {
        let engine = Engine::default();
        let ticker = EpochTicker::start(&engine).unwrap();
        wait_until(|| ticker.ticks() > IDLE_TICKS + 1);
        // Joins the thread: returns only once it has stopped.
        drop(ticker);
    }
}
