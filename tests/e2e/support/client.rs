//! Real HTTP clients: HTTP/1.1 with keep-alive, and HTTP/2 cleartext with
//! prior knowledge.

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

type ReqBody = BoxBody<Bytes, Infallible>;

/// An HTTP client bound to one protocol.
#[derive(Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, ReqBody>,
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

impl Client {
    /// HTTP/1.1 with keep-alive.
    pub fn http1() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// HTTP/2 over cleartext TCP with prior knowledge (h2c).
    pub fn http2() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// HTTP/1.1 with keep-alive, without hyper-util's default retry of a
    /// request whose connection closed before it was sent: a connection
    /// meshd closes shows as an error instead of being hidden.
    pub fn http1_no_retries() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .retry_canceled_requests(false)
                .build_http(),
        }
    }

    /// HTTP/2 (h2c, prior knowledge) without retries, as
    /// [`Client::http1_no_retries`].
    pub fn http2_no_retries() -> Self {
        Client {
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .retry_canceled_requests(false)
                .build_http(),
        }
    }

    /// Sends `req` and returns the response with its body still streaming.
    pub async fn send(&self, req: Request<ReqBody>) -> Result<Response<Incoming>, String> {
        self.inner.request(req).await.map_err(|e| format!("{e:?}"))
    }

    /// Sends `req` and reads the whole response.
    pub async fn fetch(&self, req: Request<ReqBody>) -> Result<Reply, String> {
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("reading body: {e:?}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GET `url`, panicking on a transport error.
    pub async fn get(&self, url: &str) -> Reply {
        self.fetch(request("GET", url, empty()))
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
    }

    /// POST `body` to `url`, panicking on a transport error.
    pub async fn post(&self, url: &str, body: impl Into<Bytes>) -> Reply {
        self.fetch(request("POST", url, full(body)))
            .await
            .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
    }
}

/// Builds a request.
pub fn request(method: &str, url: &str, body: ReqBody) -> Request<ReqBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .expect("valid request")
}

/// An empty body.
pub fn empty() -> ReqBody {
    full(Bytes::new())
}

/// A body of the given bytes.
pub fn full(bytes: impl Into<Bytes>) -> ReqBody {
    Full::new(bytes.into()).boxed()
}

/// A body of `len` bytes generated chunk by chunk, never held whole.
pub fn generated(len: u64) -> ReqBody {
    Generated {
        left: len,
        chunk: Bytes::from(vec![b'z'; 64 * 1024]),
    }
    .boxed()
}

struct Generated {
    left: u64,
    chunk: Bytes,
}

impl Body for Generated {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let len = self.left.min(self.chunk.len() as u64);
        self.left -= len;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..len as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Reads a streaming body to the end, counting bytes without keeping them.
pub async fn count_body(mut body: Incoming) -> Result<u64, String> {
    let mut total = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{e:?}"))?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
        }
    }
    Ok(total)
}

/// Starts `GET url` on a connection of its own in the background: for a
/// request that must be in flight while the test does something else.
pub fn spawn_get(url: String) -> tokio::task::JoinHandle<Result<Reply, String>> {
    tokio::spawn(async move { Client::http1().fetch(request("GET", &url, empty())).await })
}
