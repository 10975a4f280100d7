//! Let's Encrypt's test CA on loopback: `pebble` (an ACME server) and
//! `pebble-challtestsrv` (the DNS server pebble asks, answering every name
//! with 127.0.0.1), both from Debian's `pebble` package.
//!
//! Pebble validates HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`
//! of the address DNS gives: point them at meshd's listeners. Its own TLS
//! certificate is made here (rcgen) and signed by a CA whose PEM is
//! [`Pebble::ca_file`]: the ACME client must trust it. The certificates
//! pebble issues chain to a root it makes at start ([`Pebble::root_pem`]).
//! `PEBBLE_VA_NOSLEEP=1` takes out the random validation delays and
//! `PEBBLE_AUTHZREUSE=0` makes every order validate again; the 5%
//! of nonces pebble rejects on purpose (`badNonce`) stay on: a correct
//! client retries them.

use crate::{free_port, START_TIMEOUT};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;

/// What pebble is started with.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Where pebble connects for HTTP-01 validations.
    pub http_port: u16,
    /// Where pebble connects for TLS-ALPN-01 validations.
    pub tls_port: u16,
    /// The lifetime of the certificates it issues, in seconds (pebble's
    /// default: about five years).
    pub validity_seconds: Option<u64>,
}

/// A running pebble and pebble-challtestsrv, killed when dropped.
pub struct Pebble {
    pebble: Child,
    challtestsrv: Child,
    acme_port: u16,
    management_port: u16,
    challtestsrv_port: u16,
    ca_pem: String,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts both servers on free loopback ports and waits until they
    /// accept connections. A server that exits at start (another test
    /// took one of its ports in between) is started again on new ports.
    pub fn start(options: &PebbleOptions) -> Pebble {
        let mut last_log = String::new();
        for _ in 0..5 {
            match Pebble::try_start(options) {
                Ok(pebble) => return pebble,
                Err(log) => last_log = log,
            }
        }
        panic!("pebble did not start; its log:\n{last_log}");
    }

    fn try_start(options: &PebbleOptions) -> Result<Pebble, String> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let (ca_pem, cert_pem, key_pem) = pebble_tls_certificate();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        std::fs::write(dir.path().join("pebble.crt"), cert_pem).unwrap();
        std::fs::write(dir.path().join("pebble.key"), key_pem).unwrap();
        let dns_port = free_port();
        let challtestsrv_port = free_port();
        let log = |name: &str| {
            std::fs::File::create(dir.path().join(name)).expect("a log file for pebble")
        };
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{challtestsrv_port}")])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("cannot run pebble-challtestsrv (Debian package pebble; .ci/run installs it)");
        let acme_port = free_port();
        let management_port = free_port();
        let mut config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": format!("127.0.0.1:{management_port}"),
                "certificate": dir.path().join("pebble.crt"),
                "privateKey": dir.path().join("pebble.key"),
                "httpPort": options.http_port,
                "tlsPort": options.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(seconds) = options.validity_seconds {
            config["pebble"]["certificateValidityPeriod"] = seconds.into();
        }
        let config_file = dir.path().join("pebble.json");
        std::fs::write(&config_file, config.to_string()).unwrap();
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order validates again (pebble reuses a valid
            // authorization for half of them by default): a renewal test
            // then sees the challenge answered.
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("cannot run pebble (Debian package pebble; .ci/run installs it)");
        let mut pebble = Pebble {
            pebble,
            challtestsrv,
            acme_port,
            management_port,
            challtestsrv_port,
            ca_pem,
            dir,
        };
        let challtestsrv_up = wait_started(&mut pebble.challtestsrv, &[challtestsrv_port]);
        let pebble_up = wait_started(&mut pebble.pebble, &[acme_port, management_port]);
        if challtestsrv_up && pebble_up {
            Ok(pebble)
        } else {
            let challtestsrv_log =
                std::fs::read_to_string(pebble.dir.path().join("challtestsrv.err"))
                    .unwrap_or_default();
            Err(pebble.log() + &challtestsrv_log)
        }
    }

    /// The ACME directory URL.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.acme_port)
    }

    /// A PEM file of the CA of pebble's own TLS certificate (what an ACME
    /// client must trust to talk to it).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root the certificates pebble issues chain to (PEM), from its
    /// management interface (`GET /roots/0`).
    pub fn root_pem(&self) -> String {
        let (status, body) = self.https_get(self.management_port, "/roots/0");
        assert_eq!(status, 200, "GET /roots/0 from pebble: {body}");
        body
    }

    /// Makes challtestsrv answer `host` with `ip` (instead of 127.0.0.1),
    /// so that pebble validates it there.
    pub fn set_address(&self, host: &str, ip: &str) {
        let body = serde_json::json!({"host": host, "addresses": [ip]}).to_string();
        let mut stream = TcpStream::connect(("127.0.0.1", self.challtestsrv_port))
            .expect("pebble-challtestsrv's management port");
        write!(
            stream,
            "POST /add-a HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "challtestsrv /add-a: {answer}"
        );
    }

    /// How many certificates pebble has issued (from its log).
    pub fn issued(&self) -> usize {
        self.log().matches("Issued certificate serial").count()
    }

    /// What pebble logged so far (its standard output and error).
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        read("pebble.log") + &read("pebble.err")
    }

    /// A GET over HTTPS to pebble on `port` (trusting [`Pebble::ca_file`]).
    fn https_get(&self, port: u16, path: &str) -> (u16, String) {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).unwrap())
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).expect("pebble's port");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(
            tls,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        // Pebble may close without close_notify: keep what arrived.
        let _ = tls.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_owned()
        };
        (status, body)
    }

    /// pebble's working directory (config, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Waits until `child` accepts connections on every one of `ports`;
/// `false` if it exits first.
fn wait_started(child: &mut Child, ports: &[u16]) -> bool {
    let started = std::time::Instant::now();
    for &port in ports {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if !matches!(child.try_wait(), Ok(None)) {
                return false;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "a pebble server did not listen on port {port} in time"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    true
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in [&mut self.pebble, &mut self.challtestsrv] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A CA and a certificate it signed for 127.0.0.1 and localhost: pebble's
/// own TLS certificate. Returns (CA PEM, certificate PEM, key PEM).
fn pebble_tls_certificate() -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pebble test TLS CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}
