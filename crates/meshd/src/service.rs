//! Telling a service manager (systemd, `Type=notify`) how meshd is doing:
//! ready once every app has been decided and the port is open, stopping when
//! a shutdown begins, and watchdog keep-alives if the unit asks for them.
//! Outside systemd (`NOTIFY_SOCKET` unset) every call is a no-op.

use sd_notify::NotifyState;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// meshd serves: the first load of the apps is decided and the listener is
/// open. `status` is the one-line status `systemctl status` shows.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A graceful shutdown has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight requests"),
    ]);
}

/// A graceful restart handed over to the process `pid`: it is the main
/// process of the unit now (systemd accepts this from the main process with
/// `NotifyAccess=main`).
pub fn handed_over(pid: u32) {
    send(&[
        NotifyState::MainPid(pid),
        NotifyState::Status(&format!(
            "handed over to pid {pid} (graceful restart); draining"
        )),
    ]);
}

/// If the unit sets `WatchdogSec=`, pings the watchdog at half its interval
/// from a task on the async runtime, so a runtime that stops making progress
/// is restarted by systemd. Ends with `shutdown`.
pub fn spawn_watchdog(shutdown: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (interval / 2).max(Duration::from_millis(100));
    tracing::info!(?interval, "systemd watchdog enabled");
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = ticks.tick() => send(&[NotifyState::Watchdog]),
                () = shutdown.cancelled() => return,
            }
        }
    });
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
