//! Bodies between the front door and a guest: the request body capped at the
//! app's `max_body`, and the response body that keeps its version in flight.

use crate::in_flight::InFlightGuard;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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

/// A guest's response body. While it exists the request counts as in flight
/// for its version, so a version is only retired once its bodies are sent.
///
/// If the guest fails after sending the head (trap, timeout, cancel), the
/// body ends with an error rather than a clean end, so the client sees a cut
/// response as cut (HTTP/1.1 closes without the last chunk, HTTP/2 resets the
/// stream).
pub struct ResponseBody {
    body: HyperOutgoingBody,
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
            guest_failed,
            _guard: guard,
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
        self.body.is_end_stream() && !self.guest_failed.load(Ordering::Acquire)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
