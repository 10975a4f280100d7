//! The accept loops, connection limits, timeouts and graceful shutdown, for
//! the front door (plain and TLS listeners, optionally behind the PROXY
//! protocol) and for every other listener of meshd (metrics, admin). Every
//! protection applies to every listener alike: a TLS connection is a plain
//! one once its handshake is done.

use crate::access_log::{AccessLogged, Arrival};
use crate::acme_challenge::{Challenges, ACME_TLS_ALPN};
use crate::conn_watch::{Abandon, ConnWatch, Verdict, Watched};
use crate::dispatch::dispatch_to;
use crate::forwarded::{set_forwarded, ClientConn, TrustedProxies};
use crate::proxy_protocol::{self, Replay};
use crate::redirect::HttpsRedirect;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshd_registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How often an HTTP/2 connection is pinged, and how long the client has to
/// answer before the connection is closed: a peer that vanished (no FIN, no
/// RST) does not keep its connection and streams forever.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// When a server stops (shutdown, or a graceful restart handing the sockets
/// to a new meshd process), how long an HTTP/1 connection with no request
/// in progress stays open for one more request (answered with `Connection:
/// close`) before it is closed. Closing it at once races a keep-alive
/// client that is sending its next request on it: that request would fail
/// (the client cannot tell whether it was processed). HTTP/2 connections
/// get a GOAWAY at once instead, which clients handle without that race.
const HTTP1_STOP_LINGER: Duration = Duration::from_millis(500);

/// How a listener treats client connections.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_timeout: Duration,
    /// How long an HTTP/1 client may take to send a request head, and how
    /// long a keep-alive connection may sit idle between requests.
    pub header_read_timeout: Duration,
    /// Most client connections open at once; further ones wait in the
    /// listen backlog until one closes.
    pub max_connections: usize,
    /// How long a response may wait for its client to take more of it
    /// (the client does not read, or its HTTP/2 window stays shut) before
    /// the connection is dropped and the guest still writing it stopped.
    pub write_timeout: Duration,
    /// How long a connection with no request in progress (HTTP/1 between
    /// requests, HTTP/2 with no open stream) stays open.
    pub idle_timeout: Duration,
    /// Most concurrent streams of one HTTP/2 connection.
    pub max_streams: u32,
    /// Where the listener counts the connections it closed itself.
    pub closed: Arc<ClosedConnections>,
    /// Whether the front door writes an access-log event per request
    /// (target [`crate::ACCESS_TARGET`]).
    pub access_log: bool,
}

/// Connections a listener closed on its own initiative, by reason: the
/// figures that show clients that stop reading or hold connections idle.
#[derive(Debug, Default)]
pub struct ClosedConnections {
    /// Dropped because a response made no progress for the write timeout.
    pub write_timeout: AtomicU64,
    /// Closed because no request was in progress for the idle timeout.
    pub idle: AtomicU64,
}

/// One socket of the front door, and how its connections begin.
pub struct Listener {
    socket: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
}

impl Listener {
    /// Plain HTTP/1.1 and h2c (prior knowledge).
    pub fn plain(socket: TcpListener) -> Self {
        Listener {
            socket,
            tls: None,
            proxy_protocol: false,
        }
    }

    /// HTTPS: TLS with `config`, then HTTP/1.1 or HTTP/2 (as ALPN chose).
    pub fn tls(socket: TcpListener, config: Arc<rustls::ServerConfig>) -> Self {
        Listener {
            socket,
            tls: Some(TlsAcceptor::from(config)),
            proxy_protocol: false,
        }
    }

    /// Whether every connection starts with a PROXY protocol header (v1 or
    /// v2) naming the client's address; one that does not is closed.
    pub fn with_proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }
}

