//! Bodies between the front door and a guest: the request body capped at the
//! app's `max_body`, and the response body that keeps its version in flight.

use crate::in_flight::InFlightGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use tokio::task::AbortHandle;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::Error;

/// A request body that fails once more than `limit` bytes have arrived, and
/// says so through a shared flag. Nothing past the limit is read. (`B` is
/// `Unpin`, as hyper's `Incoming` is, so it needs no box of its own.)
pub struct LimitedBody<B> {
    inner: B,
    left: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; the flag turns true if the limit is exceeded.
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody {
            inner,
            left: limit,
            limit,
            exceeded: exceeded.clone(),
        };
        (body, exceeded)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Error>,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if self.exceeded.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(self.limit)))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                self.exceeded.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Error::HttpRequestBodySize(Some(self.limit)))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What a request's guest and its response body share (one allocation for
/// both): the request's place in its version's in-flight count, held until
/// both are gone, and whether the guest failed.
pub(crate) struct GuestShare {
    _version_slot: InFlightGuard,
    guest_failed: AtomicBool,
}

impl GuestShare {
    pub(crate) fn new(version_slot: InFlightGuard) -> Arc<Self> {
        Arc::new(GuestShare {
            _version_slot: version_slot,
            guest_failed: AtomicBool::new(false),
        })
    }

    /// Says the guest failed. Set before its Store (which feeds the response
    /// body) is dropped, so the body sees the failure when it ends.
    pub(crate) fn set_guest_failed(&self) {
        self.guest_failed.store(true, Ordering::Release);
    }

    fn guest_failed(&self) -> bool {
        self.guest_failed.load(Ordering::Acquire)
    }
}

/// Most bytes of a finished guest's body that are collected before the head
/// is sent, so that the response carries a `Content-Length` instead of
/// chunked framing (one write with no chunk headers, and less for the client
/// to parse).
const COLLECT_LIMIT: u64 = 64 * 1024;

/// A guest's response body. While it exists the request counts as in flight
/// for its version, so a version is only retired once its bodies are sent.
/// It does not hold the app's `max_concurrency` place nor an instance slot:
/// those belong to the guest and are given back when the guest ends, however
/// slowly the client reads what it wrote.
///
/// If the guest fails after sending the head (trap, timeout, cancel), the
/// body ends with an error rather than a clean end, so the client sees a cut
/// response as cut (HTTP/1.1 closes without the last chunk, HTTP/2 resets the
/// stream).
///
/// If the body is dropped in the middle, after hyper began to read it and
/// before it had all of it (the client went away), the guest still writing it
/// is stopped. A body hyper never reads (a HEAD request, a 204 or 304) or
/// stops reading at its declared length leaves the guest running: it may
/// still have work to do after its response. The front door stops it with
/// [`ResponseBody::stop_guest`] when it closes a connection whose client
/// stopped reading.
pub struct ResponseBody {
    body: HyperOutgoingBody,
    /// Frames already taken from `body` (see [`ResponseBody::collect_ready`]),
    /// sent before anything else.
    collected: VecDeque<Result<Frame<Bytes>, Error>>,
    /// Whether `collected` is the whole body; then its length is exact.
    complete: bool,
    collected_len: u64,
    /// Whether hyper has asked for a frame yet.
    polled: bool,
    /// Whether the end (or an error, or trailers) has been handed on.
    ended: bool,
    /// Data bytes handed on so far, and the `Content-Length` the guest set.
    sent: u64,
    declared: Option<u64>,
    /// The task of a guest that is still writing this body.
    writer: Option<AbortHandle>,
    /// The version slot and the guest's failure, shared with the guest.
    share: Arc<GuestShare>,
}

impl ResponseBody {
    pub(crate) fn new(body: HyperOutgoingBody, share: Arc<GuestShare>) -> Self {
        ResponseBody {
            body,
            collected: VecDeque::new(),
            complete: false,
            collected_len: 0,
            polled: false,
            ended: false,
            sent: 0,
            declared: None,
            writer: None,
            share,
        }
    }

