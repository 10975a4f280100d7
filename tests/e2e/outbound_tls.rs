//! Outbound HTTPS through meshd's own connector (which connects only to the
//! addresses it has checked): a server whose certificate comes from a CA the
//! operator adds with `[outbound] ca_files` in meshd.toml is reached; without
//! that CA its certificate is refused.

use crate::isolation::fails_to_start_with_config;
use crate::support::{AppsDir, Client, Meshd, TestPki};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// An HTTPS server on a loopback port that answers every request 200 and
/// counts the TLS handshakes that completed.
async fn https_server(pki: &TestPki) -> (u16, Arc<AtomicUsize>) {
    let acceptor = pki.server_acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::SeqCst);
                let service = service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"secure hi")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, handshakes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_https_trusts_the_operators_ca_files() {
    let pki = TestPki::new();
    let (port, handshakes) = https_server(&pki).await;
    let apps = AppsDir::new();
    apps.deploy("caller", "hostile");
    apps.write(
        "caller.toml",
        format!("[outbound]\nallow = [\"https://127.0.0.1:{port}\"]\n"),
    );
    let target = format!("/caller/fetch?url=https://127.0.0.1:{port}/");
    let client = Client::http1();

    // Mozilla's roots only: the test CA is unknown, the handshake fails.
    let meshd = Meshd::start(apps.path());
    let text = client.get(&meshd.url(&target)).await.text();
    assert!(
        text.starts_with("error ErrorCode::TlsCertificateError"),
        "{text}"
    );
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    drop(meshd);

    // The operator adds the CA (a path relative to meshd.toml).
    let config_dir = tempfile::tempdir().unwrap();
    std::fs::write(config_dir.path().join("internal-ca.pem"), &pki.ca_pem).unwrap();
    let config = config_dir.path().join("meshd.toml");
    std::fs::write(&config, "[outbound]\nca_files = [\"internal-ca.pem\"]\n").unwrap();
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .start();
    let text = client.get(&meshd.url(&target)).await.text();
    assert_eq!(text, "status 200");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_bad_ca_file_fails_before_binding() {
    let stderr = fails_to_start_with_config("[outbound]\nca_files = [\"/nonexistent/ca.pem\"]\n");
    assert!(
        stderr.contains("cannot read CA file /nonexistent/ca.pem"),
        "{stderr}"
    );
}
