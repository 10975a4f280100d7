//! Graceful shutdown: SIGTERM/SIGINT stop accepting, let in-flight requests
//! finish (bounded by --shutdown-timeout) and exit 0.

use crate::support::{count_body, empty, request, AppsDir, Client, Meshd};
use std::time::Duration;

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_zero() {
    let apps = AppsDir::with(&["stream"]);
    let mut meshd = Meshd::start(apps.path());
    let client = Client::http1();

    // Six lines, 250 ms apart: the head arrives at once, the body later.
    let resp = client
        .send(request(
            "GET",
            &meshd.url("/stream/drip?chunks=6&ms=250"),
            empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    meshd.signal("TERM");
    meshd.wait_for_log(&["stopped accepting connections"]);

    // New connections are refused while the old one finishes.
    assert!(tokio::net::TcpStream::connect(meshd.addr()).await.is_err());

    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("the in-flight body completes")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(text.ends_with("stream chunk 5\n"), "{text}");

    let status = meshd.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    meshd.wait_for_log(&["meshd stopped", "all_closed=true"]);
}

#[tokio::test]
async fn sigint_is_graceful_too() {
    let apps = AppsDir::with(&["stream"]);
    let mut meshd = Meshd::start(apps.path());
    let client = Client::http1();
    let resp = client
        .send(request(
            "GET",
            &meshd.url("/stream/drip?chunks=3&ms=200"),
            empty(),
        ))
        .await
        .unwrap();
    meshd.signal("INT");
    assert_eq!(
        count_body(resp.into_body()).await.unwrap(),
        3 * "stream chunk 0\n".len() as u64
    );
    assert!(meshd.wait_exit(Duration::from_secs(30)).success());
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_wait_for_a_stuck_request() {
    let apps = AppsDir::with(&["stream"]);
    let mut meshd = Meshd::builder(apps.path())
        .args(&["--shutdown-timeout", "1s"])
        .start();
    let client = Client::http1();
    let slow = tokio::spawn({
        let url = meshd.url("/stream/slow?ms=60000");
        async move { client.fetch(request("GET", &url, empty())).await }
    });
    // Wait until the request is inside the guest.
    meshd
        .wait_for_log_async(&["app=stream", "slow request started"])
        .await;
    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    meshd.wait_for_log(&["shutdown timeout reached"]);
    meshd.wait_for_log(&["meshd stopped", "all_closed=false"]);
    assert!(
        slow.await.unwrap().is_err(),
        "the stuck request was cut off"
    );
}
