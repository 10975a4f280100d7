//! The metrics endpoint (`--metrics-listen`): per-app responses by status
//! class, latency, deploys, on a listener of its own.

use crate::support::{metric_sample as sample, AppsDir, Client, Meshd};

#[tokio::test]
async fn metrics_count_responses_per_app_and_status_class_and_deploys() {
    let apps = AppsDir::with(&["hello", "hostile"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--metrics-listen", "127.0.0.1:0"])
        .start();
    let metrics_url = meshd.metrics_url();

    let client = Client::http1();
    for _ in 0..3 {
        assert_eq!(client.get(&meshd.url("/hello/")).await.status, 200);
    }
    assert_eq!(client.get(&meshd.url("/hostile/trap")).await.status, 500);
    assert_eq!(client.get(&meshd.url("/hostile/ok")).await.status, 200);

    let reply = client.get(&metrics_url).await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = reply.text();
    let hello = "app=\"hello\"";
    let hostile = "app=\"hostile\"";
    assert_eq!(
        sample(&text, "meshd_requests_total", &[hello, "status=\"2xx\""]),
        3.0
    );
    assert_eq!(
        sample(&text, "meshd_requests_total", &[hello, "status=\"5xx\""]),
        0.0
    );
    assert_eq!(
        sample(&text, "meshd_requests_total", &[hostile, "status=\"5xx\""]),
        1.0
    );
    assert_eq!(
        sample(&text, "meshd_requests_total", &[hostile, "status=\"2xx\""]),
        1.0
    );
    assert_eq!(
        sample(&text, "meshd_request_duration_seconds_count", &[hello]),
        3.0
    );
    assert_eq!(
        sample(
            &text,
            "meshd_request_duration_seconds_bucket",
            &[hello, "le=\"+Inf\""]
        ),
        3.0
    );
    assert_eq!(sample(&text, "meshd_requests_in_flight", &[hello]), 0.0);
    assert_eq!(sample(&text, "meshd_apps_mounted", &[]), 2.0);
    assert_eq!(
        sample(&text, "meshd_deploys_total", &["result=\"deployed\""]),
        2.0
    );
    assert_eq!(
        sample(&text, "meshd_deploys_total", &["result=\"refused\""]),
        0.0
    );

    // Nothing else is served there, and the apps are not.
    let other = client.get(&format!("{metrics_url}/hello/")).await;
    assert_eq!(other.status, 404);
}
