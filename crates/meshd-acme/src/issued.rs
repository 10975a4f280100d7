//! A certificate meshd obtained: loaded from its files, with what the
//! schedule and the status need from its leaf.

use crate::storage::CertPaths;
use anyhow::{anyhow, Context as _, Result};
use meshd_server::tls::{Cert, CertFiles};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A loaded certificate and the facts about its leaf.
pub struct Issued {
    /// What the TLS listener serves.
    pub cert: Arc<Cert>,
    /// The leaf's issuer (distinguished name).
    pub issuer: String,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// When the leaf became valid.
    pub not_before: SystemTime,
    /// When the leaf expires.
    pub not_after: SystemTime,
    /// When the files were written (when meshd obtained it).
    pub obtained: SystemTime,
}

impl Issued {
    /// Loads `host`'s files; errors name the file and the cause.
    pub fn load(host: &str, paths: &CertPaths) -> Result<Issued> {
        let files = CertFiles {
            host: Some(host.to_owned()),
            cert: paths.cert.clone(),
            key: paths.key.clone(),
        };
        let cert = meshd_server::tls::load_cert(&files)?;
        if !cert.is_valid_for(host) {
            return Err(anyhow!(
                "the certificate in {} is not valid for {host} (names: {})",
                paths.cert.display(),
                cert.names.join(", ")
            ));
        }
        let leaf = cert
            .key
            .cert
            .first()
            .context("the certificate chain is empty")?
            .clone();
        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf)
            .map_err(|e| anyhow!("cannot parse {}: {e}", paths.cert.display()))?;
        let time = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0).unsigned_abs());
        let obtained = std::fs::metadata(&paths.cert)
            .and_then(|meta| meta.modified())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Issued {
            issuer: parsed.issuer().to_string(),
            serial: parsed.raw_serial_as_string().replace(':', ""),
            not_before: time(parsed.validity().not_before.timestamp()),
            not_after: time(parsed.validity().not_after.timestamp()),
            obtained,
            cert: Arc::new(cert),
        })
    }

    /// When it is renewed (two thirds of its lifetime).
    pub fn renew_at(&self) -> SystemTime {
        crate::schedule::renew_at(self.not_before, self.not_after)
    }
}
