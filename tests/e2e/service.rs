//! Running under systemd (`Type=notify`): meshd says READY=1 once it serves,
//! STOPPING=1 when a graceful shutdown begins, and pings the watchdog when the
//! unit asks for it. The test plays systemd: it binds the notification socket
//! and reads what meshd sends.

use crate::support::{AppsDir, Client, Meshd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// The notification socket systemd would create, in a temporary directory.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set a read timeout");
        NotifySocket {
            socket,
            path,
            _dir: dir,
        }
    }

    /// The next message (its lines), or a panic after the read timeout.
    fn next(&self) -> Vec<String> {
        let mut buf = [0u8; 4096];
        let n = self
            .socket
            .recv(&mut buf)
            .expect("meshd sends a notification in time");
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Reads messages until one contains `line`; returns that message.
    fn wait_for(&self, line: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let message = self.next();
            if message.iter().any(|l| l == line) {
                return message;
            }
            assert!(Instant::now() < deadline, "no {line} within 60 s");
        }
    }
}

#[tokio::test]
async fn meshd_tells_systemd_it_is_ready_once_it_serves_and_when_it_stops() {
    let apps = AppsDir::with(&["hello"]);
    let notify = NotifySocket::bind();
    let mut meshd = Meshd::builder(apps.path())
        .env("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path"))
        .start();

    let ready = notify.wait_for("READY=1");
    let status = ready
        .iter()
        .find(|l| l.starts_with("STATUS="))
        .expect("a status line comes with READY=1");
    assert!(status.contains("serving 1 apps"), "{status}");
    // Ready means serving: the app answers now.
    let resp = Client::http1().get(&meshd.url("/hello/")).await;
    assert_eq!(resp.status, 200, "{}", resp.text());

    meshd.signal("TERM");
    notify.wait_for("STOPPING=1");
    assert!(meshd.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn meshd_pings_the_watchdog_when_the_unit_asks() {
    let apps = AppsDir::with(&["hello"]);
    let notify = NotifySocket::bind();
    let _meshd = Meshd::builder(apps.path())
        .env("NOTIFY_SOCKET", notify.path.to_str().expect("utf-8 path"))
        // WatchdogSec=1s: pings every half second.
        .env("WATCHDOG_USEC", "1000000")
        .start();
    notify.wait_for("READY=1");
    // Two pings, so they keep coming rather than being a one-off.
    notify.wait_for("WATCHDOG=1");
    notify.wait_for("WATCHDOG=1");
}
