//! Clients that do not read, connections that do nothing, and memory that
//! piles up: an app's concurrency and instance slots belong to its guests,
//! not to its slow readers; a response nobody takes is dropped after
//! `--write-timeout`; idle connections close after `--idle-timeout`; guest
//! memory stops at `--max-total-memory`; the metrics listener has the front
//! door's protections.

use crate::support::{metric_sample, AppsDir, Client, Meshd};
use bytes::Bytes;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Upper bound on waiting for something meshd must do (close a connection,
/// free a slot): generous, so a loaded machine does not fail the test.
const BOUND: Duration = Duration::from_secs(30);

/// An h2c connection whose client announces `window` bytes of stream window:
/// 0 means the server may send headers but no body at all.
async fn h2_connect(
    addr: SocketAddr,
    window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(window)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("h2 handshake");
    (client, tokio::spawn(conn))
}

/// Opens `n` streams of `GET url` and waits for every response head.
async fn h2_heads(
    client: &mut h2::client::SendRequest<Bytes>,
    url: &str,
    n: usize,
) -> Vec<http::Response<h2::RecvStream>> {
    let mut pending = Vec::new();
    for _ in 0..n {
        *client = client.clone().ready().await.expect("h2 ready");
        let req = http::Request::get(url).body(()).expect("request");
        let (resp, _) = client.send_request(req, true).expect("send request");
        pending.push(resp);
    }
    let mut heads = Vec::new();
    for resp in pending {
        heads.push(resp.await.expect("response head"));
    }
    heads
}

/// GETs `url` on fresh HTTP/1 requests until one answers 200; panics after
/// [`BOUND`] with the last status.
async fn eventually_ok(url: &str) {
    let client = Client::http1();
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let reply = client.get(url).await;
        if reply.status == 200 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} still answers {} after {BOUND:?}: {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads from `stream` until EOF or an error; panics if that takes longer
/// than [`BOUND`]. Returns the bytes read.
async fn read_until_closed(stream: &mut TcpStream) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n as u64,
            }
        }
    };
    tokio::time::timeout(BOUND, read_all)
        .await
        .expect("meshd closes the connection");
    total
}

/// Sends a raw HTTP/1.1 GET and reads until the end of the response head.
async fn raw_get_head(addr: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send head");
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read head");
        assert!(n > 0, "connection closed before the response head");
        received.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&received).into_owned())
}

