//! ACME (`[acme]` in meshd.toml) end to end against Let's Encrypt's test CA
//! on loopback (pebble and pebble-challtestsrv, which answers every name
//! with 127.0.0.1): a route's host gets a certificate that a client
//! trusting pebble's root accepts, stored with private modes and reloaded
//! (not ordered again) after a restart; renewal at two thirds of a short
//! lifetime while requests go on; a host whose validation fails keeps the
//! default certificate and shows why; a host deployed later gets one
//! without a restart; and TLS-ALPN-01 without HTTP-01.

use crate::support::admin::{Admin, TokenFile};
use crate::support::{AppsDir, Meshd, TestPki};
use crate::tls::get_on;
use meshd_testkit::{free_port, Pebble, PebbleOptions};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long a test waits for a certificate.
const ISSUE_WAIT: Duration = Duration::from_secs(60);

/// pebble, and meshd's config, data and apps for it.
struct AcmeSite {
    pebble: Pebble,
    http_port: u16,
    tls_port: u16,
    /// The default certificate's CA (`[tls] cert` is for default.test and
    /// bad.example.com).
    pki: TestPki,
    dir: tempfile::TempDir,
    token: TokenFile,
    apps: AppsDir,
}

impl AcmeSite {
    /// pebble validating on meshd's ports (`http_port` for HTTP-01: none
    /// listens there when `http01` is false), issuing certificates valid
    /// for `validity_seconds`; `[acme]` gets `acme_extra`, `[tls]`
    /// `tls_extra`.
    fn new(validity_seconds: Option<u64>, http01: bool, acme_extra: &str, tls_extra: &str) -> Self {
        let http_port = free_port();
        let tls_port = free_port();
        let pebble = Pebble::start(&PebbleOptions {
            http_port: if http01 { http_port } else { free_port() },
            tls_port,
            validity_seconds,
        });
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let default = pki.leaf(&["default.test", "bad.example.com"], "default.test");
        std::fs::write(dir.path().join("default.crt"), &default.cert_pem).unwrap();
        std::fs::write(dir.path().join("default.key"), &default.key_pem).unwrap();
        std::fs::copy(pebble.ca_file(), dir.path().join("pebble-ca.pem")).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            dir.path().join("meshd.toml"),
            format!(
                "[tls]\ncert = \"default.crt\"\nkey = \"default.key\"\n{tls_extra}\n\
                 [acme]\ndirectory = \"{}\"\nemail = \"ops@example.com\"\naccept_terms = true\n\
                 ca_file = \"pebble-ca.pem\"\n{acme_extra}\n",
                pebble.directory_url()
            ),
        )
        .unwrap();
        AcmeSite {
            pebble,
            http_port,
            tls_port,
            pki,
            dir,
            token: TokenFile::new(),
            apps: AppsDir::new(),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Routes `host/` to the hello guest, as app `app`.
    fn deploy_host(&self, app: &str, host: &str) {
        self.apps
            .write(&format!("{app}.toml"), format!("route = \"{host}/\"\n"));
        self.apps.deploy(app, "hello");
    }

    /// meshd on pebble's validation ports, with the admin API.
    fn start(&self) -> Meshd {
        Meshd::builder(self.apps.path())
            .listen(&format!("127.0.0.1:{}", self.http_port))
            .data_dir(&self.data_dir())
            .args(&[
                "--config",
                self.dir.path().join("meshd.toml").to_str().unwrap(),
                "--listen-tls",
                &format!("127.0.0.1:{}", self.tls_port),
                "--admin",
                "127.0.0.1:0",
                "--admin-token-file",
                &self.token.arg(),
            ])
            .start()
    }

    /// Where meshd keeps this CA's ACME files.
    fn acme_dir(&self) -> PathBuf {
        self.data_dir()
            .join("acme")
            .join(meshd_acme::directory_key(&self.pebble.directory_url()))
    }

    fn https_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }
}

