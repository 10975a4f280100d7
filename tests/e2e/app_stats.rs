//! `GET /v1/stats` and `GET /v1/apps/NAME/stats`, end to end: a real meshd,
//! real traffic (answers and traps), and the buckets the dashboard's charts
//! are drawn from.

use crate::support::admin::{Admin, TokenFile};
use crate::support::{shared_cache_dir, AppsDir, Client, Meshd};
use std::time::{Duration, Instant};

/// The sum of `app`'s `field` over the buckets of a stats answer.
fn total(stats: &serde_json::Value, app: &str, field: &str) -> u64 {
    stats["apps"][app][field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} for {app} in {stats:#}"))
        .iter()
        .map(|n| n.as_u64().expect("a count"))
        .sum()
}

#[tokio::test]
async fn requests_errors_and_latency_show_up_in_the_apps_buckets() {
    let apps = AppsDir::with(&["hello", "hostile"]);
    let token = TokenFile::new();
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0", "--admin-token-file", &token.arg()])
        .cache_dir(&shared_cache_dir())
        .start();
    let admin = Admin::of(&meshd);
    let client = Client::http1();
    for _ in 0..20 {
        assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);
    }
    for _ in 0..3 {
        assert_eq!(client.get(&meshd.url("/hostile/trap")).await.status, 500);
    }
    assert_eq!(client.get(&meshd.url("/hostile/ok")).await.status, 200);

    // The traffic lands in a bucket within two intervals (5 s each).
    let deadline = Instant::now() + Duration::from_secs(20);
    let stats = loop {
        let reply = admin.get("/v1/stats").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let stats = reply.json();
        // An app appears at the first interval that ends after it was
        // deployed: until then it is missing (not zero).
        let seen = |app: &str, at_least: u64| {
            stats["apps"][app]["requests"].is_array() && total(&stats, app, "requests") >= at_least
        };
        if seen("hello", 20) && seen("hostile", 4) {
            break stats;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic in the buckets: {stats:#}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(stats["interval_seconds"], 5);
    assert!(stats["end"].as_str().unwrap().ends_with('Z'), "{stats:#}");
    assert_eq!(total(&stats, "hello", "requests"), 20);
    assert_eq!(total(&stats, "hello", "errors"), 0);
    assert_eq!(total(&stats, "hostile", "requests"), 4);
    assert_eq!(total(&stats, "hostile", "errors"), 3);
    let hello = &stats["apps"]["hello"];
    let len = hello["requests"].as_array().unwrap().len();
    assert_eq!(
        stats["apps"]["hostile"]["requests"]
            .as_array()
            .unwrap()
            .len(),
        len
    );
    // Where there were requests there are latencies; elsewhere null.
    for (i, requests) in hello["requests"].as_array().unwrap().iter().enumerate() {
        let p50 = &hello["p50_ms"][i];
        let p99 = &hello["p99_ms"][i];
        if requests.as_u64() == Some(0) {
            assert!(p50.is_null() && p99.is_null(), "{hello:#}");
        } else {
            let (p50, p99) = (p50.as_f64().unwrap(), p99.as_f64().unwrap());
            assert!(p50 > 0.0 && p50 <= p99 && p99 <= 10_000.0, "{hello:#}");
        }
    }

    // One app, and only the newest buckets.
    let one = admin.get("/v1/apps/hostile/stats?last=1").await.json();
    assert_eq!(one["apps"].as_object().unwrap().len(), 1, "{one:#}");
    assert_eq!(
        one["apps"]["hostile"]["requests"].as_array().unwrap().len(),
        1
    );
    assert_eq!(admin.get("/v1/apps/nothing/stats").await.status, 404);
    assert_eq!(admin.get("/v1/stats?last=x").await.status, 400);
    assert_eq!(
        Admin::with_token(&meshd, None)
            .get("/v1/stats")
            .await
            .status,
        401
    );
}
