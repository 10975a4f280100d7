//! Sending a guest's outbound request to addresses meshd has already checked.
//!
//! wasmtime-wasi-http's `default_send_request` resolves the request's host
//! itself. meshd resolves it first, to refuse internal addresses; if the
//! connector then resolved it again, whoever controls that name's DNS could
//! answer the second lookup with an internal address (DNS rebinding). So the
//! connection here goes to the checked addresses only, and the host name is
//! used for nothing but TLS verification and the `Host` header.

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant, Sleep};
use wasmtime_wasi_http::{Error, WasiBody};

/// What a sent request yields: the response, and the future that drives the
/// rest of the connection (wasmtime-wasi-http runs it in a task).
pub(super) type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// The timeouts of one outbound request, already clamped to the app's.
pub(super) struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

/// Where to send a request: checked addresses, the name to verify the TLS
/// certificate against, and the TLS settings for https.
pub(super) struct Destination<'a> {
    pub addrs: &'a [SocketAddr],
    pub host: &'a str,
    pub https: bool,
    pub tls: &'a Arc<rustls::ClientConfig>,
}

/// A TCP or TLS stream, for hyper.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Connects to one of `to.addrs` (in order), speaks TLS for https, and sends
/// `request` over HTTP/1.1.
pub(super) async fn send(
    mut request: Request<WasiBody>,
    to: Destination<'_>,
    timeouts: Timeouts,
) -> Result<Sent, Error> {
    let (mut sender, conn) = timeout(timeouts.connect, handshake(&to))
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    // Sent to the origin, the request line carries only the path and query.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|_| Error::HttpRequestUriInvalid)?;
    *request.uri_mut() = path;

    // hyper's connection future does the I/O: it has to run while we wait
    // for the response head, and afterwards while the body streams.
    let mut conn = Box::pin(conn);
    let response = timeout(timeouts.first_byte, sender.send_request(request));
    tokio::pin!(response);
    let mut conn_ended = false;
    let response = tokio::select! {
        biased;
        response = &mut response => response,
        ended = &mut conn => {
            // The connection closed or failed first; the response future
            // now holds the answer or the reason there is none.
            conn_ended = true;
            ended?;
            (&mut response).await
        }
    };
    let response = response.map_err(|_| Error::ConnectionReadTimeout)??;

    let response = response
        .map(|incoming| IdleTimeoutBody::new(incoming, timeouts.between_bytes).boxed_unsync());
    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = if conn_ended {
        Box::new(async { Ok(()) })
    } else {
        Box::new(async move { conn.await.map_err(Error::from) })
    };
    Ok((response, io))
}

type Handshake = (
    hyper::client::conn::http1::SendRequest<WasiBody>,
    hyper::client::conn::http1::Connection<TokioIo<Box<dyn Stream>>, WasiBody>,
);

