//! `GET /v1/apps/NAME/logs`, end to end: a real meshd whose guests write to
//! stdout (the `hostile` fixture's `/shout`) and through wasi:logging (the
//! `platform` fixture's `/log`), read back as JSON and followed as
//! server-sent events, including a follower that does not read.

use crate::support::admin::{Admin, TokenFile, TOKEN};
use crate::support::{shared_cache_dir, AppsDir, Client, Meshd};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// meshd serving the `hostile` and `platform` fixtures, its admin API on
/// loopback, with no limit on how fast guests may log (so every line
/// shouted reaches the ring).
fn start(apps: &AppsDir, token: &TokenFile) -> Meshd {
    Meshd::builder(apps.path())
        .args(&[
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token.arg(),
            "--guest-log-rate",
            "0",
            "--write-timeout",
            "120s",
        ])
        .cache_dir(&shared_cache_dir())
        .start()
}

fn texts(logs: &serde_json::Value) -> Vec<String> {
    logs["lines"]
        .as_array()
        .unwrap_or_else(|| panic!("no lines in {logs:#}"))
        .iter()
        .map(|l| l["text"].as_str().expect("a text").to_owned())
        .collect()
}

/// `GET path` on the admin API, which must answer 200 with JSON.
async fn logs(admin: &Admin, path: &str) -> serde_json::Value {
    let reply = admin.get(path).await;
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.json()
}

#[tokio::test]
async fn an_apps_stdout_and_wasi_logging_lines_are_kept_and_read_after_a_number() {
    let apps = AppsDir::with(&["hostile", "platform"]);
    let token = TokenFile::new();
    let meshd = start(&apps, &token);
    let admin = Admin::of(&meshd);
    let client = Client::http1();

    let empty = logs(&admin, "/v1/apps/hostile/logs").await;
    assert_eq!(empty["lines"], serde_json::json!([]), "{empty:#}");
    assert_eq!(empty["last"], 0);

    let reply = client.get(&meshd.url("/hostile/shout?lines=3")).await;
    assert_eq!(reply.text(), "shouted 3");
    let all = logs(&admin, "/v1/apps/hostile/logs").await;
    assert_eq!(texts(&all), ["shout 0", "shout 1", "shout 2"], "{all:#}");
    assert_eq!(all["lines"][0]["stream"], "stdout");
    assert_eq!(all["lines"][0]["seq"], 1);
    assert_eq!(all["lines"][2]["seq"], 3);
    assert_eq!(all["missed"], 0);
    assert_eq!(all["last"], 3);
    let newer = logs(&admin, "/v1/apps/hostile/logs?after=2").await;
    assert_eq!(texts(&newer), ["shout 2"]);
    let limited = logs(&admin, "/v1/apps/hostile/logs?limit=1").await;
    assert_eq!(
        (texts(&limited), &limited["last"]),
        (vec!["shout 0".to_owned()], &serde_json::json!(1))
    );

    // wasi:logging, with its level and context; and each app has its own log.
    let reply = client
        .post(&meshd.url("/platform/log?level=warn"), "careful now")
        .await;
    assert_eq!(reply.text(), "logged");
    let platform = logs(&admin, "/v1/apps/platform/logs").await;
    assert_eq!(texts(&platform), ["careful now"], "{platform:#}");
    let line = &platform["lines"][0];
    assert_eq!(line["stream"], "logging");
    assert_eq!(line["level"], "warn");
    assert_eq!(line["context"], "platform-fixture");
    assert!(line["at"].as_str().unwrap().ends_with('Z'), "{line}");
    assert_eq!(texts(&logs(&admin, "/v1/apps/hostile/logs").await).len(), 3);

    // The ring keeps the last 1,000 lines and says how many it no longer has.
    let reply = client.get(&meshd.url("/hostile/shout?lines=1500")).await;
    assert_eq!(reply.text(), "shouted 1500");
    let ring = logs(&admin, "/v1/apps/hostile/logs").await;
    let kept = texts(&ring);
    assert_eq!(kept.len(), 1000);
    assert_eq!(kept[0], "shout 500");
    assert_eq!(kept[999], "shout 1499");
    assert_eq!(ring["missed"], 503);
    assert_eq!(ring["last"], 1503);

    // The app must exist, the query must make sense, and the token is needed.
    assert_eq!(admin.get("/v1/apps/nothing/logs").await.status, 404);
    assert_eq!(admin.get("/v1/apps/hostile/logs?after=x").await.status, 400);
    assert_eq!(
        admin.get("/v1/apps/hostile/logs?follow=maybe").await.status,
        400
    );
    let stranger = Admin::with_token(&meshd, None);
    assert_eq!(stranger.get("/v1/apps/hostile/logs").await.status, 401);
}

