//! HTTPS on --listen-tls: certificates from meshd.toml chosen by SNI
//! (exact, wildcard, default), TLS 1.2 and 1.3, HTTP/2 and HTTP/1.1 by
//! ALPN, certificate reload (and a broken replacement that keeps the old
//! one), redirect_http, a handshake that never completes, and the start-up
//! errors.

use crate::support::{AppsDir, Client, Meshd, TestPki};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::version::{TLS12, TLS13};
use rustls::{ProtocolVersion, SupportedProtocolVersion};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate directory and meshd.toml for a test: a default
/// certificate for `default.test`, one for `shop.example.com` and a
/// wildcard for `*.apps.test`.
pub(crate) struct TlsSite {
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
}

impl TlsSite {
    pub(crate) fn new(extra_config: &str) -> TlsSite {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        let site = TlsSite { pki, dir };
        site.write_cert("default", &["default.test"]);
        site.write_cert("shop", &["shop.example.com"]);
        site.write_cert("apps", &["*.apps.test"]);
        std::fs::write(
            site.config(),
            format!(
                "[tls]\ncert = \"certs/default.crt\"\nkey = \"certs/default.key\"\n{extra_config}\n\
                 [tls.hosts.\"Shop.Example.com\"]\ncert = \"certs/shop.crt\"\nkey = \"certs/shop.key\"\n\
                 [tls.hosts.\"*.apps.test\"]\ncert = \"certs/apps.crt\"\nkey = \"certs/apps.key\"\n"
            ),
        )
        .unwrap();
        site
    }

    pub(crate) fn config(&self) -> PathBuf {
        self.dir.path().join("meshd.toml")
    }

    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join("certs").join(file)
    }

    /// Writes `NAME.crt` and `NAME.key` (a new leaf for `names`) in one step
    /// each; returns the certificate.
    pub(crate) fn write_cert(&self, name: &str, names: &[&str]) -> CertificateDer<'static> {
        let leaf = self.pki.leaf(names, names[0]);
        replace(&self.path(&format!("{name}.key")), leaf.key_pem.as_bytes());
        replace(&self.path(&format!("{name}.crt")), leaf.cert_pem.as_bytes());
        leaf.cert_der
    }

    /// meshd on `apps` with this site's config and `--listen-tls`.
    pub(crate) fn start(&self, apps: &Path, args: &[&str]) -> Meshd {
        Meshd::builder(apps)
            .args(&["--config", self.config().to_str().unwrap()])
            .args(&["--listen-tls", "127.0.0.1:0"])
            .args(args)
            .start()
    }
}

/// Writes `path` in one step (temp file + rename), as a deploy tool would.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A finished TLS handshake with meshd.
pub(crate) struct Handshake {
    pub stream: tokio_rustls::client::TlsStream<TcpStream>,
}

impl Handshake {
    pub(crate) fn leaf(&self) -> CertificateDer<'static> {
        self.stream
            .get_ref()
            .1
            .peer_certificates()
            .expect("a certificate")[0]
            .clone()
    }

    fn version(&self) -> ProtocolVersion {
        self.stream
            .get_ref()
            .1
            .protocol_version()
            .expect("a version")
    }

    fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec)
    }
}