/// What the front door does to a request before routing it.
#[derive(Debug, Clone, Default)]
pub struct Edge {
    /// Peers whose forwarded headers are appended to rather than replaced.
    pub trusted_proxies: TrustedProxies,
    /// Sends plain-HTTP requests for hosts with a certificate to HTTPS.
    pub redirect: Option<HttpsRedirect>,
    /// ACME HTTP-01 answers, given before the redirect and routing.
    pub challenges: Option<Arc<Challenges>>,
}

/// Serves the front door on `listeners` (plain and TLS), with one
/// connection limit and one graceful shutdown for all, until `shutdown`
/// resolves; then stops accepting, lets open connections finish their
/// in-flight requests for at most `config.shutdown_timeout`, and returns.
/// Returns `true` if every connection closed in time.
pub async fn serve(
    listeners: Vec<Listener>,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    config: ServeConfig,
    edge: Edge,
) -> bool {
    let access_log = config.access_log;
    let edge = Arc::new(edge);
    let handler = move |mut req: Request<Incoming>| {
        let registry = registry.clone();
        let edge = edge.clone();
        async move {
            let arrival = access_log.then(|| Arrival::of(&req));
            let conn = req.extensions().get::<ClientConn>().cloned();
            let challenge = edge
                .challenges
                .as_ref()
                .and_then(|challenges| challenges.respond(&req));
            let redirect = challenge.or_else(|| match (&edge.redirect, &conn) {
                (Some(redirect), Some(conn)) if !conn.tls => redirect.respond(&req),
                _ => None,
            });
            let (resp, served_by) = match redirect {
                Some(resp) => (resp, None),
                None => {
                    if let Some(conn) = &conn {
                        set_forwarded(req.headers_mut(), conn, &edge.trusted_proxies);
                    }
                    dispatch_to(&registry, req).await
                }
            };
            match arrival {
                None => resp.map(AccessLogged::off),
                Some(arrival) => {
                    let entry = arrival.answered(resp.status().as_u16(), served_by);
                    resp.map(|body| AccessLogged::logged(body, entry))
                }
            }
        }
    };
    serve_listeners(listeners, shutdown, &config, "front door", handler).await
}

/// Serves `handler` on `listener` (plain HTTP) with the protections of
/// `config`, until `shutdown`; see [`serve`]. `name` tells the listener's
/// log lines apart.
pub async fn serve_with<H, Fut, B>(
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    config: &ServeConfig,
    name: &'static str,
    handler: H,
) -> bool
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Abandon + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    serve_listeners(
        vec![Listener::plain(listener)],
        shutdown,
        config,
        name,
        handler,
    )
    .await
}

/// What every accept loop and connection of one server shares.
struct Shared<H> {
    builder: auto::Builder<TokioExecutor>,
    handler: H,
    config: ServeConfig,
    name: &'static str,
    /// Cancelled when the server stops accepting: open connections close
    /// gracefully.
    stop: CancellationToken,
    connections: Arc<Semaphore>,
}

/// [`serve_with`] on several listeners at once.
async fn serve_listeners<H, Fut, B>(
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
    config: &ServeConfig,
    name: &'static str,
    handler: H,
) -> bool
where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Abandon + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header timeout at all: a client
    // could hold a connection open forever with half a request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_streams)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let shared = Arc::new(Shared {
        builder,
        handler,
        config: config.clone(),
        name,
        stop: CancellationToken::new(),
        connections: Arc::new(Semaphore::new(config.max_connections)),
    });
    let accepting = CancellationToken::new();
    let mut loops = tokio::task::JoinSet::new();
    for listener in listeners {
        loops.spawn(accept_loop(listener, shared.clone(), accepting.clone()));
    }
    shutdown.await;
    accepting.cancel();
    while loops.join_next().await.is_some() {}
    let connections = &shared.connections;
    shared.stop.cancel();
    tracing::info!(
        listener = name,
        connections = config.max_connections - connections.available_permits(),
        timeout = ?config.shutdown_timeout,
        "stopped accepting connections; waiting for in-flight requests"
    );
    // Every connection holds a permit until it ends: all permits back means
    // all connections closed.
    let all = u32::try_from(config.max_connections).unwrap_or(u32::MAX);
    let all_closed = tokio::time::timeout(config.shutdown_timeout, connections.acquire_many(all))
        .await
        .is_ok();
    if !all_closed {
        tracing::warn!(
            listener = name,
            "shutdown timeout reached; closing the remaining connections"
        );
    }
    all_closed
}

