//! The accept loop and graceful shutdown.

use crate::dispatch::{dispatch, Mounts};
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Serves HTTP/1.1 and h2c on `listener` until `shutdown` resolves, then stops
/// accepting, lets open connections finish their in-flight requests for at most
/// `shutdown_timeout`, and returns. Returns `true` if every connection closed
/// in time.
pub async fn serve(
    listener: TcpListener,
    mounts: Arc<ArcSwap<Mounts>>,
    shutdown: impl Future<Output = ()>,
    shutdown_timeout: Duration,
) -> bool {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        timeout = ?shutdown_timeout,
        "stopped accepting connections; waiting for in-flight requests"
    );
    match tokio::time::timeout(shutdown_timeout, graceful.shutdown()).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!("shutdown timeout reached; closing the remaining connections");
            false
        }
    }
}
