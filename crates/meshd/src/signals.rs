//! Unix signals: SIGINT and SIGTERM shut down gracefully, SIGHUP rescans the
//! apps directory.

use anyhow::{Context as _, Result};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What the process has been told to do.
pub struct Signals {
    /// Cancelled on the first SIGINT or SIGTERM.
    pub shutdown: CancellationToken,
    /// Yields once per SIGHUP.
    pub rescan: mpsc::Receiver<()>,
}

impl Signals {
    /// Installs the handlers. Must be called inside the tokio runtime.
    pub fn install() -> Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let shutdown = CancellationToken::new();
        let (rescan_tx, rescan) = mpsc::channel(1);
        {
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let name = tokio::select! {
                    _ = interrupt.recv() => "SIGINT",
                    _ = terminate.recv() => "SIGTERM",
                };
                tracing::info!("{name} received; shutting down gracefully");
                shutdown.cancel();
            });
        }
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                // A full channel means a rescan is already queued.
                let _ = rescan_tx.try_send(());
            }
        });
        Ok(Signals { shutdown, rescan })
    }
}
