//! Throwaway certificates for TLS tests: a CA, a server certificate for
//! 127.0.0.1 and a client certificate, all made with rcgen for each test,
//! and more server certificates for any names ([`TestPki::leaf`]).

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::path::{Path, PathBuf};

/// One certificate and its private key.
pub struct Leaf {
    pub cert_der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_der: Vec<u8>,
    pub key_pem: String,
}

impl Leaf {
    /// The key as rustls takes it.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.key_der.clone()).into()
    }
}

/// A CA and two certificates it signed; it signs more on demand.
pub struct TestPki {
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// For 127.0.0.1.
    pub server: Leaf,
    /// For a client that authenticates with a certificate.
    pub client: Leaf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Steelmesh test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, common_name: &str| sign_leaf(&ca, names, common_name);
        TestPki {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server: leaf(vec!["127.0.0.1".to_owned()], "127.0.0.1"),
            client: leaf(Vec::new(), "meshd test client"),
            issuer: ca,
        }
    }

    /// A new server certificate (fresh key) for `names` (DNS names or IP
    /// addresses), with `common_name` as its subject's CN.
    pub fn leaf(&self, names: &[&str], common_name: &str) -> Leaf {
        let names = names.iter().map(|n| n.to_string()).collect();
        sign_leaf(&self.issuer, names, common_name)
    }

    /// A rustls client configuration that trusts this CA, offering `alpn`
    /// and only the given TLS versions.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// A TLS acceptor serving the server certificate (for 127.0.0.1).
    pub fn server_acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![self.server.cert_der.clone()], self.server.key())
            .unwrap();
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config))
    }

    /// Writes the CA as `ca.pem` and each certificate and key as
    /// `NAME.pem` / `NAME.key` into `dir`; returns `dir`.
    pub fn write_to(&self, dir: &Path) -> PathBuf {
        std::fs::write(dir.join("ca.pem"), &self.ca_pem).unwrap();
        for (name, leaf) in [("server", &self.server), ("client", &self.client)] {
            std::fs::write(dir.join(format!("{name}.pem")), &leaf.cert_pem).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), &leaf.key_pem).unwrap();
        }
        dir.to_owned()
    }
}

fn sign_leaf(
    ca: &CertifiedIssuer<'static, KeyPair>,
    names: Vec<String>,
    common_name: &str,
) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.signed_by(&key, ca).unwrap();
    Leaf {
        cert_der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_der: key.serialize_der(),
        key_pem: key.serialize_pem(),
    }
}
