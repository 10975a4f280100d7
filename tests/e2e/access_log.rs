//! The access log (`--access-log`): one JSON line per request, written when
//! its response has been sent, matching what the client saw.

use crate::support::{request, AppsDir, Client, Meshd};
use std::path::Path;
use std::time::{Duration, Instant};

/// The access log's lines once there are at least `count`, parsed as JSON.
fn wait_for_lines(path: &Path, count: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() >= count {
            return lines
                .iter()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{} access-log lines within 30 s, wanted {count}:\n{text}",
            lines.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// meshd on `apps`, logging in JSON with its access log at `log_path`.
fn with_access_log(apps: &AppsDir, log_path: &Path) -> Meshd {
    Meshd::builder(apps.path())
        .args(&[
            "--log-format",
            "json",
            "--access-log",
            log_path.to_str().expect("utf-8 path"),
        ])
        .start()
}

/// The one line whose `path` is `path`.
fn line_for<'a>(lines: &'a [serde_json::Value], path: &str) -> &'a serde_json::Value {
    let matching: Vec<_> = lines.iter().filter(|l| l["path"] == path).collect();
    assert_eq!(matching.len(), 1, "one line for {path} in {lines:#?}");
    matching[0]
}

#[tokio::test]
async fn every_request_gets_one_json_line_that_matches_what_the_client_saw() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let meshd = with_access_log(&apps, &log_path);

    let hello = Client::http1().get(&meshd.url("/hello/")).await;
    assert_eq!(hello.status, 200);
    let echo = Client::http2()
        .fetch(request(
            "POST",
            &meshd.url("/echo/a/b?token=secret"),
            crate::support::full("twelve bytes"),
        ))
        .await
        .expect("echo answers");
    assert_eq!(echo.status, 200);
    let missing = Client::http1().get(&meshd.url("/nope")).await;
    assert_eq!(missing.status, 404);
    let head = Client::http1()
        .fetch(request(
            "HEAD",
            &meshd.url("/hello/x"),
            crate::support::empty(),
        ))
        .await
        .expect("HEAD answers");
    assert_eq!(head.status, 200);

    let lines = wait_for_lines(&log_path, 4);
    assert_eq!(lines.len(), 4, "{lines:#?}");

    let line = line_for(&lines, "/hello/");
    assert_eq!(line["app"], "hello");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], hello.body.len() as u64);
    assert_eq!(line["complete"], true);
    assert_eq!(line["client"], "127.0.0.1");
    assert!(
        line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0),
        "{line}"
    );
    let version = line["version"].as_str().expect("a version");
    assert_eq!(version.len(), 12, "{line}");

    // The query is left out: it may carry secrets.
    let line = line_for(&lines, "/echo/a/b");
    assert!(!line.to_string().contains("secret"), "{line}");
    assert_eq!(line["app"], "echo");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], echo.body.len() as u64);

    // A HEAD answer has no body to send: it is complete without one.
    let line = line_for(&lines, "/hello/x");
    assert_eq!(line["method"], "HEAD");
    assert_eq!(line["bytes"], 0);
    assert_eq!(line["complete"], true);

    // meshd's own answers are logged too, with no app.
    let line = line_for(&lines, "/nope");
    assert_eq!(line["app"], "-");
    assert_eq!(line["status"], 404);
    assert_eq!(line["bytes"], missing.body.len() as u64);

    // Access lines stay out of meshd's own log on stderr.
    assert_eq!(meshd.count_log(&["/hello/", "\"status\":200"]), 0);
}

#[tokio::test]
async fn without_the_flag_there_is_no_access_log() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--log-format", "json"])
        .start();
    assert_eq!(Client::http1().get(&meshd.url("/hello/")).await.status, 200);
    assert_eq!(meshd.count_log(&["duration_ms"]), 0);
}

#[tokio::test]
async fn an_unwritable_access_log_path_fails_start_up_naming_it() {
    let apps = AppsDir::with(&["hello"]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--apps")
        .arg(apps.path())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--access-log",
            "/nonexistent-dir/access.log",
        ])
        .output()
        .expect("meshd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the access log /nonexistent-dir/access.log"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_response_cut_short_is_logged_as_incomplete() {
    let apps = AppsDir::with(&["stream"]);
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("access.log");
    let meshd = with_access_log(&apps, &log_path);
    // Forty lines 100 ms apart; the client goes away after the first. (A raw
    // socket: closing it with unread data resets the connection at once.)
    {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut socket = tokio::net::TcpStream::connect(meshd.addr())
            .await
            .expect("connect");
        socket
            .write_all(b"GET /stream/drip?chunks=40&ms=100 HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .expect("send the request");
        let mut received = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&received).contains("stream chunk 0") {
            let n = socket.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "meshd closed early: {}",
                String::from_utf8_lossy(&received)
            );
            received.extend_from_slice(&buf[..n]);
        }
        assert!(received.starts_with(b"HTTP/1.1 200"));
    }
    let lines = wait_for_lines(&log_path, 1);
    let line = line_for(&lines, "/stream/drip");
    assert_eq!(line["status"], 200);
    assert_eq!(line["complete"], false, "{line}");
}