/// A client configuration trusting only `root_pem`, without session
/// resumption (a resumed session shows the certificate of the first
/// handshake, not the one meshd serves now).
fn client_config(root_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

/// A GET of `/` over a new TLS connection to `addr` asking for `sni`,
/// trusting `config`'s roots; the leaf's serial (hex) and the answer.
async fn https_get(
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<(String, u16, String), String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake for {sni}: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let serial = parsed.raw_serial_as_string().replace(':', "");
    let (status, body) = get_on(tls, false, sni, "/", &[]).await;
    Ok((serial, status, body))
}

/// The `GET /v1/certificates` entry of `host`, once `ready` accepts it.
async fn wait_status(
    admin: &Admin,
    host: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + ISSUE_WAIT;
    loop {
        let reply = admin.get("/v1/certificates").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["acme"], true);
        let entry = json["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["host"] == host)
            .cloned();
        if let Some(entry) = entry.filter(|e| ready(e)) {
            return entry;
        }
        assert!(
            Instant::now() < deadline,
            "{host} did not reach the expected state; /v1/certificates: {json:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// (1) and (5): a route's host gets a certificate by HTTP-01 that a client
/// trusting pebble's root accepts; the account and certificate are stored
/// 0600 in 0700 directories; the admin API shows it valid; after a
/// restart the stored certificate is served and no new order is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_host_gets_a_certificate_kept_across_restarts() {
    let site = AcmeSite::new(None, true, "", "");
    site.deploy_host("shop", "shop.example.com");
    let mut meshd = site.start();
    let admin = Admin::of(&meshd);
    let status = wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    assert_eq!(status["failures"], 0);
    assert!(status["last_error"].is_null(), "{status}");
    assert!(
        status["issuer"].as_str().unwrap().contains("Pebble"),
        "{status}"
    );
    assert!(status["not_after"].is_string() && status["last_renewal"].is_string());
    meshd.wait_for_log(&["ACME certificate obtained", "shop.example.com"]);

    let root = site.pebble.root_pem();
    let config = client_config(&root);
    let (serial, code, body) = https_get(site.https_addr(), &config, "shop.example.com")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "Hello from Steelmesh!\n"));
    assert_eq!(status["serial"].as_str(), Some(serial.as_str()));

    // The files, private.
    let dir = site.acme_dir();
    for file in [
        dir.join("account.json"),
        dir.join("certs/shop.example.com.crt"),
        dir.join("certs/shop.example.com.key"),
    ] {
        assert_eq!(mode(&file), 0o600, "{}", file.display());
    }
    for dir in [site.data_dir().join("acme"), dir.clone(), dir.join("certs")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // The endpoint needs the admin token like every /v1 endpoint.
    let anonymous = Admin::with_token(&meshd, None);
    assert_eq!(anonymous.get("/v1/certificates").await.status, 401);

    // Restart: the stored certificate is served, nothing is ordered.
    let issued = site.pebble.issued();
    assert_eq!(issued, 1, "{}", site.pebble.log());
    meshd.signal("TERM");
    meshd.wait_exit(Duration::from_secs(30));
    let meshd = site.start();
    meshd.wait_for_log(&["ACME certificate loaded from disk", "shop.example.com"]);
    let admin = Admin::of(&meshd);
    let status = wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    assert_eq!(status["serial"].as_str(), Some(serial.as_str()));
    let (again, code, _) = https_get(site.https_addr(), &config, "shop.example.com")
        .await
        .unwrap();
    assert_eq!((again.as_str(), code), (serial.as_str(), 200));
    // Give an order (if one were made) time to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(meshd.count_log(&["ACME: ordering a certificate"]), 0);
    assert_eq!(site.pebble.issued(), 1, "{}", site.pebble.log());
}

/// (2) Renewal at two thirds of the lifetime: pebble issues 45-second
/// certificates, so meshd renews after about 30 seconds (15 left for a
/// slow machine before the first one expires); a client making
/// a new HTTPS connection every 100 ms sees the new certificate (another
/// serial) without one failed request. `redirect_http` is on: the
/// renewal's HTTP-01 validation is for a host that now has a certificate
/// (meshd answers it before the redirect; pebble would also follow the
/// redirect to the TLS listener, which answers HTTP-01 too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_renewed_at_two_thirds_of_its_lifetime_without_dropping_requests() {
    let site = AcmeSite::new(Some(45), true, "", "redirect_http = true");
    site.deploy_host("shop", "shop.example.com");
    let meshd = site.start();
    let admin = Admin::of(&meshd);
    let first = wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    let first_serial = first["serial"].as_str().unwrap().to_owned();
    let config = client_config(&site.pebble.root_pem());

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut served = Vec::new();
    loop {
        let (serial, code, body) = https_get(site.https_addr(), &config, "shop.example.com")
            .await
            .unwrap_or_else(|e| panic!("request {} failed: {e}", served.len() + 1));
        assert_eq!((code, body.as_str()), (200, "Hello from Steelmesh!\n"));
        let renewed = serial != first_serial;
        served.push(serial);
        if renewed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal within 90 s; log:\n{}",
            meshd.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served.len() > 10, "renewed too early: {served:?}");
    let renewed = served.last().unwrap().clone();
    let status = wait_status(&admin, "shop.example.com", |c| {
        c["serial"] == renewed.as_str()
    })
    .await;
    assert_eq!(status["state"], "valid");
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(meshd.count_log(&["ACME order failed"]), 0);
    // The renewed files replaced the old ones.
    let pem = std::fs::read(site.acme_dir().join("certs/shop.example.com.crt")).unwrap();
    let leaf = CertificateDer::from_pem_slice(&pem).unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(parsed.raw_serial_as_string().replace(':', ""), renewed);
}

/// (3) A host whose validation fails (the CA's DNS sends it to an address
/// where meshd does not listen) keeps the default certificate, and the
/// admin API and the log say which host failed and why; another host
/// gets its certificate all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_order_keeps_the_default_certificate_and_shows_why() {
    let site = AcmeSite::new(None, true, "", "");
    site.pebble.set_address("bad.example.com", "127.0.0.2");
    site.deploy_host("shop", "shop.example.com");
    site.deploy_host("bad", "bad.example.com");
    let meshd = site.start();
    let admin = Admin::of(&meshd);
    let bad = wait_status(&admin, "bad.example.com", |c| c["state"] == "failed").await;
    let error = bad["last_error"].as_str().unwrap();
    assert!(error.contains("bad.example.com"), "{error}");
    assert!(error.to_lowercase().contains("refused"), "{error}");
    assert!(bad["failures"].as_u64().unwrap() >= 1, "{bad}");
    assert!(bad["next_attempt"].is_string(), "{bad}");
    assert!(bad["serial"].is_null(), "{bad}");
    let line = meshd.wait_for_log(&["ACME order failed", "bad.example.com"]);
    assert!(line.contains("refused"), "{line}");

    // The other host is not held up.
    wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    let config = client_config(&site.pebble.root_pem());
    let (_, code, _) = https_get(site.https_addr(), &config, "shop.example.com")
        .await
        .unwrap();
    assert_eq!(code, 200);
    // bad.example.com gets the default certificate (the test CA's, which
    // names it); a client trusting pebble refuses it.
    let default_ca = client_config(&site.pki.ca_pem);
    let (_, code, body) = https_get(site.https_addr(), &default_ca, "bad.example.com")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "Hello from Steelmesh!\n"));
    assert!(https_get(site.https_addr(), &config, "bad.example.com")
        .await
        .is_err());
}