    /// Stops the guest still writing this body, if there is one. For a
    /// client that stopped reading: nobody will read what it writes, and its
    /// instance must not outlive the connection.
    pub fn stop_guest(&mut self) {
        if let Some(writer) = self.writer.take() {
            writer.abort();
        }
    }

    /// The task of the guest still writing this body, and the length its
    /// head declares: the task is aborted if the body is dropped mid-way.
    pub(crate) fn set_writer(&mut self, writer: AbortHandle, declared: Option<u64>) {
        self.writer = Some(writer);
        self.declared = declared;
    }

    /// Whether the body was dropped mid-way: read from, and not to its end.
    fn cut_short(&self) -> bool {
        let all_declared = self.declared.is_some_and(|len| self.sent >= len);
        self.polled && !self.ended && !all_declared && !self.is_end_stream()
    }

    /// Takes the frames the guest has already written, up to
    /// [`COLLECT_LIMIT`] bytes, without waiting for more. Called once the
    /// guest has returned: if it wrote its whole body, the body's length is
    /// now known and the head can say so.
    pub(crate) fn collect_ready(&mut self) {
        let mut cx = Context::from_waker(Waker::noop());
        while self.collected_len <= COLLECT_LIMIT {
            match Pin::new(&mut self.body).poll_frame(&mut cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let is_data = frame.is_data();
                    if let Some(data) = frame.data_ref() {
                        self.collected_len += data.len() as u64;
                    }
                    self.collected.push_back(Ok(frame));
                    if !is_data {
                        return; // trailers: sent as they are, after the data
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    self.collected.push_back(Err(e));
                    return;
                }
                Poll::Ready(None) => {
                    self.complete = !self.share.guest_failed();
                    return;
                }
                Poll::Pending => return,
            }
        }
    }

