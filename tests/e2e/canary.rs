//! Canaries through the admin API: the split of the requests between the
//! live version and the canary (by weight, or by a sticky header), promote
//! and abort under load without a failed request, the refusals, and a
//! redeploy that ends a canary.

use crate::support::admin::Admin;
use crate::support::canary::{answered_by, assert_error, drip_by, Load, Tally};
use crate::support::{empty, guest, metric_sample, request, AppsDir, Client, Meshd};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Requests of each split test.
const N: usize = 1000;

/// The bytes of guest `name`.
fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("the guest is readable")
}

/// meshd with an empty apps directory and the admin API on loopback.
fn meshd_with_admin(apps: &AppsDir, extra: &[&str]) -> (Meshd, Admin) {
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0"])
        .args(extra)
        .start();
    let admin = Admin::with_token(&meshd, None);
    (meshd, admin)
}

/// Deploys guest `guest` as app `name` through the API; its version id.
async fn deploy(admin: &Admin, name: &str, guest_name: &str) -> String {
    let reply = admin.put_wasm(name, wasm(guest_name)).await;
    assert_eq!(reply.status, 201, "deploy {name}: {}", reply.text());
    reply.json()["version"]["id"]
        .as_str()
        .expect("a live version")
        .to_owned()
}

/// The access log's lines once at least `count` of them are about `app`,
/// parsed as JSON.
fn access_lines(path: &Path, app: &str, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
            })
            .filter(|line: &serde_json::Value| line["app"] == app)
            .collect();
        if lines.len() >= count {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} access-log lines of {app} within 30 s, wanted {count}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `n` GETs to `url` from 8 keep-alive HTTP/1.1 connections at once;
/// returns how many each guest answered. Every answer must be a 200 with
/// a whole body of one of the guests.
async fn send_many(url: &str, n: usize) -> BTreeMap<&'static str, usize> {
    const TASKS: usize = 8;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let client = Client::http1();
                let mut seen = Vec::new();
                for _ in (t..n).step_by(TASKS) {
                    let reply = client.get(&url).await;
                    assert_eq!(reply.status, 200, "{}", reply.text());
                    let by = answered_by(&reply.body)
                        .unwrap_or_else(|| panic!("a body of no guest: {:?}", reply.text()));
                    seen.push(by);
                }
                seen
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for task in tasks {
        for by in task.await.expect("a client task panicked") {
            *counts.entry(by).or_default() += 1;
        }
    }
    counts
}

/// Asserts that `k` canary answers out of `n` fit a split of `percent`.
///
/// The bound is 5 standard deviations of the binomial distribution:
/// |k - n·p| <= 5·sqrt(n·p·(1-p)). A fair split falls outside it with
/// probability < 1e-6 (the normal tail beyond 5 sigma is 5.7e-7; n·p >= 100
/// here, where the normal approximation holds), so this test does not
/// flake; a split that ignores the percent (e.g. 50% asked 10%: k = 500,
/// 47 allowed around 100) fails it.
fn assert_binomial(k: usize, n: usize, percent: u32) {
    let p = f64::from(percent) / 100.0;
    let expected = n as f64 * p;
    let bound = 5.0 * (n as f64 * p * (1.0 - p)).sqrt();
    assert!(
        (k as f64 - expected).abs() <= bound,
        "{k} of {n} requests went to a {percent}% canary: expected {expected} ± {bound:.1}"
    );
}