/// Connects to `addr` asking for `server_name` by SNI, trusting the test
/// CA only; `tcp` may already carry a PROXY header.
pub(crate) async fn handshake_on(
    tcp: TcpStream,
    pki: &TestPki,
    server_name: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<Handshake> {
    let config = pki.client_config(versions, alpn);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let stream = connector.connect(name, tcp).await?;
    Ok(Handshake { stream })
}

pub(crate) async fn handshake(
    addr: SocketAddr,
    pki: &TestPki,
    server_name: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> std::io::Result<Handshake> {
    let tcp = TcpStream::connect(addr).await?;
    handshake_on(tcp, pki, server_name, versions, alpn).await
}

/// One GET over an open connection (HTTP/2 if ALPN chose it), with
/// `headers`; returns the status and body.
pub(crate) async fn get_on<I>(
    io: I,
    h2: bool,
    authority: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut req = http::Request::get(format!("https://{authority}{path}"));
    if !h2 {
        req = http::Request::get(path).header("host", authority);
    }
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let io = TokioIo::new(io);
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

const BOTH: &[&SupportedProtocolVersion] = &[&TLS13, &TLS12];

#[tokio::test]
async fn sni_chooses_the_certificate_and_alpn_the_protocol() {
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let meshd = site.start(apps.path(), &[]);
    let addr = meshd.https_addr();
    let read = |name: &str| {
        let pem = std::fs::read(site.path(&format!("{name}.crt"))).unwrap();
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&pem).unwrap()
    };

    // Exact (any case), wildcard, and the default for other names.
    for (sni, expected) in [
        ("shop.example.com", "shop"),
        ("SHOP.Example.COM", "shop"),
        ("blog.apps.test", "apps"),
        ("default.test", "default"),
    ] {
        let tls = handshake(addr, &site.pki, sni, BOTH, &[b"http/1.1"])
            .await
            .unwrap_or_else(|e| panic!("handshake for {sni}: {e}"));
        assert!(
            tls.leaf() == read(expected),
            "{sni} got the wrong certificate"
        );
        assert_eq!(tls.alpn().as_deref(), Some(&b"http/1.1"[..]));
        let (status, body) = get_on(tls.stream, false, sni, "/hello/", &[]).await;
        assert_eq!((status, body.as_str()), (200, "Hello from Steelmesh!\n"));
    }
    // A name only the default serves: the client refuses the certificate,
    // which is for default.test.
    assert!(handshake(addr, &site.pki, "other.test", BOTH, &[])
        .await
        .is_err());

    // HTTP/2 by ALPN.
    let tls = handshake(
        addr,
        &site.pki,
        "shop.example.com",
        BOTH,
        &[b"h2", b"http/1.1"],
    )
    .await
    .unwrap();
    assert_eq!(tls.alpn().as_deref(), Some(&b"h2"[..]));
    let (status, body) = get_on(tls.stream, true, "shop.example.com", "/hello/", &[]).await;
    assert_eq!((status, body.as_str()), (200, "Hello from Steelmesh!\n"));

    // Each certificate is logged at start, and its key file's mode (0644
    // here) draws a warning.
    for host in ["(default)", "shop.example.com", "*.apps.test"] {
        let line = meshd.wait_for_log(&["TLS certificate loaded", &format!("host={host}")]);
        assert!(line.contains("expires="), "{line}");
        assert!(line.contains("subject="), "{line}");
    }
    assert_eq!(
        meshd.count_log(&["private key file is readable by other users"]),
        3
    );
}

#[tokio::test]
async fn tls_1_2_and_1_3_are_both_accepted() {
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let meshd = site.start(apps.path(), &[]);
    let addr = meshd.https_addr();
    for (versions, expected) in [
        (&[&TLS12][..], ProtocolVersion::TLSv1_2),
        (&[&TLS13][..], ProtocolVersion::TLSv1_3),
    ] {
        let tls = handshake(addr, &site.pki, "shop.example.com", versions, &[b"h2"])
            .await
            .unwrap();
        assert_eq!(tls.version(), expected);
        let (status, _) = get_on(tls.stream, true, "shop.example.com", "/hello/", &[]).await;
        assert_eq!(status, 200);
    }
}

#[tokio::test]
async fn certificates_reload_and_a_broken_file_keeps_the_old_one() {
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let meshd = site.start(apps.path(), &[]);
    let addr = meshd.https_addr();
    let served = || async {
        handshake(addr, &site.pki, "shop.example.com", BOTH, &[])
            .await
            .unwrap()
            .leaf()
    };
    let first = served().await;

    let second = site.write_cert("shop", &["shop.example.com"]);
    assert!(second != first);
    meshd
        .wait_for_log_async(&["TLS certificate reloaded", "host=shop.example.com"])
        .await;
    assert!(served().await == second, "the new certificate is served");

    // A broken certificate file: the last good one stays, and the log says
    // which file and why.
    replace(
        &site.path("shop.crt"),
        b"-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    let line = meshd
        .wait_for_log_async(&["TLS certificate not reloaded", "host=shop.example.com"])
        .await;
    assert!(line.contains("shop.crt"), "{line}");
    assert!(served().await == second, "the old certificate is kept");

    // A key that does not belong to the certificate.
    let other = site.pki.leaf(&["shop.example.com"], "x");
    replace(&site.path("shop.crt"), other.cert_pem.as_bytes());
    let line = meshd
        .wait_for_log_count_async(
            &["TLS certificate not reloaded", "host=shop.example.com"],
            2,
        )
        .await;
    assert!(
        line.contains("does not belong to the certificate"),
        "{line}"
    );
    assert!(served().await == second, "the old certificate is kept");

    // Fixed: served again.
    let third = site.write_cert("shop", &["shop.example.com"]);
    meshd
        .wait_for_log_count_async(&["TLS certificate reloaded", "host=shop.example.com"], 2)
        .await;
    assert!(served().await == third);
}

#[tokio::test]
async fn redirect_http_sends_hosts_with_a_certificate_to_https() {
    let site = TlsSite::new("redirect_http = true");
    let apps = AppsDir::with(&["echo"]);
    let meshd = site.start(apps.path(), &[]);
    let port = meshd.https_addr().port();
    let client = Client::http1();
    let get = |host: &'static str| {
        let client = client.clone();
        let url = meshd.url("/echo/a?q=1");
        async move {
            let req = http::Request::post(url)
                .header("host", host)
                .body(crate::support::empty())
                .unwrap();
            client.fetch(req).await.unwrap()
        }
    };
    for host in [
        "shop.example.com",
        "SHOP.example.com:8080",
        "x.apps.test",
        "default.test",
    ] {
        let reply = get(host).await;
        assert_eq!(reply.status, 308, "{host}");
        let host_only = host.split(':').next().unwrap().to_ascii_lowercase();
        assert_eq!(
            reply.headers["location"],
            format!("https://{host_only}:{port}/echo/a?q=1"),
            "{host}"
        );
    }
    // ACME HTTP-01 validations stay on plain HTTP (routed: no app here).
    let req = http::Request::get(meshd.url("/.well-known/acme-challenge/token"))
        .header("host", "shop.example.com")
        .body(crate::support::empty())
        .unwrap();
    assert_eq!(client.fetch(req).await.unwrap().status, 404);
    // Hosts no certificate is valid for are served over plain HTTP.
    for host in ["other.test", "apps.test", "127.0.0.1"] {
        let reply = get(host).await;
        assert_eq!(reply.status, 200, "{host}");
        assert_eq!(reply.json()["path"], "/a?q=1");
    }
}

#[tokio::test]
async fn a_handshake_that_never_completes_does_not_block_others() {
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let meshd = site.start(apps.path(), &["--header-read-timeout", "2s"]);
    let addr = meshd.https_addr();
    // Silent clients, and one that stops halfway through its ClientHello.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(TcpStream::connect(addr).await.unwrap());
    }
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    stalled.push(half);

    let tls = handshake(addr, &site.pki, "shop.example.com", BOTH, &[b"h2"])
        .await
        .unwrap();
    let (status, _) = get_on(tls.stream, true, "shop.example.com", "/hello/", &[]).await;
    assert_eq!(status, 200);

    // meshd closes them after the header read timeout.
    for mut conn in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut buf))
            .await
            .expect("meshd closes a stalled handshake");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}

