//! What one client connection is doing, for its write and idle timeouts.
//!
//! Every request on a connection holds a [`Ticket`] from the moment hyper
//! hands it to the service until hyper drops its response body. The ticket
//! says whether the response waits for hyper to take its next frame (the
//! client is not reading: hyper stopped asking) or hyper waits for it (the
//! app is still writing). The connection's task asks [`ConnWatch::check`]
//! when the next deadline is due:
//!
//! - a response that waited for hyper longer than the write timeout means the
//!   client stopped reading: the connection is dropped, and with it the
//!   guests still writing to it;
//! - a connection with no request for longer than the idle timeout is closed
//!   gracefully.
//!
//! A frame handed on costs one uncontended lock; the connection's task wakes
//! only at deadlines, never on a fixed tick.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Full};
use slab::Slab;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// A ticket's state when hyper is not the one it waits for.
const NOT_WAITING: u64 = u64::MAX;

/// The responses in progress on one connection.
pub(crate) struct ConnWatch {
    start: Instant,
    write_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<WatchState>,
    /// Set when the connection is dropped for a stalled response: its
    /// unfinished bodies then stop what produces them.
    stalled: AtomicBool,
}

struct WatchState {
    /// For each request in progress: since when (milliseconds after
    /// `start`) its response has waited for hyper to take a frame, or
    /// [`NOT_WAITING`].
    tickets: Slab<u64>,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
}

/// What the connection's task should do now.
pub(crate) enum Verdict {
    /// A response made no progress for the write timeout: drop the
    /// connection.
    Stalled,
    /// No request for the idle timeout: close the connection gracefully.
    Idle,
    /// Nothing yet: check again at this instant.
    CheckAt(Instant),
}

impl ConnWatch {
    pub(crate) fn new(write_timeout: Duration, idle_timeout: Duration) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(ConnWatch {
            start: now,
            write_timeout,
            idle_timeout,
            state: Mutex::new(WatchState {
                tickets: Slab::new(),
                idle_since: now,
            }),
            stalled: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more request in progress until the ticket is dropped.
    pub(crate) fn open(self: &Arc<Self>) -> Ticket {
        let key = self.lock().tickets.insert(NOT_WAITING);
        Ticket {
            watch: self.clone(),
            key,
        }
    }

    /// When the connection's task should first call [`ConnWatch::check`]:
    /// the sooner of the two timeouts, since a response may start waiting
    /// right away (an HTTP/2 client that opens with a window of 0). Checking
    /// first at the idle timeout let such a stall run that long.
    pub(crate) fn first_check(&self) -> Instant {
        self.start + self.write_timeout.min(self.idle_timeout)
    }

    /// One idle timeout after `now`.
    pub(crate) fn idle_deadline_from(&self, now: Instant) -> Instant {
        now + self.idle_timeout
    }

    /// Decides on the deadlines that are due at `now`.
    pub(crate) fn check(&self, now: Instant) -> Verdict {
        let state = self.lock();
        if state.tickets.is_empty() {
            let deadline = state.idle_since + self.idle_timeout;
            return if now >= deadline {
                Verdict::Idle
            } else {
                Verdict::CheckAt(deadline)
            };
        }
        // A response that starts waiting after now cannot be due before
        // now + write_timeout, nor can the connection fall idle and be due
        // before now + idle_timeout: checking again by then misses nothing.
        let mut next = now + self.write_timeout.min(self.idle_timeout);
        for (_, since) in &state.tickets {
            if *since == NOT_WAITING {
                continue;
            }
            let deadline = self.start + Duration::from_millis(*since) + self.write_timeout;
            if now >= deadline {
                return Verdict::Stalled;
            }
            next = next.min(deadline);
        }
        Verdict::CheckAt(next)
    }

    /// Marks the connection as dropped for a stalled response.
    pub(crate) fn set_stalled(&self) {
        self.stalled.store(true, Ordering::Release);
    }

    fn millis_since_start(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NOT_WAITING - 1)
    }
}

/// One request in progress on a connection.
pub(crate) struct Ticket {
    watch: Arc<ConnWatch>,
    key: usize,
}

impl Ticket {
    /// The response now waits for hyper to take its next frame.
    fn waiting_for_hyper(&self) {
        let since = self.watch.millis_since_start();
        self.set(since);
    }

