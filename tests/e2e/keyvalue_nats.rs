//! wasi:keyvalue on NATS JetStream (`[keyvalue] backend = "nats"`): two
//! meshd nodes share one store per tenant.

use crate::support::{AppsDir, Client, Meshd};
use meshd_testkit::NatsServer;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

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
