//! HTTPS on the front door: certificates chosen by SNI ([`CertStore`]),
//! loaded from files and reloaded when they change ([`load_all`],
//! [`CertWatch`]) or obtained by ACME (meshd-acme), and the rustls settings
//! of the TLS listener ([`server_config`]), which also answers TLS-ALPN-01
//! validations ([`crate::Challenges`]).

mod files;
mod store;

pub use files::{load_all, load_cert, CertFiles, CertWatch, POLL_INTERVAL};
pub use store::{Cert, CertStore};

use crate::acme_challenge::{Challenges, ACME_TLS_ALPN};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// How many TLS sessions the server remembers for resumption (TLS 1.2
/// session IDs and TLS 1.3 tickets, which rustls keeps server-side by
/// default): a few hundred bytes each.
const SESSION_CACHE_SIZE: usize = 8192;

/// The TLS listener's settings: TLS 1.2 and 1.3 with rustls' safe cipher
/// suites (ring), HTTP/2 and HTTP/1.1 by ALPN, certificates from `store`,
/// no client certificates. With `challenges` (ACME is on), a handshake
/// asking for `acme-tls/1` gets the TLS-ALPN-01 certificate of its name
/// (and the listener closes the connection after it).
pub fn server_config(
    store: Arc<CertStore>,
    challenges: Option<Arc<Challenges>>,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if challenges.is_some() {
        alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Resolver { store, challenges }));
    config.alpn_protocols = alpn_protocols;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    Ok(config)
}

/// Chooses the certificate of a handshake: a TLS-ALPN-01 validation gets
/// its challenge certificate (or nothing), everyone else the store's.
#[derive(Debug)]
struct Resolver {
    store: Arc<CertStore>,
    challenges: Option<Arc<Challenges>>,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(challenges) = &self.challenges {
            let acme = client_hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|protocol| protocol == ACME_TLS_ALPN));
            if acme {
                let cert = client_hello
                    .server_name()
                    .and_then(|name| challenges.tls_alpn01(name));
                if cert.is_none() {
                    tracing::debug!(
                        server_name = client_hello.server_name(),
                        "TLS-ALPN-01 handshake refused: no validation in progress for this name"
                    );
                }
                return cert;
            }
        }
        self.store.resolve(client_hello)
    }
}