/// A canary at `percent` takes its share of N requests, and the app's
/// counters and the access log agree with what the clients saw.
async fn split_within_binomial_bound(percent: u32) {
    let apps = AppsDir::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let (meshd, admin) = meshd_with_admin(
        &apps,
        &[
            "--log-format",
            "json",
            "--access-log",
            log_path.to_str().expect("utf-8 path"),
        ],
    );
    let live_id = deploy(&admin, "app", "hello").await;
    let reply = admin
        .canary("app", &format!("percent={percent}"), &wasm("echo"))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let started = reply.json();
    assert_eq!(started["canary"]["percent"], percent, "{started}");
    assert_eq!(started["version"]["id"], live_id.as_str(), "{started}");
    let canary_id = started["canary"]["id"].as_str().expect("a canary id");
    assert_ne!(canary_id, live_id);
    meshd.wait_for_log(&["canary started", canary_id]);

    let counts = send_many(&meshd.url("/app/some/path"), N).await;
    let k = counts.get("echo").copied().unwrap_or(0);
    let live = counts.get("hello").copied().unwrap_or(0);
    assert_eq!(k + live, N, "{counts:?}");
    assert_binomial(k, N, percent);

    // The API counts each side's answers: they add up to N.
    let app = admin.app("app").await;
    assert_eq!(app["canary"]["percent"], percent, "{app}");
    assert_eq!(app["canary"]["id"], canary_id, "{app}");
    assert!(app["canary"]["sticky_header"].is_null(), "{app}");
    assert_eq!(app["canary"]["requests"]["2xx"], k, "{app}");
    assert_eq!(app["version"]["requests"]["2xx"], live, "{app}");
    for side in ["version", "canary"] {
        for class in ["1xx", "3xx", "4xx", "5xx"] {
            assert_eq!(app[side]["requests"][class], 0, "{side} {class}: {app}");
        }
    }

    // So do the metrics, with a `side` label.
    let metrics = admin.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    let metrics = metrics.text();
    for (side, version, count) in [("canary", canary_id, k), ("live", &live_id, live)] {
        let labels = [
            "app=\"app\"".to_owned(),
            format!("version=\"{version}\""),
            format!("side=\"{side}\""),
            "status=\"2xx\"".to_owned(),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        assert_eq!(
            metric_sample(&metrics, "meshd_requests_total", &labels),
            count as f64,
            "{side}"
        );
    }

    // One access-log line per request, naming its side and version.
    let lines = access_lines(&log_path, "app", N);
    assert_eq!(lines.len(), N);
    let on = |side: &str, version: &str| {
        lines
            .iter()
            .filter(|l| l["side"] == side && l["version"] == version && l["status"] == 200)
            .count()
    };
    assert_eq!(on("canary", canary_id), k);
    assert_eq!(on("live", &live_id), live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_at_10_percent_takes_its_share_of_1000_requests() {
    split_within_binomial_bound(10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_at_50_percent_takes_its_share_of_1000_requests() {
    split_within_binomial_bound(50).await;
}

/// The guest that answers each of `users` (10 requests each, with the
/// header `x-user: USER`); asserts that every user's 10 answers agree.
async fn sides_of_users(url: &str, users: &[String]) -> BTreeMap<String, &'static str> {
    let client = Client::http1();
    let mut sides = BTreeMap::new();
    for user in users {
        let mut seen = Vec::new();
        for _ in 0..10 {
            let mut req = request("GET", url, empty());
            req.headers_mut()
                .insert("x-user", user.parse().expect("a header value"));
            let reply = client.fetch(req).await.expect("the app answers");
            assert_eq!(reply.status, 200, "{}", reply.text());
            seen.push(answered_by(&reply.body).expect("a guest's body"));
        }
        assert!(
            seen.iter().all(|by| *by == seen[0]),
            "user {user} landed on both sides: {seen:?}"
        );
        sides.insert(user.clone(), seen[0]);
    }
    sides
}

#[tokio::test]
async fn a_sticky_header_keeps_each_user_on_one_side() {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &[]);
    // echo first, then hello: echo is a kept version, hello is live.
    let echo_id = deploy(&admin, "app", "echo").await;
    deploy(&admin, "app", "hello").await;
    let url = meshd.url("/app/");
    let users: Vec<String> = (0..50).map(|i| format!("user-{i}")).collect();

    // A new upload as the canary, the header in the query.
    let reply = admin
        .canary("app", "percent=50&sticky_header=x-user", &wasm("echo"))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["canary"]["id"], echo_id.as_str());
    assert_eq!(reply.json()["canary"]["sticky_header"], "x-user");
    let by_upload = sides_of_users(&url, &users).await;
    let on_canary = by_upload.values().filter(|by| **by == "echo").count();
    // 50 users at 50%: all on one side has probability 2^-49.
    assert!(
        (1..users.len()).contains(&on_canary),
        "{on_canary} of {} users on the canary: {by_upload:?}",
        users.len()
    );

    // The kept version as the canary, the header in the JSON body: the
    // side depends only on the header's value and the share, so every
    // user lands where they did before.
    let reply = admin.post("/v1/apps/app/abort").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = admin
        .post_json(
            "/v1/apps/app/canary",
            serde_json::json!({"version": echo_id, "percent": 50, "sticky_header": "x-user"}),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["canary"]["percent"], 50);
    assert_eq!(reply.json()["canary"]["sticky_header"], "x-user");
    let by_kept = sides_of_users(&url, &users).await;
    assert_eq!(by_kept, by_upload);
}

/// Which guests answered the requests completed in phase 0 (before the
/// canary was asked for).
fn guests_before_any_switch(tally: &Tally) -> Vec<&'static str> {
    let mut guests: Vec<_> = tally
        .answers
        .iter()
        .filter(|(_, done, _)| *done == 0)
        .map(|(_, _, g)| *g)
        .collect();
    guests.sort();
    guests.dedup();
    guests
}

/// Asserts that the load saw no failed request.
fn assert_no_failures(tally: &Tally) {
    assert!(
        tally.failures.is_empty(),
        "{} failed requests across the switches (of {} answered): {:?}",
        tally.failures.len(),
        tally.answers.len(),
        &tally.failures[..tally.failures.len().min(10)]
    );
}

/// Lines and pace of the slow request that spans a switch: 1.5 s in all.
const DRIP_CHUNKS: usize = 30;
const DRIP_PATH: &str = "/app/drip?chunks=30&ms=50";

/// A value of `x-user` whose requests the sticky split sends to `guest`.
async fn user_on(url: &str, guest_name: &str) -> String {
    let client = Client::http1();
    for i in 0..200 {
        let user = format!("user-{i}");
        let mut req = request("GET", url, empty());
        req.headers_mut()
            .insert("x-user", user.parse().expect("a header value"));
        let reply = client.fetch(req).await.expect("the app answers");
        if answered_by(&reply.body) == Some(guest_name) {
            return user;
        }
    }
    panic!("none of 200 users lands on {guest_name}");
}

/// Starts a slow `GET /app/drip` as `user` on a connection of its own and
/// waits until its head has arrived (it is in flight on its version);
/// the task returns its whole body.
async fn slow_request_in_flight(
    meshd: &Meshd,
    user: &str,
) -> tokio::task::JoinHandle<Result<bytes::Bytes, String>> {
    let mut req = request("GET", &meshd.url(DRIP_PATH), empty());
    req.headers_mut()
        .insert("x-user", user.parse().expect("a header value"));
    let (head_tx, head_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let resp = Client::http1_no_retries().send(req).await?;
        let status = resp.status();
        let _ = head_tx.send(status);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map(|body| body.to_bytes())
            .map_err(|e| format!("the body was cut: {e:?}"))
    });
    let status = head_rx.await.expect("the slow request's head arrives");
    assert_eq!(status, 200);
    task
}

