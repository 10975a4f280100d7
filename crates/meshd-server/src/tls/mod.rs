//! HTTPS on the front door: certificates chosen by SNI ([`CertStore`]),
//! loaded from files and reloaded when they change ([`load_all`],
//! [`CertWatch`]), and the rustls settings of the TLS listener
//! ([`server_config`]).

mod files;
mod store;

pub use files::{load_all, load_cert, CertFiles, CertWatch, POLL_INTERVAL};
pub use store::{Cert, CertStore};

use std::sync::Arc;

/// How many TLS sessions the server remembers for resumption (TLS 1.2
/// session IDs and TLS 1.3 tickets, which rustls keeps server-side by
/// default): a few hundred bytes each.
const SESSION_CACHE_SIZE: usize = 8192;

/// The TLS listener's settings: TLS 1.2 and 1.3 with rustls' safe cipher
/// suites (ring), HTTP/2 and HTTP/1.1 by ALPN, certificates from `store`,
/// no client certificates.
pub fn server_config(store: Arc<CertStore>) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    Ok(config)
}
