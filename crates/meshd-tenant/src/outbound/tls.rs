//! The TLS client settings of outbound HTTPS: Mozilla's root certificates
//! (`webpki-roots`, as wasmtime-wasi-http uses), plus any certificate
//! authorities the operator adds (`[outbound] ca_files` in meshd.toml, for
//! services behind an internal CA); ring, TLS 1.2 and 1.3.

use anyhow::{bail, Context as _, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The client settings every outbound HTTPS connection uses, made once at
/// start-up. Each file of `ca_files` is PEM with one or more certificates;
/// a file that cannot be read, holds no certificate or one rustls refuses
/// is an error naming it.
pub fn client_config(ca_files: &[PathBuf]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    for path in ca_files {
        for cert in read_certificates(path)? {
            roots.add(cert).with_context(|| {
                format!(
                    "invalid CA certificate in {} ([outbound] ca_files)",
                    path.display()
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| {
        format!(
            "cannot read CA file {} ([outbound] ca_files)",
            path.display()
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "invalid PEM in CA file {} ([outbound] ca_files)",
                path.display()
            )
        })?;
    if certs.is_empty() {
        bail!(
            "CA file {} holds no PEM certificate ([outbound] ca_files)",
            path.display()
        );
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_files_are_errors_that_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (path, says) in [
            (&missing, "cannot read CA file"),
            (&empty, "holds no PEM certificate"),
            (&garbage, "invalid PEM in CA file"),
        ] {
            let error = format!(
                "{:#}",
                client_config(std::slice::from_ref(path)).unwrap_err()
            );
            assert!(error.contains(says), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
        }
    }
}
