//! The front door's defences against clients that hold connections: a
//! header-read timeout (slow or idle HTTP/1 clients) and a cap on open
//! connections.

use crate::support::{AppsDir, Meshd};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes);
/// returns what arrived and how long it took.
async fn read_until_closed(socket: &mut TcpStream, limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

/// Starts meshd with a 500 ms header-read timeout, sends `bytes` on a new
/// connection, and reads until meshd closes it (at most 10 s).
async fn send_and_wait_for_close(bytes: &[u8]) -> (String, Duration) {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--header-read-timeout", "500ms"])
        .start();
    let mut socket = TcpStream::connect(meshd.addr()).await.unwrap();
    socket.write_all(bytes).await.unwrap();
    read_until_closed(&mut socket, Duration::from_secs(10)).await
}

#[tokio::test]
async fn a_client_that_never_finishes_its_head_is_cut_off() {
    // Half a request head, and then nothing (slowloris).
    let (_, took) = send_and_wait_for_close(b"GET /hello/ HTTP/1.1\r\nhost: localhost\r\n").await;
    assert!(
        took < Duration::from_secs(5),
        "the connection stayed open {took:?}"
    );
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_timeout() {
    let (received, took) =
        send_and_wait_for_close(b"GET /hello/ HTTP/1.1\r\nhost: localhost\r\n\r\n").await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received}");
    assert!(
        took < Duration::from_secs(5),
        "the idle connection stayed open {took:?}"
    );
}

#[tokio::test]
async fn connections_over_the_limit_wait_until_one_closes() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-connections", "2"])
        .start();
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(meshd.addr()).await.unwrap(),
        TcpStream::connect(meshd.addr()).await.unwrap(),
    ];
    // The third connects (the kernel's backlog) but is not served...
    let mut third = TcpStream::connect(meshd.addr()).await.unwrap();
    third
        .write_all(b"GET /hello/ HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let (early, _) = read_until_closed(&mut third, Duration::from_millis(700)).await;
    assert_eq!(early, "", "served past the connection limit");
    meshd.wait_for_log(&["connection limit reached", "limit=2"]);
    // ...until one of the first two closes.
    drop(held);
    let (received, _) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(received.starts_with("HTTP/1.1 200"), "{received:?}");
}

/// meshd's own answers to a request whose body it did not read (a 413 on
/// the declared length, a 404) end the HTTP/1.1 connection, and say so with
/// `Connection: close`: a keep-alive client that is not told would send its
/// next request on a connection that is closing. An answer to a request
/// without a body keeps the connection open.
#[tokio::test]
async fn an_answer_that_leaves_the_body_unread_says_connection_close() {
    let apps = AppsDir::with(&["echo"]);
    apps.write("echo.toml", "[limits]\nmax_body = \"1KiB\"\n");
    let meshd = Meshd::start(apps.path());

    for (request, status) in [
        (
            "POST /echo/ HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            "413",
        ),
        (
            "POST /nothing-here HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n",
            "404",
        ),
    ] {
        let mut socket = TcpStream::connect(meshd.addr()).await.unwrap();
        socket.write_all(request.as_bytes()).await.unwrap();
        socket.write_all(&[b'a'; 1000]).await.unwrap();
        let (answer, _) = read_until_closed(&mut socket, Duration::from_secs(10)).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{answer}"
        );
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }

    // Without a body, the same 404 keeps the connection for the next request.
    let mut socket = TcpStream::connect(meshd.addr()).await.unwrap();
    let get = "GET /nothing-here HTTP/1.1\r\nHost: x\r\n\r\n";
    socket.write_all(get.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.read(&mut buf).await.unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(first.starts_with("http/1.1 404"), "{first}");
    assert!(!first.contains("connection: close"), "{first}");
    socket.write_all(get.as_bytes()).await.unwrap();
    let n = socket.read(&mut buf).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 404"),
        "the connection serves a second request"
    );
}