/// Accepts connections on `listener` until `accepting` is cancelled, each
/// holding one of the server's connection permits until it closes.
async fn accept_loop<H, Fut, B>(
    listener: Listener,
    shared: Arc<Shared<H>>,
    accepting: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Abandon + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = shared.name;
    let Listener {
        socket,
        tls,
        proxy_protocol,
    } = listener;
    // What each connection needs of its listener (not the socket: it
    // closes when this loop ends, whatever connections are still open).
    let begin = Arc::new(Begin {
        tls,
        proxy_protocol,
    });
    // Whether the last accept found the limit reached: logged once per
    // episode, not once per connection.
    let mut at_limit = false;
    loop {
        // At the limit, stop accepting until a connection closes; new
        // clients wait in the kernel's backlog meanwhile.
        let permit = match shared.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                if std::mem::take(&mut at_limit) {
                    tracing::info!(listener = name, "below the connection limit again");
                }
                permit
            }
            Err(_) => {
                if !std::mem::replace(&mut at_limit, true) {
                    tracing::warn!(
                        listener = name,
                        limit = shared.config.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = shared.connections.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed
                    },
                    () = accepting.cancelled() => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = accepting.cancelled() => break,
        };
        // Nagle would delay small streamed chunks by up to 40 ms.
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let begin = begin.clone();
        tokio::spawn(async move {
            // The PROXY header and the TLS handshake come before the first
            // request: bounded like a request head, so a client that never
            // finishes them holds its descriptor no longer than one.
            let begin = tokio::time::timeout(
                shared.config.header_read_timeout,
                begin_connection(stream, peer, &begin),
            );
            // A connection accepted just before the server stopped is
            // served (its client has sent, or is sending, a request): it
            // gets HTTP1_STOP_LINGER more to begin, not a reset.
            let stopped_and_lingered = async {
                shared.stop.cancelled().await;
                tokio::time::sleep(HTTP1_STOP_LINGER).await;
            };
            let begun = tokio::select! {
                biased;
                begun = begin => begun,
                () = stopped_and_lingered => return,
            };
            match begun {
                Ok(Ok((Begun::Plain(io), conn))) => serve_connection(io, conn, &shared).await,
                Ok(Ok((Begun::Tls(io), conn))) => serve_connection(io, conn, &shared).await,
                Ok(Err(e)) => {
                    tracing::debug!(listener = name, %peer, error = %e, "connection refused before its first request");
                }
                Err(_) => {
                    tracing::debug!(
                        listener = name, %peer,
                        "connection closed: no PROXY header or TLS handshake within the header read timeout"
                    );
                }
            }
            drop(permit);
        });
    }
}

/// How a listener's connections begin.
struct Begin {
    tls: Option<TlsAcceptor>,
    proxy_protocol: bool,
}

/// A connection ready for HTTP.
enum Begun {
    Plain(Replay<TcpStream>),
    Tls(Box<tokio_rustls::server::TlsStream<Replay<TcpStream>>>),
}

/// Reads the PROXY protocol header and does the TLS handshake, as the
/// listener asks; says who the client is.
async fn begin_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: &Begin,
) -> std::io::Result<(Begun, ClientConn)> {
    let mut client = peer;
    let mut rest = Bytes::new();
    if listener.proxy_protocol {
        let (named, after) = proxy_protocol::read_header(&mut stream).await?;
        client = named.unwrap_or(peer);
        rest = after;
    }
    let stream = Replay::new(rest, stream);
    let conn = ClientConn::new(client, listener.tls.is_some());
    match &listener.tls {
        None => Ok((Begun::Plain(stream), conn)),
        Some(acceptor) => {
            let tls = acceptor.accept(stream).await?;
            // A TLS-ALPN-01 validation ends with the handshake (RFC 8737).
            if tls.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) {
                return Err(std::io::Error::other("TLS-ALPN-01 validation answered"));
            }
            Ok((Begun::Tls(Box::new(tls)), conn))
        }
    }
}

