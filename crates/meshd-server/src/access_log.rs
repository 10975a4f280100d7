//! The access log: one structured event per request, emitted when its
//! response has been sent (or given up), with the bytes actually handed to
//! the connection.
//!
//! Events go to the `tracing` target [`ACCESS_TARGET`]; the binary decides
//! where that target is written (`--access-log`). With the log off, responses
//! pass through [`AccessLogged`] untouched: no allocation, no clock read.

use crate::conn_watch::Abandon;
use crate::dispatch::ServedBy;
use bytes::Bytes;
use http::{Method, Request};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// The `tracing` target of access-log events.
pub const ACCESS_TARGET: &str = "meshd::access";

/// What is known of a request when it arrives.
pub(crate) struct Arrival {
    method: Method,
    /// The host the request was routed by (normalised: lower case, no
    /// port); `-` when it named none or an invalid one.
    host: String,
    /// The path as the client sent it, without the query (which may carry
    /// secrets).
    path: String,
    /// The client's address (after a PROXY protocol header), when the
    /// listener said.
    client: Option<std::net::IpAddr>,
    started: Instant,
}

impl Arrival {
    pub(crate) fn of<B>(req: &Request<B>) -> Arrival {
        Arrival {
            method: req.method().clone(),
            host: match crate::request_host::request_host(req) {
                Ok(Some(host)) => host.as_str().to_owned(),
                Ok(None) | Err(_) => "-".to_owned(),
            },
            path: req.uri().path().to_owned(),
            client: req
                .extensions()
                .get::<crate::forwarded::ClientConn>()
                .map(|conn| conn.ip()),
            started: Instant::now(),
        }
    }

    /// The entry, once the response head is known.
    pub(crate) fn answered(self, status: u16, served_by: ServedBy) -> Box<Entry> {
        Box::new(Entry {
            arrival: self,
            status,
            served_by,
            bytes: 0,
        })
    }
}

/// One request's line, filled in while its body is sent.
pub(crate) struct Entry {
    arrival: Arrival,
    status: u16,
    served_by: ServedBy,
    bytes: u64,
}

impl Entry {
    fn emit(&self, complete: bool) {
        let (app, version, side) = match &self.served_by {
            Some((version, side)) => (version.app(), version.id(), side.as_str()),
            None => ("-", "-", "-"),
        };
        let duration = self.arrival.started.elapsed();
        tracing::info!(
            target: ACCESS_TARGET,
            app,
            version,
            side,
            method = %self.arrival.method,
            host = %self.arrival.host,
            path = %self.arrival.path,
            client = self.arrival.client.map(tracing::field::display),
            status = self.status,
            bytes = self.bytes,
            duration_ms = duration.as_secs_f64() * 1000.0,
            complete,
            "request"
        );
    }
}

/// A response body that writes its request's access-log line when it ends,
/// or when it is dropped before its end (`complete=false`: the client went
/// away, or the connection was dropped). Without an entry it only passes
/// frames through.
pub struct AccessLogged<B: Body> {
    inner: B,
    entry: Option<Box<Entry>>,
}

impl<B: Body> AccessLogged<B> {
    /// A body that logs nothing.
    pub(crate) fn off(inner: B) -> Self {
        AccessLogged { inner, entry: None }
    }

    /// A body that logs `entry` when it ends.
    pub(crate) fn logged(inner: B, entry: Box<Entry>) -> Self {
        AccessLogged {
            inner,
            entry: Some(entry),
        }
    }
}

impl<B> Body for AccessLogged<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if let Some(entry) = self.entry.as_mut() {
            match &poll {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        entry.bytes += data.len() as u64;
                    }
                }
                Poll::Ready(None) => {
                    if let Some(entry) = self.entry.take() {
                        entry.emit(true);
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    if let Some(entry) = self.entry.take() {
                        entry.emit(false);
                    }
                }
                Poll::Pending => {}
            }
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

impl<B: Body> Drop for AccessLogged<B> {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            // A body hyper never polled to its end: either one it had no
            // need to send (HEAD, 204, 304, an empty body) or one cut short.
            let bodiless =
                entry.arrival.method == Method::HEAD || matches!(entry.status, 204 | 304);
            entry.emit(bodiless || self.inner.is_end_stream());
        }
    }
}

impl<B: Body + Abandon> Abandon for AccessLogged<B> {
    fn abandon(&mut self) {
        self.inner.abandon();
    }
}