async fn handshake(to: &Destination<'_>) -> Result<Handshake, Error> {
    let tcp = TcpStream::connect(to.addrs).await.map_err(Error::Connect)?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = if to.https {
        let name = ServerName::try_from(to.host.to_owned()).map_err(Error::InvalidDnsNameError)?;
        let tls = tokio_rustls::TlsConnector::from(to.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(tls_error)?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    Ok(hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?)
}

/// A server certificate that does not verify (unknown issuer, wrong name,
/// expired) is `tls-certificate-error` for the guest, so it can tell that
/// from a broken handshake (`tls-protocol-error`).
fn tls_error(error: std::io::Error) -> Error {
    let certificate = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
    if certificate {
        Error::TlsCertificateError
    } else {
        Error::Tls(error)
    }
}

/// A response body that fails if no frame arrives within `limit` of the
/// previous one (or of the head).
struct IdleTimeoutBody {
    inner: Incoming,
    limit: Duration,
    idle: Pin<Box<Sleep>>,
}

impl IdleTimeoutBody {
    fn new(inner: Incoming, limit: Duration) -> Self {
        IdleTimeoutBody {
            inner,
            limit,
            idle: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // The limit is the app's timeout, at most a day; never panic.
                let now = Instant::now();
                let next = now.checked_add(self.limit).unwrap_or(now);
                self.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Error::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SECOND: Duration = Duration::from_secs(1);

    fn tls() -> Arc<rustls::ClientConfig> {
        crate::outbound::client_config(&[]).expect("the default TLS settings")
    }

    fn timeouts(between_bytes: Duration) -> Timeouts {
        Timeouts {
            connect: SECOND,
            first_byte: SECOND,
            between_bytes,
        }
    }

    /// A request as wasmtime-wasi-http hands it over: absolute URI, `Host`
    /// set from its authority.
    fn request(uri: &str, host: &str) -> Request<WasiBody> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        Request::get(uri)
            .header(http::header::HOST, host)
            .body(body)
            .expect("a valid test request")
    }

    /// A server that reads one request head, sends it to the test, and
    /// answers with `reply`, then keeps the connection open.
    async fn server(reply: &'static [u8]) -> (SocketAddr, tokio::sync::oneshot::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.ends_with(b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            socket.write_all(reply).await.expect("write");
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        (addr, rx)
    }

    #[tokio::test]
    async fn connects_to_the_checked_address_without_resolving_the_name_again() {
        let (addr, head) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").await;
        // The name does not resolve at all: only the checked address is used.
        let host = "rebinding.invalid";
        let to = Destination {
            addrs: &[addr],
            host,
            https: false,
            tls: &tls(),
        };
        let uri = format!("http://{host}/path?q=1");
        let (response, io) = send(request(&uri, host), to, timeouts(SECOND))
            .await
            .expect("sent");
        assert_eq!(response.status(), 200);
        tokio::spawn(Box::into_pin(io));
        let body = response.into_body().collect().await.expect("body");
        assert_eq!(body.to_bytes(), "hi");

        let head = head.await.expect("the server saw a request");
        assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("host: rebinding.invalid\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_body_that_stalls_fails_after_the_between_bytes_timeout() {
        let (addr, _head) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf").await;
        let to = Destination {
            addrs: &[addr],
            host: "127.0.0.1",
            https: false,
            tls: &tls(),
        };
        let limit = Duration::from_millis(200);
        let (response, io) = send(
            request(&format!("http://{addr}/"), "127.0.0.1"),
            to,
            timeouts(limit),
        )
        .await
        .expect("sent");
        tokio::spawn(Box::into_pin(io));
        let started = Instant::now();
        let error = response
            .into_body()
            .collect()
            .await
            .expect_err("stalled body");
        assert!(matches!(error, Error::ConnectionReadTimeout), "{error:?}");
        assert!(started.elapsed() < 5 * SECOND);
    }

    #[tokio::test]
    async fn no_response_head_fails_after_the_first_byte_timeout() {
        let (addr, _head) = server(b"").await;
        let to = Destination {
            addrs: &[addr],
            host: "127.0.0.1",
            https: false,
            tls: &tls(),
        };
        let mut limits = timeouts(SECOND);
        limits.first_byte = Duration::from_millis(200);
        let result = send(request(&format!("http://{addr}/"), "127.0.0.1"), to, limits).await;
        assert!(
            matches!(result, Err(Error::ConnectionReadTimeout)),
            "{:?}",
            result.err()
        );
    }

    #[tokio::test]
    async fn https_fails_against_a_server_that_does_not_speak_tls() {
        // A plain-HTTP server that answers at once: the TLS handshake must
        // fail on its answer, not fall back to plain HTTP.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let _ = socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        });
        let to = Destination {
            addrs: &[addr],
            host: "example.com",
            https: true,
            tls: &tls(),
        };
        let result = send(
            request("https://example.com/", "example.com"),
            to,
            timeouts(SECOND),
        )
        .await;
        assert!(matches!(result, Err(Error::Tls(_))), "{:?}", result.err());
    }
}