/// Reads the body of the response whose `head` was just read: by its
/// length, or to the last chunk. (A guest that returned before meshd sent the
/// head gets a `Content-Length`; one still running, say after giving way on
/// a busy machine, is sent chunked.)
async fn read_raw_body(stream: &mut TcpStream, head: &str) -> Vec<u8> {
    let head = head.to_ascii_lowercase();
    if let Some(length) = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
    {
        let length: usize = length.trim().parse().expect("a numeric Content-Length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("body");
        return body;
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n0\r\n\r\n") && raw != b"0\r\n\r\n" {
        let n = stream.read(&mut byte).await.expect("read chunked body");
        assert!(n > 0, "connection closed before the last chunk");
        raw.push(byte[0]);
    }
    dechunk(&raw)
}

/// The data of a chunked body (no chunk extensions, no trailers).
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line_end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size = std::str::from_utf8(&raw[..line_end]).expect("an ASCII chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        raw = &raw[line_end + 2..];
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_none_of_its_app_s_concurrency() {
    let apps = AppsDir::with(&["stream"]);
    // A long write timeout: what frees the slots here is the guests ending,
    // not the connection being dropped.
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-concurrency", "2", "--write-timeout", "10m"])
        .start();

    // An HTTP/2 client with a window of 0: it receives the heads of its
    // responses but never a byte of their bodies, which stay unsent.
    let (mut attacker, _conn) = h2_connect(meshd.addr(), 0).await;
    let heads = h2_heads(&mut attacker, &meshd.url("/stream/"), 20).await;
    let served = heads.iter().filter(|r| r.status() == 200).count();
    assert!(served >= 2, "at least max_concurrency streams were served");

    // Their guests have finished: everyone else is served.
    let client = Client::http1();
    for _ in 0..5 {
        let reply = client.get(&meshd.url("/stream/")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    drop(heads);
}

#[tokio::test]
async fn an_h2_stream_whose_window_stays_shut_is_dropped_after_the_write_timeout() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--max-concurrency",
            "2",
            "--write-timeout",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();

    // Large responses: their guests block writing, since nothing is taken.
    let (mut attacker, conn) = h2_connect(meshd.addr(), 0).await;
    let heads = h2_heads(&mut attacker, &meshd.url("/stream/bytes?n=50000000"), 10).await;
    assert!(heads.iter().any(|r| r.status() == 200));

    // meshd drops the connection that takes nothing, after the 1 s write
    // timeout (well before the guests' 30 s request timeout, which would
    // end these streams anyway)...
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "the attacker's connection is still open");
    for head in heads.into_iter().filter(|r| r.status() == 200) {
        let mut body = head.into_body();
        let first = tokio::time::timeout(BOUND, body.data()).await;
        assert!(
            matches!(first, Ok(Some(Err(_)) | None)),
            "the stalled stream ended with an error, not data"
        );
    }
    // ...and stops its guests, so the app serves others again.
    eventually_ok(&meshd.url("/stream/")).await;
    let text = Client::http1().get(&meshd.metrics_url()).await.text();
    let closed = "meshd_connections_closed_total";
    assert_eq!(metric_sample(&text, closed, &["write_timeout"]), 1.0);
}

#[tokio::test]
async fn http1_clients_that_stop_reading_are_dropped_after_the_write_timeout() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--max-concurrency",
            "2",
            "--write-timeout",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();

    // Two clients take the app's two slots with 100 MB responses (far more
    // than the sockets' buffers hold) and stop reading after the head.
    let path = "/stream/bytes?n=100000000";
    let (mut first, head) = raw_get_head(meshd.addr(), path).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (mut second, head) = raw_get_head(meshd.addr(), path).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // After the write timeout meshd closes both and stops their guests.
    eventually_ok(&meshd.url("/stream/")).await;
    // Both closed before the readers read again (one free slot is enough
    // for the request above; a reader that resumed before its connection
    // was closed would no longer be a stopped reader).
    let deadline = std::time::Instant::now() + BOUND;
    loop {
        let text = Client::http1().get(&meshd.metrics_url()).await.text();
        let closed = metric_sample(&text, "meshd_connections_closed_total", &["write_timeout"]);
        if closed >= 2.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "write-timeout closes: {closed}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for stream in [&mut first, &mut second] {
        let read = read_until_closed(stream).await;
        assert!(read < 100_000_000, "a stopped reader got the whole body");
    }
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let apps = AppsDir::with(&["stream"]);
    // A header-read timeout far beyond the test's bound: only the idle
    // timeout can close the HTTP/1 connection in time.
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--idle-timeout",
            "1s",
            "--header-read-timeout",
            "10m",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .start();

    // HTTP/1.1 keep-alive, after one request.
    let (mut stream, head) = raw_get_head(meshd.addr(), "/stream/").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(read_raw_body(&mut stream, &head).await, b"stream");
    assert_eq!(read_until_closed(&mut stream).await, 0);

    // HTTP/2 after one request, and HTTP/2 that never sends one.
    let (mut client, conn) = h2_connect(meshd.addr(), 65_535).await;
    let heads = h2_heads(&mut client, &meshd.url("/stream/"), 1).await;
    assert_eq!(heads[0].status(), 200);
    let mut body = heads.into_iter().next().expect("one").into_body();
    while let Some(data) = body.data().await {
        let data = data.expect("body");
        let _ = body.flow_control().release_capacity(data.len());
    }
    let (_silent, silent_conn) = h2_connect(meshd.addr(), 65_535).await;
    for conn in [conn, silent_conn] {
        let ended = tokio::time::timeout(BOUND, conn).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection is still open");
    }
    drop(client);
    let text = Client::http1().get(&meshd.metrics_url()).await.text();
    let idle = metric_sample(&text, "meshd_connections_closed_total", &["idle"]);
    assert!(idle >= 3.0, "{idle} idle connections closed");
}

/// Bytes of guest memory while one `stream` instance is serving a request,
/// from the metrics of a meshd with no ceiling to speak of.
async fn memory_of_one_instance(apps: &AppsDir) -> u64 {
    let meshd = Meshd::builder(apps.path())
        .args(&["--metrics-listen", "127.0.0.1:0"])
        .start();
    let (_running, head) = raw_get_head(meshd.addr(), "/stream/drip?chunks=1000&ms=50").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let text = Client::http1().get(&meshd.metrics_url()).await.text();
    let bytes = metric_sample(&text, "meshd_guest_memory_bytes", &[]);
    assert!(bytes > 0.0, "a running instance holds memory");
    bytes as u64
}

#[tokio::test]
async fn instances_past_the_memory_ceiling_get_503_while_running_ones_go_on() {
    let apps = AppsDir::with(&["stream"]);
    let one = memory_of_one_instance(&apps).await;
    // Room for one instance and a half.
    let ceiling = (one + one / 2).to_string();
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-total-memory", &ceiling])
        .start();

    // One request runs (its head and first line are here)...
    let client = Client::http1();
    let running = client
        .send(crate::support::request(
            "GET",
            &meshd.url("/stream/drip?chunks=40&ms=50"),
            crate::support::empty(),
        ))
        .await
        .expect("drip starts");
    assert_eq!(running.status(), 200);
    let mut body = running.into_body();
    let first = body.frame().await.expect("a first line").expect("data");
    assert!(first.data_ref().is_some());

    // ...another instance would pass the ceiling: 503, with Retry-After.
    let refused = Client::http1().get(&meshd.url("/stream/")).await;
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.headers.contains_key("retry-after"));
    assert!(refused.text().contains("overloaded"), "{}", refused.text());

    // The running one finishes its body whole.
    let mut lines = String::from_utf8_lossy(first.data_ref().expect("data")).into_owned();
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("the running response is not cut");
        if let Some(data) = frame.data_ref() {
            lines.push_str(&String::from_utf8_lossy(data));
        }
    }
    assert_eq!(lines.lines().count(), 40, "{lines}");
    assert!(lines.ends_with("chunk 39\n"), "{lines}");

    // Its memory is given back: new instances fit again.
    eventually_ok(&meshd.url("/stream/")).await;
}

