//! wasi:keyvalue on NATS JetStream (`[keyvalue] backend = "nats"`): two
//! meshd nodes share one store per tenant.

use crate::support::{AppsDir, Client, Meshd, TestPki};
use meshd_testkit::NatsServer;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A meshd.toml in `dir` that keeps key-value data in the NATS at `url`.
fn nats_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("meshd.toml");
    std::fs::write(
        &path,
        format!("[keyvalue]\nbackend = \"nats\"\nurl = \"{url}\"\n"),
    )
    .unwrap();
    path
}

fn node(apps: &AppsDir, config: &Path) -> Meshd {
    Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .start()
}

/// Clients increment the `counter` app through both nodes at once: every
/// increment answers a distinct number, and both nodes end on the exact
/// total.
#[tokio::test]
async fn two_nodes_count_exactly_on_one_nats_store() {
    let nats = NatsServer::start();
    let apps = AppsDir::with(&["counter"]);
    let dir = tempfile::tempdir().unwrap();
    let config = nats_config(dir.path(), &nats.url());
    let nodes = [node(&apps, &config), node(&apps, &config)];
    for meshd in &nodes {
        meshd.wait_for_log(&["key-value bucket ready in NATS JetStream"]);
    }
    const CLIENTS: usize = 8;
    const EACH: usize = 50;
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let urls: Vec<String> = nodes.iter().map(|m| m.url("/counter/incr")).collect();
        clients.spawn(async move {
            let client = Client::http1();
            let mut answers = Vec::new();
            for i in 0..EACH {
                // Alternate between the nodes, as a load balancer would.
                let reply = client.post(&urls[(c + i) % 2], "").await;
                assert_eq!(reply.status, 200, "{}", reply.text());
                answers.push(reply.text().parse::<u64>().unwrap());
            }
            answers
        });
    }
    let mut all = BTreeSet::new();
    while let Some(answers) = clients.join_next().await {
        for n in answers.unwrap() {
            assert!(all.insert(n), "{n} was answered twice");
        }
    }
    let total = (CLIENTS * EACH) as u64;
    assert_eq!(all, (1..=total).collect::<BTreeSet<u64>>());
    let client = Client::http1();
    for meshd in &nodes {
        assert_eq!(
            client.get(&meshd.url("/counter")).await.text(),
            total.to_string()
        );
    }
}

/// A node started while NATS is down serves its apps; those that use
/// key-value get a clear error until NATS is up, and then work.
#[tokio::test]
async fn a_node_starts_and_serves_while_nats_is_down() {
    let mut nats = NatsServer::start();
    nats.stop();
    let apps = AppsDir::with(&["counter", "hello"]);
    let dir = tempfile::tempdir().unwrap();
    let meshd = node(&apps, &nats_config(dir.path(), &nats.url()));
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);
    let reply = client.post(&meshd.url("/counter/incr"), "").await;
    assert_eq!(reply.status, 500);
    let expected = format!("not connected to NATS at 127.0.0.1:{}", nats.port());
    assert!(reply.text().contains(&expected), "{}", reply.text());
    nats.resume();
    meshd.wait_for_log(&["key-value bucket ready in NATS JetStream"]);
    let reply = client.post(&meshd.url("/counter/incr"), "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "1");
}

/// A nats-server that speaks only TLS, with `pki`'s server certificate, and
/// asks clients for a certificate `pki`'s CA signed. Killed when dropped.
struct TlsNats {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsNats {
    fn start(pki: &TestPki) -> TlsNats {
        let dir = tempfile::tempdir().unwrap();
        pki.write_to(dir.path());
        let port = meshd_testkit::free_port();
        let file = |name: &str| dir.path().join(name);
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(file("jetstream"))
            .args(["--tlsverify", "--tlscert"])
            .arg(file("server.pem"))
            .arg("--tlskey")
            .arg(file("server.key"))
            .arg("--tlscacert")
            .arg(file("ca.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed (.ci/run installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsNats {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ca_file`, `client_cert_file` and `client_key_file` reach NATS: with
/// them meshd counts over TLS; without the client certificate the server
/// refuses it, and key-value calls say they are not connected.
#[tokio::test]
async fn nats_over_tls_with_a_private_ca_and_a_client_certificate() {
    let pki = TestPki::new();
    let nats = TlsNats::start(&pki);
    let dir = tempfile::tempdir().unwrap();
    pki.write_to(dir.path());
    let keyvalue = format!(
        "[keyvalue]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nca_file = \"ca.pem\"\n",
        nats.port
    );
    let config = dir.path().join("meshd.toml");
    std::fs::write(
        &config,
        format!("{keyvalue}client_cert_file = \"client.pem\"\nclient_key_file = \"client.key\"\n"),
    )
    .unwrap();
    let apps = AppsDir::with(&["counter"]);
    let meshd = node(&apps, &config);
    meshd.wait_for_log(&["key-value bucket ready in NATS JetStream"]);
    let client = Client::http1();
    for n in 1..=3 {
        let reply = client.post(&meshd.url("/counter/incr"), "").await;
        assert_eq!(reply.text(), n.to_string());
    }
    drop(meshd);

    std::fs::write(&config, keyvalue).unwrap();
    let meshd = node(&apps, &config);
    // The handshake fails (the server wants a client certificate).
    meshd.wait_for_log(&["key-value store NATS connection: client error"]);
    let reply = client.post(&meshd.url("/counter/incr"), "").await;
    assert_eq!(reply.status, 500);
    assert!(
        reply
            .text()
            .contains(&format!("not connected to NATS at 127.0.0.1:{}", nats.port)),
        "{}",
        reply.text()
    );
}