/// (4) A host deployed while meshd runs gets its certificate without a
/// restart; a wildcard host is skipped with a log line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_deployed_later_gets_a_certificate_without_a_restart() {
    let site = AcmeSite::new(None, true, "", "");
    site.apps.deploy("hello", "hello");
    let meshd = site.start();
    let admin = Admin::of(&meshd);
    let reply = admin.get("/v1/certificates").await;
    assert_eq!(reply.json()["certificates"], serde_json::json!([]));

    site.deploy_host("wild", "*.apps.example.com");
    meshd.wait_for_log(&[
        "ACME: no certificate for a wildcard host",
        "*.apps.example.com",
    ]);
    site.deploy_host("shop", "shop.example.com");
    wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    let config = client_config(&site.pebble.root_pem());
    let (_, code, body) = https_get(site.https_addr(), &config, "shop.example.com")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "Hello from Steelmesh!\n"));
    let reply = admin.get("/v1/certificates").await;
    assert_eq!(reply.json()["certificates"].as_array().unwrap().len(), 1);
    assert_eq!(meshd.count_log(&["meshd stopped"]), 0);
}

/// TLS-ALPN-01 (`challenge = "tls-alpn-01"`): pebble validates on the TLS
/// listener only (nothing listens where it would try HTTP-01).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn01_validates_on_the_tls_listener() {
    let site = AcmeSite::new(None, false, "challenge = \"tls-alpn-01\"", "");
    site.deploy_host("shop", "shop.example.com");
    let meshd = site.start();
    let admin = Admin::of(&meshd);
    wait_status(&admin, "shop.example.com", |c| c["state"] == "valid").await;
    let config = client_config(&site.pebble.root_pem());
    let (_, code, body) = https_get(site.https_addr(), &config, "shop.example.com")
        .await
        .unwrap();
    assert_eq!((code, body.as_str()), (200, "Hello from Steelmesh!\n"));
    meshd.wait_for_log(&["ACME: automatic certificates on", "tls-alpn-01"]);
}

/// meshd refuses to start with `[acme]` but no `accept_terms = true`, or
/// without an HTTPS listener, and says why.
#[test]
fn acme_start_up_errors_name_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let apps = AppsDir::new();
    let config = dir.path().join("meshd.toml");
    let run = |toml: &str, args: &[&str]| {
        std::fs::write(&config, toml).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(["--apps", apps.path().to_str().unwrap()])
            .args(["--config", config.to_str().unwrap()])
            .args(["--data-dir", dir.path().join("data").to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let no_terms = "[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\n";
    let stderr = run(no_terms, &["--listen-tls", "127.0.0.1:0"]);
    assert!(
        stderr.contains("[acme] needs accept_terms = true"),
        "{stderr}"
    );
    let terms = "[acme]\ndirectory = \"https://127.0.0.1:1/dir\"\naccept_terms = true\n";
    let stderr = run(terms, &["--listen", "127.0.0.1:0"]);
    assert!(stderr.contains("[acme] needs --listen-tls"), "{stderr}");
}
