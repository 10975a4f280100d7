//! Counting what is in flight: one app's requests (so they stay within its
//! `max_concurrency`, across versions), one app version's requests (so it
//! can be drained), or the daemon's live and idle instances (so they stay
//! capped).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;

/// A count of things in flight, with an optional limit checked on entry. For
/// an app version: its requests, each counted from the moment it is admitted
/// until its guest has ended *and* its response body has been fully sent (or
/// dropped, at the latest when the front door's write timeout closes a
/// connection that stopped reading). For an app (`max_concurrency`): its
/// requests until their guests have ended, however slowly the clients read.
///
/// Entering and leaving are one atomic operation each, with no lock: every
/// request passes through two of these.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Set once someone waits in [`InFlight::drained`]; until then the last
    /// guard to leave has no one to wake and skips `Notify`'s lock.
    watched: AtomicBool,
    idle: Notify,
}

/// Proof that one thing is in flight; dropping it ends it.
#[derive(Debug)]
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    /// Admits one more.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Admits one more unless `limit` are already in flight.
    pub fn try_enter(self: &Arc<Self>, limit: u32) -> Option<InFlightGuard> {
        let limit = limit as usize;
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlightGuard(self.clone()))
    }

    /// How many are in flight right now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolves once nothing is in flight.
    pub async fn drained(&self) {
        // Sequentially consistent with the guards' decrement and check: either
        // the last guard sees `watched` and notifies, or this sees the count
        // at zero.
        self.watched.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Register before checking, so a drop between the check and the
            // await cannot be missed.
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.0.watched.load(Ordering::SeqCst)
        {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn try_enter_respects_the_limit() {
        let in_flight = Arc::new(InFlight::default());
        let a = in_flight.try_enter(2).unwrap();
        let _b = in_flight.try_enter(2).unwrap();
        assert!(in_flight.try_enter(2).is_none());
        drop(a);
        assert!(in_flight.try_enter(2).is_some());
    }

    #[tokio::test]
    async fn drained_waits_for_the_last_guard() {
        let in_flight = Arc::new(InFlight::default());
        let a = in_flight.enter();
        let b = in_flight.enter();
        assert_eq!(in_flight.count(), 2);
        let waiter = tokio::spawn({
            let in_flight = in_flight.clone();
            async move { in_flight.drained().await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("drained resolves after the last guard")
            .unwrap();
        assert_eq!(in_flight.count(), 0);
    }
}
