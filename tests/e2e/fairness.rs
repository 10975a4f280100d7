//! The scheduler (crates/meshd-tenant/src/scheduler.rs): with no manifest
//! settings, short requests go ahead of long ones, and long ones still run
//! and stop at their deadlines.

use crate::isolation::hello_beside_a_spinner;
use crate::support::{metric_sample, spawn_get, AppsDir, Client, Meshd};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_requests_give_way_to_short_ones_and_still_run_to_their_deadline() {
    // Only a deadline: no cpu limit, no weight.
    let (_apps, meshd) = hello_beside_a_spinner("[limits]\ntimeout = \"2s\"\n");
    let metrics_url = meshd.metrics_url();
    let client = Client::http1();

    // Two guests spinning until their deadline, as many as meshd has
    // workers, while four clients keep asking hello.
    let spinners: Vec<_> = (0..2).map(|_| spawn_get(meshd.url("/spin/spin"))).collect();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let client = client.clone();
            let url = meshd.url("/hello");
            let spinning = spinners
                .iter()
                .map(|s| s.abort_handle())
                .collect::<Vec<_>>();
            tokio::spawn(async move {
                let mut served = 0;
                while spinning.iter().any(|s| !s.is_finished()) {
                    let reply = client.get(&url).await;
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    served += 1;
                }
                served
            })
        })
        .collect();
    for spinner in spinners {
        let reply = spinner.await.unwrap().unwrap();
        assert_eq!(reply.status, 504);
        assert!(
            reply.text().contains("did not answer within 2000 ms"),
            "{}",
            reply.text()
        );
    }
    let mut served = 0;
    for caller in callers {
        served += caller.await.unwrap();
    }
    assert!(
        served >= 20,
        "only {served} hello requests while two guests spun"
    );

    let text = client.get(&metrics_url).await.text();
    eprintln!(
        "{}",
        text.lines()
            .filter(|l| l.contains("guest") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let spin = "app=\"spin\"";
    let hello = "app=\"hello\"";
    // The long requests were held back for short ones, and ran meanwhile.
    let gave_way = metric_sample(&text, "meshd_guest_gave_way_seconds_total", &[spin]);
    assert!(gave_way > 0.0, "spin never gave way");
    let ran = metric_sample(&text, "meshd_guest_run_seconds_total", &[spin]);
    assert!(ran > 0.1, "spin ran only {ran} s in 2 s");
    // Short requests never wait, and without a cpu limit nobody is capped.
    assert_eq!(
        metric_sample(&text, "meshd_guest_gave_way_seconds_total", &[hello]),
        0.0
    );
    for app in [spin, hello] {
        assert_eq!(
            metric_sample(&text, "meshd_guest_cpu_wait_seconds_total", &[app]),
            0.0,
            "{app}"
        );
    }
    meshd.wait_for_log(&["request timed out", "app=spin"]);
    assert_eq!(client.get(&meshd.url("/spin/ok")).await.text(), "ok");
}

#[tokio::test]
async fn cpu_weight_out_of_range_or_above_the_ceiling_is_refused_naming_the_app() {
    let apps = AppsDir::with(&["hello"]);
    apps.deploy("heavy", "hostile");
    apps.write("heavy.toml", "[limits]\ncpu_weight = 2\n");
    apps.deploy("greedy", "hostile");
    apps.write("greedy.toml", "[limits]\ncpu_weight = 1000\n");
    apps.deploy("pushy", "hostile");
    apps.write("pushy.toml", "[limits]\ncpu_weight = 4\n");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), "[ceiling]\ncpu_weight = 2\n").unwrap();
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.path().to_str().unwrap()])
        .start();
    let line = meshd.wait_for_log(&["greedy.toml", "cpu_weight"]);
    assert!(line.contains("between 0.01 and 100"), "{line}");
    let line = meshd.wait_for_log(&["app=pushy", "app not loaded", "limits.cpu_weight"]);
    assert!(
        line.contains("4 is above the operator's ceiling of 2"),
        "{line}"
    );
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/greedy/ok")).await.status, 404);
    assert_eq!(client.get(&meshd.url("/pushy/ok")).await.status, 404);
    assert_eq!(client.get(&meshd.url("/heavy/ok")).await.text(), "ok");
}
