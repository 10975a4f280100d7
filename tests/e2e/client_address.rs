//! Who called: meshd sets `forwarded`, `x-forwarded-for` and
//! `x-forwarded-proto` for the guest, replacing what a client sent unless
//! the peer is a trusted proxy (then it appends), and takes the client's
//! address from a PROXY protocol header (v1 or v2) with --proxy-protocol.

use crate::support::{AppsDir, Client, Meshd};
use crate::tls::{get_on, handshake_on, TlsSite};
use ppp::v2;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The forwarded headers the echo guest saw.
fn forwarded(echo: &serde_json::Value) -> [String; 3] {
    ["forwarded", "x-forwarded-for", "x-forwarded-proto"].map(|name| {
        echo["headers"][name]
            .as_str()
            .unwrap_or("(none)")
            .to_owned()
    })
}

/// A client that claims to be someone else.
async fn spoofing_get(client: &Client, meshd: &Meshd) -> serde_json::Value {
    let req = http::Request::get(meshd.url("/echo/"))
        .header("forwarded", "for=198.51.100.1;proto=https")
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .body(crate::support::empty())
        .unwrap();
    client.fetch(req).await.unwrap().json()
}

#[tokio::test]
async fn forwarded_headers_replace_what_an_untrusted_client_sent() {
    let apps = AppsDir::with(&["echo"]);
    // Loopback is not trusted (another network is).
    let meshd = Meshd::builder(apps.path())
        .args(&["--trusted-proxies", "10.0.0.0/8"])
        .start();
    // Twice on one keep-alive connection: its hop is rendered once, when
    // it opens, and every request on it gets the same.
    let client = Client::http1();
    for _ in 0..2 {
        assert_eq!(
            forwarded(&spoofing_get(&client, &meshd).await),
            ["for=127.0.0.1;proto=http", "127.0.0.1", "http"]
        );
    }
    // HTTP/2 too, and without anything sent.
    let echo = Client::http2().get(&meshd.url("/echo/")).await.json();
    assert_eq!(echo["scheme"], "http", "the scheme the guest sees");
    assert_eq!(
        forwarded(&echo),
        ["for=127.0.0.1;proto=http", "127.0.0.1", "http"]
    );
}

#[tokio::test]
async fn a_trusted_proxy_is_appended_to() {
    let apps = AppsDir::with(&["echo"]);
    let meshd = Meshd::builder(apps.path())
        .env("MESHD_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")
        .start();
    let client = Client::http1();
    for _ in 0..2 {
        assert_eq!(
            forwarded(&spoofing_get(&client, &meshd).await),
            [
                "for=198.51.100.1;proto=https, for=127.0.0.1;proto=http",
                "198.51.100.1, 127.0.0.1",
                "https"
            ]
        );
    }
}

/// Sends `prefix` and then one HTTP/1.1 GET of `path` on a new connection
/// to `addr`; returns the status and body.
async fn get_after(addr: SocketAddr, prefix: &[u8], path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(prefix).await.unwrap();
    get_on(tcp, false, "app.test", path, &[]).await
}

/// Sends the PROXY `header`, then one GET of `/echo/v2` over TLS (HTTP/2 or
/// HTTP/1.1) to meshd's HTTPS listener; returns what the echo guest saw.
async fn echo_over_tls(
    meshd: &Meshd,
    site: &TlsSite,
    header: &[u8],
    h2: bool,
) -> serde_json::Value {
    let mut tcp = TcpStream::connect(meshd.https_addr()).await.unwrap();
    tcp.write_all(header).await.unwrap();
    let alpn: &[u8] = if h2 { b"h2" } else { b"http/1.1" };
    let tls = handshake_on(
        tcp,
        &site.pki,
        "shop.example.com",
        &[&rustls::version::TLS13],
        &[alpn],
    )
    .await
    .unwrap();
    let (status, body) = get_on(tls.stream, h2, "shop.example.com", "/echo/v2", &[]).await;
    assert_eq!(status, 200);
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let apps = AppsDir::with(&["echo"]);
    let dir = tempfile::tempdir().unwrap();
    let access_log = dir.path().join("access.log");
    let site = TlsSite::new("");
    let meshd = site.start(
        apps.path(),
        &[
            "--proxy-protocol",
            "--header-read-timeout",
            "2s",
            "--access-log",
            access_log.to_str().unwrap(),
        ],
    );

    // v1, on the plain listener.
    let (status, body) = get_after(
        meshd.addr(),
        b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\n",
        "/echo/v1",
    )
    .await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        forwarded(&echo),
        ["for=203.0.113.7;proto=http", "203.0.113.7", "http"]
    );

    // v2 with an IPv6 client, then TLS, on the HTTPS listener.
    let header = v2::Builder::with_addresses(
        v2::Version::Two | v2::Command::Proxy,
        v2::Protocol::Stream,
        (
            "[2001:db8::7]:40000".parse::<SocketAddr>().unwrap(),
            "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
        ),
    )
    .build()
    .unwrap();
    let echo = echo_over_tls(&meshd, &site, &header, true).await;
    assert_eq!(
        forwarded(&echo),
        ["for=\"[2001:db8::7]\";proto=https", "2001:db8::7", "https"]
    );
    assert_eq!(echo["scheme"], "https", "the scheme the guest sees");
    // HTTP/1.1 over TLS (its request line names no scheme): https too.
    let echo = echo_over_tls(&meshd, &site, &header, false).await;
    assert_eq!(echo["scheme"], "https", "the scheme an HTTP/1.1 guest sees");

    // A v2 LOCAL header (a load balancer's health check): the peer stands.
    let local = v2::Builder::new(
        v2::Version::Two | v2::Command::Local,
        v2::AddressFamily::Unspecified | v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    let (status, body) = get_after(meshd.addr(), &local, "/echo/local").await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(forwarded(&echo)[1], "127.0.0.1");

    // The access log names the client from the header.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&access_log).unwrap_or_default();
        let has = |path: &str, client: &str| {
            text.lines().any(|l| {
                l.contains(&format!("path={path}")) && l.contains(&format!("client={client}"))
            })
        };
        if has("/echo/v1", "203.0.113.7") && has("/echo/v2", "2001:db8::7") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "access log:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Without a header, or with a broken one, the connection is closed
    // unanswered; a client that sends nothing is closed after the header
    // read timeout.
    for prefix in [
        &b"GET /echo/ HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"PROXY TCP4 nonsense\r\n",
        b"",
    ] {
        let mut tcp = TcpStream::connect(meshd.addr()).await.unwrap();
        tcp.write_all(prefix).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer))
            .await
            .expect("meshd closes the connection");
        assert!(
            read.is_err() || answer.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
}