/// Runs one connection to its end, closing it gracefully when it falls
/// idle or the server stops, and dropping it when a response stalls.
async fn serve_connection<I, H, Fut, B>(io: I, conn: ClientConn, shared: &Shared<H>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Abandon + Unpin + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let name = shared.name;
    let peer = conn.client;
    let config = &shared.config;
    let watch = ConnWatch::new(config.write_timeout, config.idle_timeout);
    // Whether the server has stopped (responses on HTTP/1 then close the
    // connection), and whether this connection speaks HTTP/2.
    let stopping = Arc::new(AtomicBool::new(false));
    let http2 = Arc::new(AtomicBool::new(false));
    let service = {
        let watch = watch.clone();
        let handler = shared.handler.clone();
        let (stopping, http2) = (stopping.clone(), http2.clone());
        service_fn(move |mut req: Request<Incoming>| {
            let tls = conn.tls;
            req.extensions_mut().insert(conn.clone());
            // Absent means plain HTTP: one extension less on most requests.
            if tls {
                req.extensions_mut()
                    .insert(meshd_tenant::ClientScheme { https: true });
            }
            let is_http1 = req.version() < http::Version::HTTP_2;
            if !is_http1 {
                http2.store(true, Ordering::Relaxed);
            }
            let ticket = watch.open();
            let response = handler(req);
            let stopping = stopping.clone();
            // Boxed: over HTTP/2 hyper spawns a task per stream, and tokio
            // would copy this large future by value on the way in (5.5% of
            // an h2c request's instructions; docs/benchmarks.md).
            Box::pin(async move {
                let mut response = response.await;
                if is_http1 && stopping.load(Ordering::Relaxed) {
                    response.headers_mut().insert(
                        http::header::CONNECTION,
                        http::HeaderValue::from_static("close"),
                    );
                }
                Ok::<_, Infallible>(response.map(|b| Watched::new(b, ticket)))
            })
        })
    };
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::pin!(conn);
    let check = tokio::time::sleep_until(watch.first_check().into());
    tokio::pin!(check);
    // Set when the server stops and this connection may be HTTP/1: when
    // it is closed gracefully even if idle (see HTTP1_STOP_LINGER).
    let linger = tokio::time::sleep(Duration::MAX);
    tokio::pin!(linger);
    let mut lingering = false;
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(listener = name, %peer, error = %e, "connection ended with an error");
                }
                break;
            }
            () = &mut check => match watch.check(Instant::now()) {
                Verdict::Stalled => {
                    tracing::debug!(
                        listener = name, %peer,
                        "closing a connection: a response made no progress within the write timeout"
                    );
                    watch.set_stalled();
                    config.closed.write_timeout.fetch_add(1, Ordering::Relaxed);
                    break; // drops the connection and its bodies
                }
                // Asked to close and still idle: the client does not
                // cooperate.
                Verdict::Idle if closing => break,
                Verdict::Idle => {
                    config.closed.idle.fetch_add(1, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    check.as_mut().reset(watch.idle_deadline_from(Instant::now()).into());
                }
                Verdict::CheckAt(at) => check.as_mut().reset(at.into()),
            },
            () = shared.stop.cancelled(), if !closing && !lingering => {
                stopping.store(true, Ordering::Relaxed);
                if http2.load(Ordering::Relaxed) {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    lingering = true;
                    linger.as_mut().reset((Instant::now() + HTTP1_STOP_LINGER).into());
                }
            }
            () = &mut linger, if lingering && !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}
