//! The accept loop, connection limits and graceful shutdown.

use crate::dispatch::{dispatch, Mounts};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How the front door treats client connections.
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
}

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` resolves, then stops
/// accepting, lets open connections finish their in-flight requests for at most
/// `config.shutdown_timeout`, and returns. Returns `true` if every connection
/// closed in time.
pub async fn serve(
    listener: TcpListener,
    mounts: Arc<ArcSwap<Mounts>>,
    shutdown: impl Future<Output = ()>,
    config: ServeConfig,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Without a timer hyper enforces no header timeout at all: a client
    // could hold a connection open forever with half a request head.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout);
    let graceful = GracefulShutdown::new();
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
                    tracing::info!("below the connection limit again");
                }
                permit
            }
            Err(_) => {
                if !std::mem::replace(&mut at_limit, true) {
                    tracing::warn!(
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
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Nagle would delay small streamed chunks by up to 40 ms.
        let _ = stream.set_nodelay(true);
        let mounts = mounts.clone();
        let service = service_fn(move |req| {
            let mounts = mounts.clone();
            async move { Ok::<_, Infallible>(dispatch(&mounts, req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        timeout = ?config.shutdown_timeout,
        "stopped accepting connections; waiting for in-flight requests"
    );
    match tokio::time::timeout(config.shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!("shutdown timeout reached; closing the remaining connections");
            false
        }
    }
}