    /// Hyper now waits for the response (or the response has ended).
    fn not_waiting(&self) {
        self.set(NOT_WAITING);
    }

    fn set(&self, value: u64) {
        if let Some(slot) = self.watch.lock().tickets.get_mut(self.key) {
            *slot = value;
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.watch.lock();
        state.tickets.try_remove(self.key);
        if state.tickets.is_empty() {
            state.idle_since = Instant::now();
        }
    }
}

/// A response body that can stop whatever produces it, for a client that
/// stopped reading it.
pub trait Abandon {
    /// Stops the producer (a guest still writing); nothing will read it.
    fn abandon(&mut self) {}
}

impl Abandon for Full<Bytes> {}

impl Abandon for meshd_tenant::ResponseBody {
    fn abandon(&mut self) {
        self.stop_guest();
    }
}

impl<L: Abandon, R: Abandon> Abandon for Either<L, R> {
    fn abandon(&mut self) {
        match self {
            Either::Left(body) => body.abandon(),
            Either::Right(body) => body.abandon(),
        }
    }
}

/// A response body that tells its connection's watch whether it waits for
/// hyper, and holds the request's ticket until hyper drops it.
pub struct Watched<B: Abandon> {
    inner: B,
    ticket: Ticket,
    ended: bool,
}

impl<B: Abandon> Watched<B> {
    /// Hyper has the response head: from now on it must take the body.
    pub(crate) fn new(inner: B, ticket: Ticket) -> Self {
        ticket.waiting_for_hyper();
        Watched {
            inner,
            ticket,
            ended: false,
        }
    }
}

impl<B> Body for Watched<B>
where
    B: Body<Data = Bytes> + Abandon + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(_))) => self.ticket.waiting_for_hyper(),
            Poll::Ready(None | Some(Err(_))) => {
                self.ended = true;
                self.ticket.not_waiting();
            }
            Poll::Pending => self.ticket.not_waiting(),
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Abandon> Drop for Watched<B> {
    fn drop(&mut self) {
        // Dropped unfinished because its client stopped reading: whatever
        // still writes it must stop too.
        if !self.ended && self.ticket.watch.stalled.load(Ordering::Acquire) {
            self.inner.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_check_comes_after_the_shorter_timeout() {
        // A response may wait for hyper from the first request on (an h2
        // client opening with a window of 0): the write timeout must not
        // wait for the idle timeout's first check.
        let watch = ConnWatch::new(SECOND, 30 * SECOND);
        assert_eq!(watch.first_check(), watch.start + SECOND);
        let watch = ConnWatch::new(30 * SECOND, 2 * SECOND);
        assert_eq!(watch.first_check(), watch.start + 2 * SECOND);
    }

    #[test]
    fn an_idle_connection_is_due_after_the_idle_timeout() {
        let watch = ConnWatch::new(SECOND, 2 * SECOND);
        let now = Instant::now();
        assert!(matches!(watch.check(now), Verdict::CheckAt(_)));
        assert!(matches!(watch.check(now + 3 * SECOND), Verdict::Idle));
    }

    #[test]
    fn a_request_in_progress_keeps_the_connection_open() {
        let watch = ConnWatch::new(SECOND, SECOND);
        let ticket = watch.open();
        // The app is computing: neither timeout applies.
        assert!(matches!(
            watch.check(Instant::now() + 10 * SECOND),
            Verdict::CheckAt(_)
        ));
        drop(ticket);
        assert!(matches!(
            watch.check(Instant::now() + 2 * SECOND),
            Verdict::Idle
        ));
    }

    #[test]
    fn a_response_hyper_does_not_take_stalls() {
        let watch = ConnWatch::new(SECOND, 10 * SECOND);
        let body = Watched::new(Full::new(Bytes::from_static(b"x")), watch.open());
        let now = Instant::now();
        match watch.check(now) {
            Verdict::CheckAt(at) => assert!(at <= now + SECOND + Duration::from_millis(1)),
            _ => panic!("not due yet"),
        }
        assert!(matches!(watch.check(now + 2 * SECOND), Verdict::Stalled));
        drop(body);
    }
}
