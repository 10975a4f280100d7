//! Certificates from PEM files: loaded at start, reloaded when the files
//! change.
//!
//! Changes are found by polling the files' metadata (size, modification
//! and change times, inode; symlinks followed) every [`POLL_INTERVAL`],
//! not with file-system notifications: a poll sees the ways certificates
//! are really replaced (certbot's `live/` symlinks moving to new files in
//! `archive/`, Kubernetes swapping a secret volume's `..data` symlink, a
//! network file system) where a watch on the files' directories would miss
//! some, and two `stat` calls per certificate a second cost nothing. A
//! change is loaded once the files have stayed the same for one interval,
//! so a certificate and key written one after the other are read together.

use super::store::{Cert, CertStore};
use anyhow::{anyhow, Context as _, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How often the certificate files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// One certificate meshd serves from files: for a host (`[tls.hosts."H"]`)
/// or the default (`[tls]`).
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// The host name (exact or `*.example.com`); `None` for the default.
    pub host: Option<String>,
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl CertFiles {
    /// The host as the log names it.
    fn label(&self) -> &str {
        self.host.as_deref().unwrap_or("(default)")
    }

    fn install(&self, store: &CertStore, cert: Arc<Cert>) {
        match &self.host {
            Some(host) => store.insert(host, cert),
            None => store.set_default(cert),
        }
    }
}

/// Reads a certificate chain and its key, checks that they belong
/// together, and reads the leaf's subject, names and expiry. Errors name
/// the file and the cause.
pub fn load_cert(files: &CertFiles) -> Result<Cert> {
    let cert_pem = std::fs::read(&files.cert)
        .with_context(|| format!("cannot read certificate file {}", files.cert.display()))?;
    let key_pem = std::fs::read(&files.key)
        .with_context(|| format!("cannot read key file {}", files.key.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow!(
                "certificate file {} is not valid PEM: {e}",
                files.cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(anyhow!(
            "certificate file {} holds no PEM certificate",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        anyhow!(
            "key file {} holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            files.key.display()
        )
    })?;
    let leaf = chain[0].clone();
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow!(
            "the key in {} does not belong to the certificate in {}",
            files.key.display(),
            files.cert.display()
        ),
        e => anyhow!(
            "cannot use {} with {}: {e}",
            files.key.display(),
            files.cert.display()
        ),
    })?;
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).map_err(|e| {
        anyhow!(
            "cannot parse the first certificate in {}: {e}",
            files.cert.display()
        )
    })?;
    let names = match parsed.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => {
                    Some(dns.to_ascii_lowercase())
                }
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            return Err(anyhow!(
                "cannot read the names of the certificate in {}: {e}",
                files.cert.display()
            ))
        }
    };
    let expiry = parsed.validity().not_after.timestamp();
    let not_after =
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(expiry).unwrap_or_default());
    Ok(Cert {
        key: Arc::new(certified),
        subject: parsed.subject().to_string(),
        names,
        not_after,
    })
}

/// Logs a loaded certificate: host, subject, names, expiry; warns when it
/// has expired or when its key file can be read by other users.
fn log_loaded(files: &CertFiles, cert: &Cert, what: &str) {
    let expires = humantime::format_rfc3339_seconds(cert.not_after);
    tracing::info!(
        host = %files.label(),
        subject = %cert.subject,
        names = %cert.names.join(","),
        expires = %expires,
        cert = %files.cert.display(),
        "{what}"
    );
    if cert.not_after < SystemTime::now() {
        tracing::warn!(
            host = %files.label(),
            cert = %files.cert.display(),
            expired = %expires,
            "certificate has expired; clients will refuse it"
        );
    }
    warn_if_key_readable(&files.key);
}

/// Warns when a private key file is readable by its group or by others.
fn warn_if_key_readable(path: &Path) {
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                key = %path.display(),
                mode = format!("{mode:04o}"),
                "private key file is readable by other users; make it 0600 (or 0640 with a dedicated group)"
            );
        }
    }
}

/// Loads every certificate into `store`; the first that cannot be loaded
/// is the error (meshd does not start with a certificate missing).
pub fn load_all(entries: &[CertFiles], store: &CertStore) -> Result<CertWatch> {
    let mut watched = Vec::with_capacity(entries.len());
    for files in entries {
        let stamp = Stamp::of(files);
        let cert = load_cert(files)
            .with_context(|| format!("cannot load the TLS certificate of {}", files.label()))?;
        log_loaded(files, &cert, "TLS certificate loaded");
        files.install(store, Arc::new(cert));
        watched.push(Watched {
            files: files.clone(),
            loaded: stamp.clone(),
            seen: stamp,
        });
    }
    Ok(CertWatch { entries: watched })
}

/// What a file looked like when last checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// Both files of an entry (`None`: the file could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Option<FileStamp>, Option<FileStamp>);

impl Stamp {
    fn of(files: &CertFiles) -> Stamp {
        let file = |path: &Path| {
            std::fs::metadata(path).ok().map(|m| FileStamp {
                dev: m.dev(),
                ino: m.ino(),
                len: m.len(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
            })
        };
        Stamp(file(&files.cert), file(&files.key))
    }
}

struct Watched {
    files: CertFiles,
    /// The files as they were when last loaded (or tried).
    loaded: Stamp,
    /// The files at the last check.
    seen: Stamp,
}

/// The certificate files being watched for changes; see the module docs.
pub struct CertWatch {
    entries: Vec<Watched>,
}

impl CertWatch {
    /// Checks the files every [`POLL_INTERVAL`] until `shutdown`, and
    /// replaces a certificate in `store` when its files changed and loaded
    /// well. A change that does not load keeps the old certificate and is
    /// logged with the file and the cause (once per change).
    pub async fn run(
        mut self,
        store: Arc<CertStore>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut shutdown => return,
            }
            // A handful of stats and, rarely, reads of small files: done on
            // the blocking pool so a slow disk never stalls a worker.
            let entries = std::mem::take(&mut self.entries);
            let store = store.clone();
            match tokio::task::spawn_blocking(move || {
                let mut entries = entries;
                for entry in &mut entries {
                    entry.check(&store);
                }
                entries
            })
            .await
            {
                Ok(entries) => self.entries = entries,
                Err(e) => {
                    tracing::error!("the certificate reloader stopped: {e}");
                    return;
                }
            }
        }
    }
}

impl Watched {
    fn check(&mut self, store: &CertStore) {
        let now = Stamp::of(&self.files);
        let settled = now == self.seen;
        self.seen = now.clone();
        if now == self.loaded || !settled {
            return;
        }
        self.loaded = now;
        match load_cert(&self.files) {
            Ok(cert) => {
                log_loaded(&self.files, &cert, "TLS certificate reloaded");
                self.files.install(store, Arc::new(cert));
            }
            Err(e) => tracing::error!(
                host = %self.files.label(),
                "TLS certificate not reloaded, the previous one stays in use: {e:#}"
            ),
        }
    }
}
