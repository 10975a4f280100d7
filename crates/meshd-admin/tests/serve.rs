//! The admin API on a real socket, through meshd's accept loop.

use meshd_admin::{serve, AdminState, Token};
use meshd_registry::Registry;
use meshd_reload::PipelineHandle;
use meshd_server::ServeConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

fn front_door() -> ServeConfig {
    ServeConfig {
        shutdown_timeout: Duration::from_secs(5),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 1000,
        write_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        max_streams: 100,
        closed: Arc::default(),
        access_log: true,
    }
}

/// One HTTP/1.1 request on a fresh connection; the whole answer.
async fn exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn the_api_answers_on_a_socket_and_stops_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_pipeline, _requests) = mpsc::channel(1);
    let state = AdminState {
        pipeline: PipelineHandle::new(_pipeline),
        registry: Arc::new(Registry::new()),
        metrics: Arc::default(),
        token: Some(Token::new("socket-token").unwrap()),
        max_wasm_size: 1024,
        mesh: None,
        certificates: None,
        logs: Arc::default(),
        restart: None,
        restarting: Arc::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        serve(listener, state, shutdown, &front_door()).await
    });

    let answer = exchange(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer socket-token\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let pid = std::process::id();
    assert!(
        answer.ends_with(&format!("{{\"status\":\"ok\",\"pid\":{pid}}}")),
        "{answer}"
    );

    let answer = exchange(
        addr,
        "GET /v1/apps HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\"kind\":\"unauthorized\""), "{answer}");

    // An upload announced over the limit is refused before its body is sent.
    let answer = exchange(
        addr,
        "PUT /v1/apps/hello HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer socket-token\r\nContent-Type: application/wasm\r\nContent-Length: 5000\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
        "{answer}"
    );

    stop.send(()).unwrap();
    assert!(server.await.unwrap(), "connections closed in time");
}

#[tokio::test]
async fn a_followed_log_ends_when_the_api_shuts_down() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Arc::new(Registry::new());
    let mut set = meshd_registry::AppSet::default();
    let mut status = meshd_registry::AppStatus::new("hello", meshd_registry::Origin::Api);
    status.deploying = true;
    set.apps.insert("hello".to_owned(), status);
    registry.publish(set);
    let (_pipeline, _requests) = mpsc::channel(1);
    let state = AdminState {
        pipeline: PipelineHandle::new(_pipeline),
        registry,
        metrics: Arc::default(),
        token: None,
        max_wasm_size: 1024,
        mesh: None,
        certificates: None,
        logs: Arc::default(),
        restart: None,
        restarting: Arc::default(),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        serve(listener, state, shutdown, &front_door()).await
    });

    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /v1/apps/hello/logs?follow=1 HTTP/1.1\r\nHost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !String::from_utf8_lossy(&seen).contains(": following") {
        let read = stream.read(&mut buf).await.unwrap();
        assert!(read > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..read]);
    }
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");

    // The stream ends at shutdown (the chunked body's last chunk), so the
    // server closes every connection well within its shutdown timeout (5 s).
    let started = std::time::Instant::now();
    stop.send(()).unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the stream did not end at shutdown")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"),
        "{rest:?}"
    );
    assert!(server.await.unwrap(), "connections closed in time");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}