/// Load on `app` (stream live), a canary (stream-v2, 50%, sticky on
/// `x-user`) started under it; returns the load in phase 2 (the canary
/// answered, both sides served) and both ids. Phase 1 is the canary's
/// start: asked, not yet answered (it may serve already).
async fn canary_under_load(meshd: &Meshd, admin: &Admin) -> (Load, String, String) {
    let live_id = deploy(admin, "app", "stream").await;
    let load = Load::start(meshd.url("/app/"), 6);
    load.wait_for(0, "stream", 50).await;
    assert_eq!(load.next_phase(), 1);
    let reply = admin
        .canary("app", "percent=50&sticky_header=x-user", &wasm("stream-v2"))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let canary_id = reply.json()["canary"]["id"]
        .as_str()
        .expect("a canary")
        .to_owned();
    assert_eq!(load.next_phase(), 2);
    // Requests without the sticky header are split at random.
    load.wait_for(2, "stream-v2", 100).await;
    load.wait_for(2, "stream", 100).await;
    (load, live_id, canary_id)
}

/// Promote (`promote`) or abort under load; `retired` is the side that
/// stops serving, `kept` the one that serves everything after.
async fn switch_under_load(action: &str) {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &[]);
    let (load, live_id, canary_id) = canary_under_load(&meshd, &admin).await;
    let (retired, retired_id, kept, kept_id) = match action {
        "promote" => ("stream", &live_id, "stream-v2", &canary_id),
        _ => ("stream-v2", &canary_id, "stream", &live_id),
    };
    // A slow request on the side that goes away, in flight at the switch.
    let user = user_on(&meshd.url("/app/"), retired).await;
    let slow = slow_request_in_flight(&meshd, &user).await;

    let reply = admin.post(&format!("/v1/apps/app/{action}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let after_switch = reply.json();
    assert_eq!(
        after_switch["version"]["id"],
        kept_id.as_str(),
        "{after_switch}"
    );
    assert!(after_switch["canary"].is_null(), "{after_switch}");
    let after = load.next_phase();
    load.wait_for(after, kept, 300).await;
    let tally = load.stop().await;

    assert_no_failures(&tally);
    assert_eq!(guests_before_any_switch(&tally), ["stream"]);
    // Every request sent once the switch was answered reached the version
    // that stays.
    assert_eq!(tally.guests_sent_from(after), [kept]);
    // The request in flight on the retired version finished whole there.
    let body = slow
        .await
        .expect("the slow request's task")
        .expect("the slow request completes");
    assert_eq!(
        drip_by(&body, DRIP_CHUNKS),
        Some(retired),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // The same user now lands on the version that stays.
    let mut req = request("GET", &meshd.url("/app/"), empty());
    req.headers_mut()
        .insert("x-user", user.parse().expect("a header value"));
    let reply = Client::http1().fetch(req).await.expect("the app answers");
    assert_eq!(answered_by(&reply.body), Some(kept));

    let said = if action == "promote" {
        "canary promoted"
    } else {
        "canary aborted"
    };
    meshd.wait_for_log(&[said, "app=app"]);
    let line = meshd.wait_for_log(&["old version drained and retired", retired_id]);
    // It waited for the slow request (and maybe some of the load's).
    let in_flight: usize = line
        .split("in_flight=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no in_flight count in {line}"));
    assert!(in_flight >= 1, "{line}");
    let app = admin.app("app").await;
    assert_eq!(app["version"]["id"], kept_id.as_str(), "{app}");
    assert!(app["canary"].is_null(), "{app}");
    assert_eq!(app["state"], "live", "{app}");
    // The kept versions (written in the background) mark the one that
    // stays live: a promoted canary is kept for rollback, an aborted one
    // is not.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let app = admin.app("app").await;
        let kept: Vec<(String, bool)> = app["kept"]
            .as_array()
            .expect("a kept list")
            .iter()
            .map(|k| (k["id"].as_str().unwrap().to_owned(), k["live"] == true))
            .collect();
        let expected = match action {
            "promote" => vec![(canary_id.clone(), true), (live_id.clone(), false)],
            _ => vec![(live_id.clone(), true)],
        };
        if kept == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept {kept:?}, wanted {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_a_canary_under_load_fails_no_request() {
    switch_under_load("promote").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborting_a_canary_under_load_fails_no_request() {
    switch_under_load("abort").await;
}

/// GETs `url` `n` times; asserts that `hello` answered every one.
async fn assert_all_hello(url: &str, n: usize) {
    let client = Client::http1();
    for _ in 0..n {
        let reply = client.get(url).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(answered_by(&reply.body), Some("hello"), "{}", reply.text());
    }
}

#[tokio::test]
async fn canaries_that_make_no_sense_or_fail_are_refused_and_the_live_version_serves() {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &["--health-timeout", "5s", "--settle", "50ms"]);
    let reply = admin.put_wasm("app", wasm("hello")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    // An upload read whole keeps its connection.
    assert_eq!(reply.headers.get("connection"), None);
    let live_id = reply.json()["version"]["id"].as_str().unwrap().to_owned();
    let url = meshd.url("/app/");

    // Promote or abort without a canary.
    for action in ["promote", "abort"] {
        let reply = admin.post(&format!("/v1/apps/app/{action}")).await;
        assert_error(&reply, 422, "no_canary");
        assert_eq!(reply.json()["error"]["app"], "app");
    }
    // No such app.
    let reply = admin.canary("nope", "percent=10", &wasm("echo")).await;
    assert_error(&reply, 404, "not_found");

    // A share of 0 or 100 percent is no canary: query and JSON forms.
    for percent in [0, 100] {
        let reply = admin
            .canary("app", &format!("percent={percent}"), &wasm("echo"))
            .await;
        assert_error(&reply, 400, "bad_request");
        // Refused before the upload was read: the connection cannot be
        // used again, and the answer says so (a keep-alive client would
        // otherwise send its next request on a closing connection).
        assert_eq!(
            reply.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..]),
            "{:?}",
            reply.headers
        );
        let reply = admin
            .post_json(
                "/v1/apps/app/canary",
                serde_json::json!({"version": live_id, "percent": percent}),
            )
            .await;
        assert_error(&reply, 400, "bad_request");
    }

    // The live version itself is no canary.
    let reply = admin.canary("app", "percent=10", &wasm("hello")).await;
    assert_error(&reply, 400, "bad_request");

    // An app with no live version has nothing to split with.
    let reply = admin.put_wasm("ghost", &b"garbage, not wasm"[..]).await;
    assert_error(&reply, 422, "invalid_component");
    let reply = admin.canary("ghost", "percent=10", &wasm("echo")).await;
    assert_error(&reply, 400, "bad_request");
    assert!(reply.text().contains("no live version"), "{}", reply.text());

    // An app of the apps directory is not the API's to try canaries on.
    apps.deploy("dirapp", "hello");
    meshd.wait_for_log(&["app deployed", "app=dirapp"]);
    let reply = admin.canary("dirapp", "percent=10", &wasm("echo")).await;
    assert_error(&reply, 422, "origin_conflict");

    // A canary must keep the route: a manifest that moves it is refused.
    let reply = admin
        .canary_with_manifest(
            "app",
            "percent=10",
            &wasm("echo"),
            "route = \"/elsewhere\"\n",
        )
        .await;
    assert_error(&reply, 400, "bad_request");
    assert!(reply.text().contains("route"), "{}", reply.text());
    assert_eq!(
        Client::http1().get(&meshd.url("/elsewhere/")).await.status,
        404
    );

    // A canary that fails its health check.
    let reply = admin
        .canary_with_manifest(
            "app",
            "percent=50",
            &wasm("stream"),
            "health = \"/status?code=503\"\n",
        )
        .await;
    assert_error(&reply, 422, "health_check");
    let message = reply.json()["error"]["message"].to_string();
    assert!(message.contains("503"), "{message}");
    meshd.wait_for_log(&["canary refused", "app=app"]);

    // Nothing started: the live version serves every request.
    let app = admin.app("app").await;
    assert!(app["canary"].is_null(), "{app}");
    assert_eq!(app["version"]["id"], live_id.as_str(), "{app}");
    assert_eq!(app["state"], "live", "{app}");
    // The refusal is the app's last error, as for a refused deploy.
    assert_eq!(app["last_error"]["kind"], "health_check", "{app}");
    assert_all_hello(&url, 200).await;
    assert_eq!(meshd.count_log(&["canary started"]), 0);
}

#[tokio::test]
async fn a_redeploy_during_a_canary_stops_it_and_serves_the_new_version() {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &[]);
    deploy(&admin, "app", "hello").await;
    let reply = admin.canary("app", "percent=50", &wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let canary_id = reply.json()["canary"]["id"]
        .as_str()
        .expect("a canary")
        .to_owned();

    let new_id = deploy(&admin, "app", "stream").await;
    meshd.wait_for_log(&["canary stopped", "app=app", &canary_id]);
    let app = admin.app("app").await;
    assert!(app["canary"].is_null(), "{app}");
    assert_eq!(app["version"]["id"], new_id.as_str(), "{app}");
    let client = Client::http1();
    for _ in 0..200 {
        let reply = client.get(&meshd.url("/app/")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(answered_by(&reply.body), Some("stream"), "{}", reply.text());
    }
    meshd.wait_for_log(&["old version drained and retired", &canary_id]);
    // With no canary left, promote and abort have nothing to do.
    assert_error(&admin.post("/v1/apps/app/promote").await, 422, "no_canary");
}

/// Stops `meshd` (TERM) and starts another on the same apps, data and
/// cache directories, with the admin API.
fn restart(meshd: Meshd, apps: &AppsDir, data: &Path, cache: &Path) -> (Meshd, Admin) {
    let mut meshd = meshd;
    meshd.signal("TERM");
    meshd.wait_exit(Duration::from_secs(30));
    drop(meshd);
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0"])
        .data_dir(data)
        .cache_dir(cache)
        .start();
    let admin = Admin::with_token(&meshd, None);
    (meshd, admin)
}

#[tokio::test]
async fn a_restart_keeps_a_promoted_canary_and_forgets_a_running_one() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let cache = tempfile::tempdir().expect("temp dir");
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0"])
        .data_dir(data.path())
        .cache_dir(cache.path())
        .start();
    let admin = Admin::with_token(&meshd, None);
    deploy(&admin, "app", "hello").await;
    let reply = admin.canary("app", "percent=30", &wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let echo_id = reply.json()["canary"]["id"].as_str().unwrap().to_owned();
    let reply = admin.post("/v1/apps/app/promote").await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The promoted canary is the live version after a restart.
    let (meshd, admin) = restart(meshd, &apps, data.path(), cache.path());
    meshd.wait_for_log(&["app deployed", "app=app", &echo_id]);
    let app = admin.app("app").await;
    assert_eq!(app["version"]["id"], echo_id.as_str(), "{app}");
    assert_eq!(
        answered_by(&Client::http1().get(&meshd.url("/app/")).await.body),
        Some("echo")
    );

    // A canary still on trial at the stop is not brought back: the live
    // version serves everything.
    let reply = admin.canary("app", "percent=50", &wasm("stream")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let (meshd, admin) = restart(meshd, &apps, data.path(), cache.path());
    meshd.wait_for_log(&["app deployed", "app=app", &echo_id]);
    let app = admin.app("app").await;
    assert_eq!(app["version"]["id"], echo_id.as_str(), "{app}");
    assert!(app["canary"].is_null(), "{app}");
    let client = Client::http1();
    for _ in 0..100 {
        let reply = client.get(&meshd.url("/app/")).await;
        assert_eq!(answered_by(&reply.body), Some("echo"), "{}", reply.text());
    }
}

#[tokio::test]
async fn a_second_canary_replaces_the_first() {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &[]);
    let live_id = deploy(&admin, "app", "hello").await;
    let reply = admin.canary("app", "percent=50", &wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let first = reply.json()["canary"]["id"].as_str().unwrap().to_owned();

    let reply = admin.canary("app", "percent=30", &wasm("stream")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let app = reply.json();
    let second = app["canary"]["id"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    assert_eq!(app["canary"]["percent"], 30, "{app}");
    assert_eq!(app["version"]["id"], live_id.as_str(), "{app}");
    meshd.wait_for_log(&["old version drained and retired", &first]);

    // The first canary serves nothing any more; the second takes its share.
    let counts = send_many(&meshd.url("/app/"), 400).await;
    assert_eq!(counts.get("echo"), None, "{counts:?}");
    let k = counts.get("stream").copied().unwrap_or(0);
    assert_binomial(k, 400, 30);
    assert_eq!(counts.get("hello").copied().unwrap_or(0) + k, 400);
}

#[tokio::test]
async fn a_rollback_or_a_removal_during_a_canary_ends_it() {
    let apps = AppsDir::new();
    let (meshd, admin) = meshd_with_admin(&apps, &[]);
    let first = deploy(&admin, "app", "hello").await;
    deploy(&admin, "app", "stream").await;
    let reply = admin.canary("app", "percent=50", &wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let canary_id = reply.json()["canary"]["id"].as_str().unwrap().to_owned();

    // Rollback: the version before the live one serves everything.
    let reply = admin.post("/v1/apps/app/rollback").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let app = reply.json();
    assert_eq!(app["version"]["id"], first.as_str(), "{app}");
    assert!(app["canary"].is_null(), "{app}");
    meshd.wait_for_log(&["canary stopped", &canary_id]);
    let counts = send_many(&meshd.url("/app/"), 100).await;
    assert_eq!(counts, BTreeMap::from([("hello", 100)]));

    // Removal during a canary: both versions go, the route answers 404.
    let reply = admin.canary("app", "percent=50", &wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let reply = admin.delete("app").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let client = Client::http1();
    for _ in 0..50 {
        assert_eq!(client.get(&meshd.url("/app/")).await.status, 404);
    }
    meshd.wait_for_log_count(&["old version drained and retired", &canary_id], 2);
}
