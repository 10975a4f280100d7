//! Unix signals: SIGINT and SIGTERM shut down gracefully, SIGHUP rescans the
//! apps directory, SIGUSR2 restarts meshd gracefully (crate::handover).

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
    /// Yields once per SIGUSR2 (handled from the start, so that an early
    /// one is not the default action: terminate).
    pub restart: mpsc::Receiver<()>,
}

impl Signals {
    /// Installs the handlers. Must be called inside the tokio runtime.
    pub fn install() -> Result<Self> {
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
        let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        let mut user2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
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
        let (restart_tx, restart) = mpsc::channel(1);
        tokio::spawn(async move {
            while user2.recv().await.is_some() {
                tracing::info!("SIGUSR2 received: graceful restart");
                // A full channel means a restart is already queued.
                let _ = restart_tx.try_send(());
            }
        });
        Ok(Signals {
            shutdown,
            rescan,
            restart,
        })
    }
}
