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
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::Error;

/// A request body that fails once more than `limit` bytes have arrived, and
/// says so through a shared flag. Nothing past the limit is read.
pub struct LimitedBody<B> {
    inner: Pin<Box<B>>,
    left: u64,
    limit: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`; the flag turns true if the limit is exceeded.
    pub fn new(inner: B, limit: u64) -> (Self, Arc<AtomicBool>) {
        let exceeded = Arc::new(AtomicBool::new(false));
        let body = LimitedBody {
            inner: Box::pin(inner),
            left: limit,
            limit,
            exceeded: exceeded.clone(),
        };
        (body, exceeded)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
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
        let frame = match self.inner.as_mut().poll_frame(cx) {
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

/// Most bytes of a finished guest's body that are collected before the head
/// is sent, so that the response carries a `Content-Length` instead of
/// chunked framing (one write with no chunk headers, and less for the client
/// to parse).
const COLLECT_LIMIT: u64 = 64 * 1024;

/// A guest's response body. While it exists the request counts as in flight
/// for its version, so a version is only retired once its bodies are sent.
///
/// If the guest fails after sending the head (trap, timeout, cancel), the
/// body ends with an error rather than a clean end, so the client sees a cut
/// response as cut (HTTP/1.1 closes without the last chunk, HTTP/2 resets the
/// stream).
pub struct ResponseBody {
    body: HyperOutgoingBody,
    /// Frames already taken from `body` (see [`ResponseBody::collect_ready`]),
    /// sent before anything else.
    collected: VecDeque<Result<Frame<Bytes>, Error>>,
    /// Whether `collected` is the whole body; then its length is exact.
    complete: bool,
    collected_len: u64,
    guest_failed: Arc<AtomicBool>,
    _guard: Arc<InFlightGuard>,
}

impl ResponseBody {
    pub(crate) fn new(
        body: HyperOutgoingBody,
        guest_failed: Arc<AtomicBool>,
        guard: Arc<InFlightGuard>,
    ) -> Self {
        ResponseBody {
            body,
            collected: VecDeque::new(),
            complete: false,
            collected_len: 0,
            guest_failed,
            _guard: guard,
        }
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
                    self.complete = !self.guest_failed.load(Ordering::Acquire);
                    return;
                }
                Poll::Pending => return,
            }
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
        if let Some(frame) = self.collected.pop_front() {
            return Poll::Ready(Some(frame));
        }
        if self.complete {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            // The guest task sets the flag before its Store (which feeds this
            // body) is dropped, so an end caused by a failure is seen here.
            Poll::Ready(None) if self.guest_failed.load(Ordering::Acquire) => {
                Poll::Ready(Some(Err(Error::InternalError(Some(
                    "the app failed mid-response".into(),
                )))))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.complete {
            return self.collected.is_empty();
        }
        self.collected.is_empty()
            && self.body.is_end_stream()
            && !self.guest_failed.load(Ordering::Acquire)
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
        let guard = Arc::new(InFlight::default()).enter();
        ResponseBody::new(
            Scripted { frames, ends }.boxed_unsync(),
            Arc::new(AtomicBool::new(false)),
            Arc::new(guard),
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
}