    /// The next frame: those collected first, then the guest's.
    fn next_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        if let Some(frame) = self.collected.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if self.complete {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            // The guest task sets the flag before its Store (which feeds this
            // body) is dropped, so an end caused by a failure is seen here.
            Poll::Ready(None) if self.share.guest_failed() => Poll::Ready(Some(Err(
                Error::InternalError(Some("the app failed mid-response".into())),
            ))),
            other => other,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.polled = true;
        let poll = self.as_mut().next_frame(cx);
        match &poll {
            Poll::Ready(Some(Ok(frame))) => match frame.data_ref() {
                Some(data) => self.sent += data.len() as u64,
                None => self.ended = true, // trailers come last
            },
            Poll::Ready(None | Some(Err(_))) => self.ended = true,
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        if self.complete {
            return self.collected.is_empty();
        }
        self.collected.is_empty() && self.body.is_end_stream() && !self.share.guest_failed()
    }

    fn size_hint(&self) -> SizeHint {
        if self.complete {
            return SizeHint::with_exact(self.collected_len);
        }
        // What is left in `body`, plus what was already taken from it.
        let rest = self.body.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(self.collected_len));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(self.collected_len));
        }
        hint
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Nobody will read what the guest writes.
        if self.cut_short() {
            if let Some(writer) = &self.writer {
                writer.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::in_flight::InFlight;
    use http_body_util::BodyExt;

    /// A body that yields `frames`, then either ends or stays pending (the
    /// guest has not written more yet).
    struct Scripted {
        frames: VecDeque<Frame<Bytes>>,
        ends: bool,
    }

    impl Body for Scripted {
        type Data = Bytes;
        type Error = Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
            match self.frames.pop_front() {
                Some(frame) => Poll::Ready(Some(Ok(frame))),
                None if self.ends => Poll::Ready(None),
                None => Poll::Pending,
            }
        }
    }

    fn response_body(chunks: Vec<Bytes>, ends: bool) -> ResponseBody {
        let frames = chunks.into_iter().map(Frame::data).collect();
        ResponseBody::new(
            Scripted { frames, ends }.boxed_unsync(),
            GuestShare::new(Arc::new(InFlight::default()).enter()),
        )
    }

    fn poll_once(body: &mut ResponseBody) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        Pin::new(body).poll_frame(&mut Context::from_waker(Waker::noop()))
    }

    fn data(poll: Poll<Option<Result<Frame<Bytes>, Error>>>) -> Bytes {
        match poll {
            Poll::Ready(Some(Ok(frame))) => frame.into_data().expect("a data frame"),
            _ => panic!("expected a data frame"),
        }
    }

    #[test]
    fn a_finished_body_has_an_exact_length_and_keeps_its_frames() {
        let mut body = response_body(vec!["hello ".into(), "world".into()], true);
        body.collect_ready();
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_end_stream());
        assert_eq!(data(poll_once(&mut body)), "hello ");
        assert_eq!(data(poll_once(&mut body)), "world");
        assert!(body.is_end_stream());
        assert!(matches!(poll_once(&mut body), Poll::Ready(None)));
    }

    #[test]
    fn an_unfinished_body_sends_what_was_taken_then_streams_the_rest() {
        let mut body = response_body(vec!["first".into()], false);
        body.collect_ready();
        assert_eq!(body.size_hint().exact(), None);
        assert!(body.size_hint().lower() >= 5);
        assert_eq!(data(poll_once(&mut body)), "first");
        assert!(poll_once(&mut body).is_pending());
        assert!(!body.is_end_stream());
    }

    #[test]
    fn collecting_stops_at_the_limit() {
        let big = Bytes::from(vec![b'x'; 40 * 1024]);
        let mut body = response_body(vec![big.clone(), big.clone(), big], true);
        body.collect_ready();
        // Two chunks pass the limit; the third stays in the stream.
        assert_eq!(body.collected.len(), 2);
        assert_eq!(body.size_hint().exact(), None);
        let mut total = 0;
        while let Poll::Ready(Some(Ok(frame))) = poll_once(&mut body) {
            total += frame.into_data().expect("data").len();
        }
        assert_eq!(total, 3 * 40 * 1024);
    }

    /// A stand-in for a guest's task: sleeps until aborted.
    fn writer_task() -> tokio::task::JoinHandle<()> {
        tokio::spawn(tokio::time::sleep(std::time::Duration::from_secs(60)))
    }

    async fn aborted(task: tokio::task::JoinHandle<()>) -> bool {
        let wait = tokio::time::timeout(std::time::Duration::from_millis(100), task).await;
        matches!(wait, Ok(Err(e)) if e.is_cancelled())
    }

    #[tokio::test]
    async fn dropped_mid_stream_stops_the_guest() {
        let task = writer_task();
        let mut body = response_body(vec!["first".into()], false);
        body.set_writer(task.abort_handle(), None);
        assert_eq!(data(poll_once(&mut body)), "first");
        assert!(poll_once(&mut body).is_pending());
        drop(body);
        assert!(aborted(task).await);
    }

    #[tokio::test]
    async fn dropped_unread_or_at_its_end_leaves_the_guest_running() {
        // Never read (HEAD, 204, 304).
        let task = writer_task();
        let mut body = response_body(vec!["x".into()], false);
        body.set_writer(task.abort_handle(), None);
        drop(body);
        assert!(!aborted(task).await);

        // Read up to its declared length.
        let task = writer_task();
        let mut body = response_body(vec!["12345".into()], false);
        body.set_writer(task.abort_handle(), Some(5));
        assert_eq!(data(poll_once(&mut body)), "12345");
        drop(body);
        assert!(!aborted(task).await);

        // Read to its end.
        let task = writer_task();
        let mut body = response_body(vec!["done".into()], true);
        body.set_writer(task.abort_handle(), None);
        assert_eq!(data(poll_once(&mut body)), "done");
        assert!(matches!(poll_once(&mut body), Poll::Ready(None)));
        drop(body);
        assert!(!aborted(task).await);
    }

    #[tokio::test]
    async fn stop_guest_stops_an_unread_body_s_guest() {
        let task = writer_task();
        let mut body = response_body(vec!["x".into()], false);
        body.set_writer(task.abort_handle(), None);
        body.stop_guest();
        assert!(aborted(task).await);
    }
}
