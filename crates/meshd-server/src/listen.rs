//! The accept loop, connection limits, timeouts and graceful shutdown, for
//! the front door and for every other listener of meshd (metrics).

use crate::access_log::{AccessLogged, Arrival};
use crate::conn_watch::{Abandon, ConnWatch, Verdict, Watched};
use crate::dispatch::{dispatch, dispatch_to};
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use meshd_registry::Registry;
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// How often an HTTP/2 connection is pinged, and how long the client has to
/// answer before the connection is closed: a peer that vanished (no FIN, no
/// RST) does not keep its connection and streams forever.
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` resolves, then stops
/// accepting, lets open connections finish their in-flight requests for at most
/// `config.shutdown_timeout`, and returns. Returns `true` if every connection
/// closed in time.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    shutdown: impl Future<Output = ()>,
    config: ServeConfig,
) -> bool {
    let access_log = config.access_log;
    let handler = move |req: Request<Incoming>| {
        let registry = registry.clone();
        async move {
            if !access_log {
                return dispatch(&registry, req).await.map(AccessLogged::off);
            }
            let arrival = Arrival::of(&req);
            let (resp, served_by) = dispatch_to(&registry, req).await;
            let entry = arrival.answered(resp.status().as_u16(), served_by);
            resp.map(|body| AccessLogged::logged(body, entry))
        }
    };
    serve_with(listener, shutdown, &config, "front door", handler).await
}

/// Serves `handler` on `listener` with the protections of `config`, until
/// `shutdown`; see [`serve`]. `name` tells the listener's log lines apart.
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
    let stop = CancellationToken::new();
    let connections = Arc::new(Semaphore::new(config.max_connections));
    // Whether the last accept found the limit reached: logged once per
    // episode, not once per connection.
    let mut at_limit = false;
    tokio::pin!(shutdown);
    loop {
        // At the limit, stop accepting until a connection closes; new
        // clients wait in the kernel's backlog meanwhile.
        let permit = match connections.clone().try_acquire_owned() {
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
                        limit = config.max_connections,
                        "connection limit reached; new connections wait until one closes"
                    );
                }
                tokio::select! {
                    permit = connections.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break, // never closed
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Nagle would delay small streamed chunks by up to 40 ms.
        let _ = stream.set_nodelay(true);
        let watch = ConnWatch::new(config.write_timeout, config.idle_timeout);
        let service = {
            let watch = watch.clone();
            let handler = handler.clone();
            service_fn(move |req| {
                let ticket = watch.open();
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await.map(|b| Watched::new(b, ticket))) }
            })
        };
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let stop = stop.clone();
        let closed = config.closed.clone();
        // Runs the connection to its end, closing it gracefully when it
        // falls idle or meshd shuts down, and dropping it when a response
        // stalls.
        tokio::spawn(async move {
            tokio::pin!(conn);
            let check = tokio::time::sleep_until(watch.first_check().into());
            tokio::pin!(check);
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
                            closed.write_timeout.fetch_add(1, Ordering::Relaxed);
                            break; // drops the connection and its bodies
                        }
                        // Asked to close and still idle: the client does not
                        // cooperate.
                        Verdict::Idle if closing => break,
                        Verdict::Idle => {
                            closed.idle.fetch_add(1, Ordering::Relaxed);
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                            check.as_mut().reset(watch.idle_deadline_from(Instant::now()).into());
                        }
                        Verdict::CheckAt(at) => check.as_mut().reset(at.into()),
                    },
                    () = stop.cancelled(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    stop.cancel();
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
