//! Instance reuse (`reuse = N` in the manifest): off by default; when on, one
//! instance serves up to N requests of its app, one after another.

use crate::support::{wait_until_no_request_in_flight, AppsDir, Client, Meshd, MeshdBuilder};

/// What `/seen` answers to `requests` requests one after another: how many
/// requests the instance serving each had served. Each waits until the one
/// before it is done on the guest's side too, so that its instance, if it
/// may serve more, is parked by then.
async fn seen_sequence(meshd: &Meshd, app: &str, requests: usize) -> Vec<String> {
    let client = Client::http1();
    let mut seen = Vec::new();
    for _ in 0..requests {
        wait_until_no_request_in_flight(meshd, app).await;
        seen.push(client.get(&meshd.url(&format!("/{app}/seen"))).await.text());
    }
    seen
}

/// A meshd on `apps` with the metrics `seen_sequence` watches.
fn with_metrics(builder: MeshdBuilder) -> Meshd {
    builder.args(&["--metrics-listen", "127.0.0.1:0"]).start()
}

#[tokio::test]
async fn every_request_gets_a_fresh_instance_by_default() {
    let apps = AppsDir::with(&["hostile"]);
    let meshd = with_metrics(Meshd::builder(apps.path()));
    assert_eq!(
        seen_sequence(&meshd, "hostile", 4).await,
        ["1", "1", "1", "1"]
    );
}

#[tokio::test]
async fn reuse_serves_up_to_n_requests_per_instance() {
    let apps = AppsDir::new();
    apps.deploy("warm", "hostile");
    apps.write("warm.toml", "reuse = 3\n");
    apps.deploy("cold", "hostile");
    let meshd = with_metrics(Meshd::builder(apps.path()));
    // Sequential requests: one instance serves three, then a fresh one.
    assert_eq!(
        seen_sequence(&meshd, "warm", 7).await,
        ["1", "2", "3", "1", "2", "3", "1"]
    );
    // Another app's instances are its own.
    assert_eq!(seen_sequence(&meshd, "cold", 2).await, ["1", "1"]);
}

#[tokio::test]
async fn a_failed_instance_is_never_reused() {
    let apps = AppsDir::new();
    apps.deploy("warm", "hostile");
    apps.write("warm.toml", "reuse = 100\n");
    let meshd = with_metrics(Meshd::builder(apps.path()));
    let client = Client::http1();
    assert_eq!(seen_sequence(&meshd, "warm", 2).await, ["1", "2"]);
    // The trap ends that instance (it was taken from the idle pool)...
    assert_eq!(client.get(&meshd.url("/warm/trap")).await.status, 500);
    // ...so the next request starts from a fresh one.
    assert_eq!(seen_sequence(&meshd, "warm", 2).await, ["1", "2"]);
}

#[tokio::test]
async fn an_idle_reused_instance_is_dropped_after_the_idle_timeout() {
    let apps = AppsDir::new();
    apps.deploy("warm", "hostile");
    apps.write("warm.toml", "reuse = 100\n");
    let meshd = with_metrics(Meshd::builder(apps.path()).args(&["--reuse-idle-timeout", "300ms"]));
    assert_eq!(seen_sequence(&meshd, "warm", 2).await, ["1", "2"]);
    // Idle for more than the timeout (checked every 150 ms): the parked
    // instance is gone, and the next request starts a fresh one.
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(seen_sequence(&meshd, "warm", 2).await, ["1", "2"]);
}
