//! The certificates meshd serves, chosen by SNI.
//!
//! [`CertStore`] holds one certificate per host name (exact names and
//! `*.example.com` wildcards) and an optional default. It is read with one
//! atomic load per handshake and changed by replacing the whole map
//! ([`arc_swap::ArcSwap::rcu`]), so writers (the file reloader today, an
//! ACME client later) add or replace a host's certificate while handshakes
//! go on, without a restart.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// A certificate chain with its key, and what meshd read from it.
#[derive(Debug)]
pub struct Cert {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The leaf's subject, as text (for the log).
    pub subject: String,
    /// The DNS names the leaf is valid for (subject alternative names,
    /// lower case; `*.example.com` for a wildcard).
    pub names: Vec<String>,
    /// When the leaf expires.
    pub not_after: SystemTime,
}

impl Cert {
    /// Whether the leaf is valid for `host` (lower case, without a port):
    /// one of its names is `host`, or a wildcard covering its first label.
    pub fn is_valid_for(&self, host: &str) -> bool {
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(parent) => wildcard_parent(host) == Some(parent),
            None => name == host,
        })
    }
}

/// The part of `host` a wildcard `*.PARENT` matches: everything after its
/// first label (`a.example.com` -> `example.com`). A wildcard covers one
/// label only, so `example.com` itself has no parent here.
fn wildcard_parent(host: &str) -> Option<&str> {
    let (first, parent) = host.split_once('.')?;
    (!first.is_empty() && parent.contains('.')).then_some(parent)
}

/// Which certificate a host name gets: its own, a wildcard's, or the
/// default.
#[derive(Debug, Default, Clone)]
struct Certs {
    /// By exact host name, lower case.
    exact: HashMap<String, Arc<Cert>>,
    /// By the parent of a `*.PARENT` entry, lower case.
    wildcard: HashMap<String, Arc<Cert>>,
    /// For clients without SNI or with a name no entry has.
    default: Option<Arc<Cert>>,
}

/// The certificates meshd serves, by host name; the TLS listener's
/// certificate resolver.
#[derive(Debug, Default)]
pub struct CertStore {
    certs: ArcSwap<Certs>,
}

impl CertStore {
    /// An empty store (every handshake is refused until a certificate is
    /// added).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the certificate of `host`: an exact name
    /// (`shop.example.com`) or a wildcard (`*.example.com`); case does not
    /// matter. Handshakes from now on get the new one.
    pub fn insert(&self, host: &str, cert: Arc<Cert>) {
        let host = host.to_ascii_lowercase();
        self.certs.rcu(|certs| {
            let mut certs = Certs::clone(certs);
            match host.strip_prefix("*.") {
                Some(parent) => certs.wildcard.insert(parent.to_owned(), cert.clone()),
                None => certs.exact.insert(host.clone(), cert.clone()),
            };
            certs
        });
    }

    /// Removes the certificate of `host` (as given to [`CertStore::insert`]).
    pub fn remove(&self, host: &str) {
        let host = host.to_ascii_lowercase();
        self.certs.rcu(|certs| {
            let mut certs = Certs::clone(certs);
            match host.strip_prefix("*.") {
                Some(parent) => certs.wildcard.remove(parent),
                None => certs.exact.remove(&host),
            };
            certs
        });
    }

    /// Sets the certificate for clients whose name no entry has.
    pub fn set_default(&self, cert: Arc<Cert>) {
        self.certs.rcu(|certs| {
            let mut certs = Certs::clone(certs);
            certs.default = Some(cert.clone());
            certs
        });
    }

    /// Whether the store has no certificate at all.
    pub fn is_empty(&self) -> bool {
        let certs = self.certs.load();
        certs.exact.is_empty() && certs.wildcard.is_empty() && certs.default.is_none()
    }

    /// The certificate a client asking for `server_name` gets: the exact
    /// entry, else the wildcard entry for its parent, else the default.
    pub fn choose(&self, server_name: Option<&str>) -> Option<Arc<Cert>> {
        let certs = self.certs.load();
        let Some(name) = server_name else {
            return certs.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(cert) = certs.exact.get(&name) {
            return Some(cert.clone());
        }
        if let Some(cert) = wildcard_parent(&name).and_then(|parent| certs.wildcard.get(parent)) {
            return Some(cert.clone());
        }
        certs.default.clone()
    }

    /// Whether an HTTPS client asking for `host` (without a port) gets a
    /// certificate valid for it: the test behind `redirect_http`, so that
    /// no client is sent to a name whose certificate it would refuse.
    pub fn serves(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.choose(Some(&host))
            .is_some_and(|cert| cert.is_valid_for(&host))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let cert = self.choose(client_hello.server_name());
        if cert.is_none() {
            tracing::debug!(
                server_name = client_hello.server_name(),
                "TLS handshake refused: no certificate for this name and no default"
            );
        }
        cert.map(|cert| cert.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate whose key nobody uses: these tests only choose.
    fn cert(names: &[&str]) -> Arc<Cert> {
        let key = rustls::crypto::ring::sign::any_supported_type(&test_key()).unwrap();
        Arc::new(Cert {
            key: Arc::new(CertifiedKey::new(Vec::new(), key)),
            subject: names.join(","),
            names: names.iter().map(|n| n.to_string()).collect(),
            not_after: SystemTime::UNIX_EPOCH,
        })
    }

    fn test_key() -> rustls::pki_types::PrivateKeyDer<'static> {
        // A P-256 key in PKCS#8, made once with openssl for these tests.
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap()
    }

    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrtGLpnHcANwfFdRF
LzlkiufheY7IotBCDEPPp5fLd1yhRANCAATQV5OLGVUZV9TsgkJYUiJnOwcGHKD3
TIiRGcJgVG0c7BqS61wpjIAw8G69NG7Hn7CoHvZRHEB+BzSfoofQlB89
-----END PRIVATE KEY-----
";

    fn subject(cert: Option<Arc<Cert>>) -> Option<String> {
        cert.map(|c| c.subject.clone())
    }

    #[test]
    fn exact_before_wildcard_before_default() {
        let store = CertStore::new();
        assert!(store.is_empty());
        assert_eq!(subject(store.choose(Some("a.example.com"))), None);
        store.set_default(cert(&["default.test"]));
        store.insert("*.Example.com", cert(&["*.example.com"]));
        store.insert("Shop.example.com", cert(&["shop.example.com"]));
        let chosen = |name| subject(store.choose(name)).unwrap();
        assert_eq!(chosen(Some("shop.example.com")), "shop.example.com");
        assert_eq!(chosen(Some("SHOP.EXAMPLE.COM.")), "shop.example.com");
        assert_eq!(chosen(Some("blog.example.com")), "*.example.com");
        // A wildcard covers one label.
        assert_eq!(chosen(Some("a.blog.example.com")), "default.test");
        assert_eq!(chosen(Some("example.com")), "default.test");
        assert_eq!(chosen(None), "default.test");
        store.remove("SHOP.example.com");
        assert_eq!(chosen(Some("shop.example.com")), "*.example.com");
    }

    #[test]
    fn serves_only_names_the_chosen_certificate_is_valid_for() {
        let store = CertStore::new();
        store.set_default(cert(&["default.test", "*.apps.test"]));
        store.insert("shop.example.com", cert(&["shop.example.com"]));
        assert!(store.serves("shop.example.com"));
        assert!(store.serves("Default.Test"));
        assert!(store.serves("x.apps.test"));
        assert!(!store.serves("apps.test"));
        assert!(!store.serves("other.example.com"));
        assert!(!store.serves("127.0.0.1"));
    }
}