/// A raw HTTP/1.1 request for the events of `app`'s log, on a socket with a
/// small receive buffer (so a client that does not read soon stops the
/// server from sending).
async fn follow(admin_url: &str, app: &str) -> tokio::net::TcpStream {
    let addr: std::net::SocketAddr = admin_url
        .trim_start_matches("http://")
        .parse()
        .expect("the admin address");
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket.set_recv_buffer_size(4096).expect("a small buffer");
    let mut stream = socket
        .connect(addr)
        .await
        .expect("connect to the admin API");
    let head = format!(
        "GET /v1/apps/{app}/logs HTTP/1.1\r\nHost: admin\r\nAccept: text/event-stream\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

/// Reads `stream` until what was read contains `needle`; returns it all.
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = vec![0; 64 * 1024];
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let read = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within 30 s; read so far: {}", tail(seen)))
            .expect("read the events");
        assert!(
            read > 0,
            "the stream ended before {needle:?}: {}",
            tail(seen)
        );
        seen.push_str(&String::from_utf8_lossy(&buf[..read]));
    }
}

fn tail(text: &str) -> &str {
    let start = text.len().saturating_sub(2000);
    text.get(start..).unwrap_or(text)
}

#[tokio::test]
async fn a_follower_gets_each_line_as_it_comes_and_a_slow_one_a_gap_without_holding_the_guest() {
    let apps = AppsDir::with(&["hostile"]);
    let token = TokenFile::new();
    let meshd = start(&apps, &token);
    let client = Client::http1();
    let admin_url = meshd.admin_url();

    let mut live = follow(&admin_url, "hostile").await;
    let mut seen = String::new();
    read_until(&mut live, &mut seen, ": following").await;
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(
        seen.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{seen}"
    );
    let reply = client.get(&meshd.url("/hostile/shout?lines=2")).await;
    assert_eq!(reply.text(), "shouted 2");
    read_until(&mut live, &mut seen, "\"text\":\"shout 1\"").await;
    assert!(
        seen.contains("id: 1\nevent: line\ndata: {\"seq\":1,"),
        "{seen}"
    );
    assert!(!seen.contains("event: gap"), "{seen}");

    // A follower that does not read: the guest is not held back (every
    // shout is answered), and when the follower reads again it is told how
    // many lines it missed, then gets the newest ones.
    let mut slow = follow(&admin_url, "hostile").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..10 {
        let reply = client.get(&meshd.url("/hostile/shout?lines=5000")).await;
        assert_eq!(reply.text(), "shouted 5000");
    }
    let mut slow_seen = String::new();
    // The last line: 2 shouted before, then 50,000.
    read_until(&mut slow, &mut slow_seen, "id: 50002\n").await;
    assert!(
        slow_seen.contains("event: gap\ndata: {\"missed\":"),
        "{}",
        tail(&slow_seen)
    );
    read_until(&mut live, &mut seen, "id: 50002\n").await;
}

#[tokio::test]
async fn followers_are_capped_and_end_when_meshd_shuts_down() {
    let apps = AppsDir::with(&["hostile"]);
    let token = TokenFile::new();
    let mut meshd = start(&apps, &token);
    let admin_url = meshd.admin_url();

    let mut followers = Vec::new();
    for _ in 0..meshd_admin::MAX_FOLLOWERS {
        let mut stream = follow(&admin_url, "hostile").await;
        let mut seen = String::new();
        read_until(&mut stream, &mut seen, ": following").await;
        followers.push(stream);
    }
    let admin = Admin::of(&meshd);
    let busy = admin.get("/v1/apps/hostile/logs?follow=1").await;
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(busy.json()["error"]["kind"], "busy");
    // Reading without following still works.
    assert_eq!(admin.get("/v1/apps/hostile/logs").await.status, 200);
    // A follower that leaves gives its place back.
    drop(followers.pop());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = follow(&admin_url, "hostile").await;
        let mut seen = String::new();
        let mut buf = vec![0; 4096];
        let read = stream.read(&mut buf).await.expect("read");
        seen.push_str(&String::from_utf8_lossy(&buf[..read]));
        if seen.starts_with("HTTP/1.1 200") {
            followers.push(stream);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the place was not given back: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Open streams do not hold meshd's shutdown up: meshd exits at once,
    // not after the shutdown timeout (30 s), and the streams end. (That the
    // admin API itself ends its streams at shutdown is tested on its own in
    // crates/meshd-admin/tests/serve.rs: meshd also stops waiting for the
    // admin listener when it exits.)
    let started = Instant::now();
    meshd.signal("TERM");
    let status = tokio::task::spawn_blocking(move || meshd.wait_exit(Duration::from_secs(20)))
        .await
        .expect("wait for meshd");
    assert!(status.success(), "{status:?}");
    for mut stream in followers {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
            .await
            .expect("the stream ends")
            .ok();
    }
    println!(
        "meshd exited {:?} after TERM with 8 followers",
        started.elapsed()
    );
}
