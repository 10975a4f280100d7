//! What ACME keeps on disk, under `DATA_DIR/acme/<CA>/` (one directory per
//! ACME directory URL, so that staging and production never mix):
//!
//! - `account.json`: the account's URL and private key (PKCS#8);
//! - `certs/HOST.crt` and `certs/HOST.key`: each host's chain (PEM, leaf
//!   first) and private key (PKCS#8 PEM).
//!
//! Directories are made 0700 and files 0600 (the key files are secrets),
//! written to a temporary file and renamed over the old one, so a crash
//! never leaves half a file.

use anyhow::{bail, Context as _, Result};
use instant_acme::AccountCredentials;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// The files of one ACME directory (CA).
#[derive(Debug, Clone)]
pub struct Storage {
    dir: PathBuf,
}

/// A host's certificate files.
#[derive(Debug, Clone)]
pub struct CertPaths {
    /// The chain, PEM.
    pub cert: PathBuf,
    /// The private key, PEM.
    pub key: PathBuf,
}

impl Storage {
    /// The storage of `directory` (the ACME directory URL) under `acme_dir`
    /// (`DATA_DIR/acme`); makes the directories (0700) and narrows their
    /// modes if they are wider.
    pub fn open(acme_dir: &Path, directory: &str) -> Result<Storage> {
        let dir = acme_dir.join(directory_key(directory));
        for dir in [acme_dir.to_owned(), dir.clone(), dir.join("certs")] {
            make_private_dir(&dir)?;
        }
        Ok(Storage { dir })
    }

    /// Where this CA's files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn account_file(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored account, if there is one.
    pub fn load_account(&self) -> Result<Option<AccountCredentials>> {
        let path = self.account_file();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let credentials = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not an ACME account file", path.display()))?;
        Ok(Some(credentials))
    }

    /// Stores the account (mode 0600).
    pub fn save_account(&self, credentials: &AccountCredentials) -> Result<()> {
        let text = serde_json::to_vec_pretty(credentials).context("cannot encode the account")?;
        write_private(&self.account_file(), &text)
    }

    /// The files of `host` (whether they exist or not).
    pub fn cert_paths(&self, host: &str) -> Result<CertPaths> {
        let safe = !host.is_empty()
            && !host.starts_with('.')
            && host
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !safe {
            bail!("{host:?} is not a lower-case ASCII host name");
        }
        let certs = self.dir.join("certs");
        Ok(CertPaths {
            cert: certs.join(format!("{host}.crt")),
            key: certs.join(format!("{host}.key")),
        })
    }

    /// Stores `host`'s chain and key (mode 0600): the key first, so that
    /// a crash in between leaves a pair that does not load (and is ordered
    /// again) rather than an old key with a new certificate unnoticed.
    pub fn save_cert(&self, host: &str, chain_pem: &str, key_pem: &str) -> Result<CertPaths> {
        let paths = self.cert_paths(host)?;
        write_private(&paths.key, key_pem.as_bytes())?;
        write_private(&paths.cert, chain_pem.as_bytes())?;
        Ok(paths)
    }
}

/// The directory name of an ACME directory URL: its host, port and path,
/// with everything but letters, digits, '.' and '-' made '_'
/// (`https://acme-v02.api.letsencrypt.org/directory` ->
/// `acme-v02.api.letsencrypt.org_directory`).
pub fn directory_key(directory: &str) -> String {
    let rest = directory
        .split_once("://")
        .map_or(directory, |(_, rest)| rest);
    let key: String = rest
        .trim_end_matches('/')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() || key.starts_with('.') {
        format!("_{key}")
    } else {
        key
    }
}

/// Makes `dir` (mode 0700) or narrows its mode to 0700.
fn make_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let mode = std::fs::metadata(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600: a temporary file beside it,
/// synced, then renamed over `path`.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let _ = std::fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_keys_are_file_names() {
        assert_eq!(
            directory_key("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            directory_key("https://127.0.0.1:14000/dir"),
            "127.0.0.1_14000_dir"
        );
        assert_eq!(directory_key("https://../x"), "_.._x");
        assert!(!directory_key("https://a/../../etc").contains('/'));
    }

    #[test]
    fn files_and_directories_are_private() {
        let data = tempfile::tempdir().unwrap();
        let acme = data.path().join("acme");
        let storage = Storage::open(&acme, "https://ca.test/dir").unwrap();
        let paths = storage
            .save_cert("shop.example.com", "CHAIN", "KEY")
            .unwrap();
        assert_eq!(std::fs::read_to_string(&paths.cert).unwrap(), "CHAIN");
        assert_eq!(std::fs::read_to_string(&paths.key).unwrap(), "KEY");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.cert), 0o600);
        assert_eq!(mode(&paths.key), 0o600);
        assert_eq!(mode(&acme), 0o700);
        assert_eq!(mode(storage.dir()), 0o700);
        // Overwriting keeps the mode; a wider directory is narrowed on open.
        storage
            .save_cert("shop.example.com", "NEW", "KEY2")
            .unwrap();
        assert_eq!(mode(&paths.key), 0o600);
        std::fs::set_permissions(&acme, std::fs::Permissions::from_mode(0o755)).unwrap();
        Storage::open(&acme, "https://ca.test/dir").unwrap();
        assert_eq!(mode(&acme), 0o700);
        assert!(storage.cert_paths("../evil").is_err());
        assert!(storage.cert_paths("Shop.example.com").is_err());
        assert!(storage.load_account().unwrap().is_none());
    }
}