#[tokio::test]
async fn https_only_and_start_up_errors() {
    // --listen-tls without --listen: HTTPS only.
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args([
            "--apps",
            apps.path().to_str().unwrap(),
            "--listen-tls",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--listen-tls needs certificates"),
        "{stderr}"
    );

    let config = site.config();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args([
            "--apps",
            apps.path().to_str().unwrap(),
            "--listen-tls",
            "127.0.0.1:0",
        ])
        .args(["--config", config.to_str().unwrap()])
        .args([
            "--cache-dir",
            site.dir.path().join("cache").to_str().unwrap(),
        ])
        .args(["--data-dir", site.dir.path().join("data").to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    let https = loop {
        let line = lines.next().expect("meshd logs until it listens").unwrap();
        assert!(
            !line.contains("listening on http://"),
            "plain HTTP is off: {line}"
        );
        if let Some(rest) = line.split("listening on https://").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<SocketAddr>()
                .unwrap();
        }
    };
    let tls = handshake(https, &site.pki, "shop.example.com", BOTH, &[])
        .await
        .unwrap();
    let (status, _) = get_on(tls.stream, false, "shop.example.com", "/hello/", &[]).await;
    assert_eq!(status, 200);
    child.kill().unwrap();
    child.wait().unwrap();

    // A missing key file names itself.
    std::fs::remove_file(site.path("apps.key")).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args([
            "--apps",
            apps.path().to_str().unwrap(),
            "--listen-tls",
            "127.0.0.1:0",
        ])
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("apps.key"), "{stderr}");
    assert!(stderr.contains("*.apps.test"), "{stderr}");
}

#[tokio::test]
async fn socket_activation_serves_the_sockets_systemd_passes() {
    let site = TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (plain, https) = (free(), free());
    // systemd's own tool: binds both, and starts meshd with them (named by
    // --fdname, as FileDescriptorName= does) at the first connection.
    let mut child = std::process::Command::new("systemd-socket-activate")
        .args(["-l", &plain.to_string(), "-l", &https.to_string()])
        .arg("--fdname=http:https")
        .arg(env!("CARGO_BIN_EXE_meshd"))
        .args(["--apps", apps.path().to_str().unwrap()])
        .args(["--config", site.config().to_str().unwrap()])
        .args([
            "--cache-dir",
            site.dir.path().join("cache").to_str().unwrap(),
        ])
        .args(["--data-dir", site.dir.path().join("data").to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("systemd-socket-activate runs (Debian's systemd package)");
    let stderr = child.stderr.take().unwrap();
    let child = KillOnDrop(child);
    let log = std::thread::spawn(move || {
        std::io::BufRead::lines(std::io::BufReader::new(stderr))
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });

    // The ports open once systemd-socket-activate has bound them.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(plain).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sockets never opened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("http://{plain}/hello/");
    let reply = tokio::time::timeout(Duration::from_secs(60), Client::http1().get(&url))
        .await
        .expect("meshd answers on the socket it was passed");
    assert_eq!(reply.status, 200);
    let tls = handshake(https, &site.pki, "shop.example.com", BOTH, &[b"h2"])
        .await
        .unwrap();
    let (status, _) = get_on(tls.stream, true, "shop.example.com", "/hello/", &[]).await;
    assert_eq!(status, 200);

    drop(child);
    let log = log.join().unwrap().join("\n");
    assert!(
        log.contains(&format!("meshd listening on http://{plain}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("meshd listening on https://{https}")),
        "{log}"
    );
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