#[tokio::test]
async fn the_metrics_listener_times_out_slow_heads() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--metrics-listen",
            "127.0.0.1:0",
            "--header-read-timeout",
            "1s",
        ])
        .start();
    let addr = metrics_addr(&meshd);
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // More than the HTTP/2 preface's length, so the connection is HTTP/1,
    // but never the blank line that ends the head.
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n")
        .await
        .expect("send part of a head");
    // Closed (hyper may say 408 first), without a scrape being served.
    read_until_closed(&mut stream).await;
}

#[tokio::test]
async fn the_metrics_listener_caps_its_connections() {
    let apps = AppsDir::with(&["stream"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--metrics-listen", "127.0.0.1:0"])
        .start();
    let addr = metrics_addr(&meshd);
    let url = format!("http://{addr}/metrics");

    let mut held = Vec::new();
    for _ in 0..32 {
        held.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // Every connection is taken: a new scrape waits in the backlog...
    let scrape = tokio::spawn(async move { Client::http1().get(&url).await.status });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !scrape.is_finished(),
        "a connection past the cap was served"
    );
    // ...until one closes.
    held.pop();
    let status = tokio::time::timeout(BOUND, scrape)
        .await
        .expect("served once a connection closed")
        .expect("scrape task");
    assert_eq!(status, 200);
}

fn metrics_addr(meshd: &Meshd) -> SocketAddr {
    meshd
        .metrics_url()
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .parse()
        .expect("metrics address")
}
