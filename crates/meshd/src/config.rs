//! `meshd.toml`: daemon-wide settings that are awkward as flags.

use anyhow::{Context as _, Result};
use meshd_apps::{Ceiling, Limits};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The daemon settings file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Default limits for every app.
    #[serde(default)]
    pub limits: Limits,
    /// The most any app's manifest may ask for.
    #[serde(default)]
    pub ceiling: Ceiling,
    /// Where wasi:keyvalue data lives.
    #[serde(default)]
    pub keyvalue: KeyValueConfig,
    /// Daemon-wide settings of apps' outbound HTTP.
    #[serde(default)]
    pub outbound: OutboundConfig,
    /// Certificates of the HTTPS listener (--listen-tls).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Automatic certificates from an ACME CA (Let's Encrypt).
    pub acme: Option<AcmeConfig>,
    /// `idle_unload = "10m"`: as `--idle-unload` (the flag wins). [default:
    /// off]
    #[serde(default, with = "humantime_option")]
    pub idle_unload: Option<std::time::Duration>,
    /// `max_loaded = 2000`: as `--max-loaded` (the flag wins). [default: no
    /// bound]
    #[serde(default)]
    pub max_loaded: Option<std::num::NonZeroU32>,
}

/// `[acme]`: certificates obtained and renewed by meshd from an ACME CA,
/// for the hosts of the routes (or those listed), kept under --data-dir.
///
/// ```toml
/// [acme]
/// directory = "https://acme-v02.api.letsencrypt.org/directory"
/// email = "ops@example.com"
/// accept_terms = true
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeConfig {
    /// The CA's ACME directory URL (https).
    pub directory: String,
    /// The account's contact address (the CA may write about problems).
    pub email: Option<String>,
    /// Must be true: agreeing to the CA's terms of service.
    #[serde(default)]
    pub accept_terms: bool,
    /// PEM certificates to trust for the ACME server instead of Mozilla's
    /// roots (a company CA; pebble in tests). Relative to the config file.
    pub ca_file: Option<PathBuf>,
    /// Only these exact hosts [default: every exact host of the routes
    /// that has no certificate in `[tls]`].
    pub hosts: Option<Vec<String>>,
    /// `http-01` (on the plain listener) or `tls-alpn-01` (on the TLS
    /// listener) [default: http-01 when there is a plain listener].
    pub challenge: Option<ChallengeName>,
}

/// `[acme] challenge`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChallengeName {
    /// HTTP-01.
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

impl AcmeConfig {
    /// Refuses what cannot work, naming the key.
    fn check(&self) -> Result<()> {
        if !self.accept_terms {
            anyhow::bail!(
                "[acme] needs accept_terms = true: meshd creates an account with the CA at {}, which means agreeing to its terms of service (Let's Encrypt: https://letsencrypt.org/repository/)",
                self.directory
            );
        }
        if !self.directory.starts_with("https://") {
            anyhow::bail!(
                "[acme] directory {:?} is not an https:// URL",
                self.directory
            );
        }
        for host in self.hosts.iter().flatten() {
            if host.starts_with("*.") {
                anyhow::bail!("[acme] hosts: {host:?} is a wildcard; wildcard certificates need the DNS-01 challenge, which meshd does not do (give it a certificate in [tls.hosts])");
            }
            check_host(host).map_err(|why| anyhow::anyhow!("[acme] hosts: {host:?}: {why}"))?;
        }
        Ok(())
    }

    /// The hosts listed, lower case.
    pub fn listed_hosts(&self) -> Option<Vec<String>> {
        self.hosts
            .as_ref()
            .map(|hosts| hosts.iter().map(|h| h.to_ascii_lowercase()).collect())
    }
}

/// `[tls]`: the certificates --listen-tls serves, and the redirect of
/// plain HTTP to HTTPS.
///
/// ```toml
/// [tls]
/// cert = "certs/default.crt"   # for clients whose name no host has
/// key = "certs/default.key"
/// redirect_http = true
/// [tls.hosts."shop.example.com"]
/// cert = "certs/shop.crt"
/// key = "certs/shop.key"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The default certificate chain (PEM, leaf first). Relative to the
    /// config file's directory.
    pub cert: Option<PathBuf>,
    /// The default certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// Answer plain-HTTP requests for hosts that have a certificate with a
    /// 308 redirect to HTTPS.
    #[serde(default)]
    pub redirect_http: bool,
    /// Certificates by host name: exact (`shop.example.com`) or one-label
    /// wildcard (`*.example.com`), in ASCII (IDNs in their `xn--` form).
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, CertPair>,
}

/// A certificate chain and its key, both PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPair {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

impl TlsConfig {
    /// Every certificate to load, the default first; errors name the
    /// entry that is wrong.
    pub fn cert_files(&self) -> Result<Vec<meshd_server::tls::CertFiles>> {
        let mut files = Vec::new();
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => files.push(meshd_server::tls::CertFiles {
                host: None,
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => {}
            _ => anyhow::bail!("[tls] needs both cert and key, or neither"),
        }
        for (host, pair) in &self.hosts {
            check_host(host).map_err(|why| anyhow::anyhow!("[tls.hosts.\"{host}\"]: {why}"))?;
            files.push(meshd_server::tls::CertFiles {
                host: Some(host.to_ascii_lowercase()),
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            });
        }
        Ok(files)
    }
}

/// A host name as `[tls.hosts]` takes it: DNS labels of letters, digits
/// and hyphens, optionally `*.` first.
fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let label_ok = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("not a host name (letters, digits, '-' and '.'; IDNs in their xn-- form; a wildcard only as \"*.\" first; no port)");
    }
    if host.starts_with("*.") && !name.contains('.') {
        return Err("a wildcard needs at least two labels after \"*.\"");
    }
    Ok(())
}

/// `[outbound]`: what every app's outbound HTTP shares. (Where each app may
/// go is its own manifest's `[outbound] allow`.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundConfig {
    /// PEM files of certificate authorities to trust for outbound HTTPS,
    /// besides Mozilla's roots (e.g. an internal CA). Relative paths are
    /// relative to the config file's directory.
    #[serde(default)]
    pub ca_files: Vec<PathBuf>,
    /// DNS servers (`"IP:PORT"`) for outbound HTTP's name lookups, instead
    /// of those in /etc/resolv.conf. /etc/hosts is read either way.
    #[serde(default)]
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Longest one name lookup may take, e.g. "2s". [default: 5s]
    #[serde(default, with = "humantime_option")]
    pub lookup_timeout: Option<std::time::Duration>,
}

/// `lookup_timeout = "2s"`.
mod humantime_option {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        // Capped like every duration meshd reads (one day).
        meshd_apps::parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

/// `[keyvalue]`: the backend and its limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValueConfig {
    /// `redb` (default: a file under --data-dir), `nats` or `redis`.
    #[serde(default)]
    pub backend: Backend,
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/`, or the NATS URLs,
    /// e.g. `nats://h1:4222,nats://h2:4222`; required for `redis` and `nats`.
    pub url: Option<String>,
    /// Longest key, e.g. "1KiB".
    pub max_key: Option<bytesize::ByteSize>,
    /// Largest value, e.g. "1MiB".
    pub max_value: Option<bytesize::ByteSize>,
    /// Most bytes one app may store, e.g. "64MiB".
    pub quota: Option<bytesize::ByteSize>,
    /// Redis over TLS (`rediss://`) or NATS (turns TLS on): a PEM CA to
    /// trust instead of the system's roots. Relative to the config file's
    /// directory.
    pub ca_file: Option<PathBuf>,
    /// Redis or NATS over TLS: a PEM client certificate (with
    /// `client_key_file`).
    pub client_cert_file: Option<PathBuf>,
    /// Redis or NATS over TLS: the client certificate's PEM private key.
    pub client_key_file: Option<PathBuf>,
    /// NATS: a credentials file (JWT and NKey seed). Relative to the config
    /// file's directory.
    pub credentials_file: Option<PathBuf>,
    /// NATS: copies JetStream keeps of the key-value bucket (1 to 5; more
    /// than 1 needs nats-server 2.9.21 or newer). [default: 1]
    pub replicas: Option<usize>,
}

/// The key-value backend.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// An embedded database file.
    #[default]
    Redb,
    /// A Redis server shared by several meshd nodes.
    Redis,
    /// A NATS JetStream key-value bucket shared by several meshd nodes.
    Nats,
}

impl KeyValueConfig {
    /// The TLS files for Redis.
    pub fn redis_tls(&self) -> meshd_keyvalue::RedisTls {
        meshd_keyvalue::RedisTls {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    /// The NATS settings, for `url`.
    pub fn nats_options(&self, url: &str) -> meshd_keyvalue::NatsOptions {
        meshd_keyvalue::NatsOptions {
            url: url.to_owned(),
            credentials_file: self.credentials_file.clone(),
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
            replicas: self.replicas.unwrap_or(1),
        }
    }

    /// Settings that only one backend reads must not be set for another.
    fn check_backend_settings(&self) -> Result<()> {
        if self.backend != Backend::Nats {
            if self.credentials_file.is_some() {
                anyhow::bail!("[keyvalue] credentials_file applies to backend = \"nats\" only");
            }
            if self.replicas.is_some() {
                anyhow::bail!("[keyvalue] replicas applies to backend = \"nats\" only");
            }
        }
        Ok(())
    }

    /// The limits, with built-in defaults for unset keys.
    pub fn limits(&self) -> meshd_keyvalue::KvLimits {
        let defaults = meshd_keyvalue::KvLimits::default();
        meshd_keyvalue::KvLimits {
            max_key: self
                .max_key
                .map_or(defaults.max_key, |s| s.as_u64() as usize),
            max_value: self
                .max_value
                .map_or(defaults.max_value, |s| s.as_u64() as usize),
            quota: self.quota.map_or(defaults.quota, |s| s.as_u64()),
        }
    }
}

impl DaemonConfig {
    /// Reads and parses `path`; errors name the file and the key.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: DaemonConfig = toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid config file {}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " ")
            )
        })?;
        config
            .keyvalue
            .check_backend_settings()
            .with_context(|| format!("invalid config file {}", path.display()))?;
        if let Some(acme) = &config.acme {
            acme.check()
                .with_context(|| format!("invalid config file {}", path.display()))?;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let keyvalue = &mut config.keyvalue;
        let tls = &mut config.tls;
        let tls_files = [&mut tls.cert, &mut tls.key].into_iter().flatten().chain(
            tls.hosts
                .values_mut()
                .flat_map(|pair| [&mut pair.cert, &mut pair.key]),
        );
        let acme_files = config
            .acme
            .iter_mut()
            .filter_map(|acme| acme.ca_file.as_mut());
        let files = config
            .outbound
            .ca_files
            .iter_mut()
            .chain(tls_files)
            .chain(acme_files)
            .chain(
                [
                    &mut keyvalue.ca_file,
                    &mut keyvalue.client_cert_file,
                    &mut keyvalue.client_key_file,
                    &mut keyvalue.credentials_file,
                ]
                .into_iter()
                .flatten(),
            );
        for file in files {
            *file = base.join(&*file);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_unload_is_a_duration_and_off_by_default() {
        let config: DaemonConfig = toml::from_str("idle_unload = \"10m\"\n[limits]").unwrap();
        assert_eq!(
            config.idle_unload,
            Some(std::time::Duration::from_secs(600))
        );
        assert_eq!(DaemonConfig::default().idle_unload, None);
        assert!(toml::from_str::<DaemonConfig>("idle_unload = \"soon\"").is_err());
    }

    #[test]
    fn max_loaded_is_a_positive_count_and_unbounded_by_default() {
        let config: DaemonConfig = toml::from_str("max_loaded = 2000").unwrap();
        assert_eq!(config.max_loaded.map(|n| n.get()), Some(2000));
        assert_eq!(DaemonConfig::default().max_loaded, None);
        assert!(toml::from_str::<DaemonConfig>("max_loaded = 0").is_err());
        assert!(toml::from_str::<DaemonConfig>("max_loaded = -1").is_err());
    }

    #[test]
    fn limits_table_parses_and_unknown_keys_fail() {
        let config: DaemonConfig =
            toml::from_str("[limits]\nmemory = \"64MiB\"\nmax_concurrency = 8").unwrap();
        assert_eq!(config.limits.memory, Some(64 << 20));
        assert!(toml::from_str::<DaemonConfig>("[limit]\nmemory = 1").is_err());
        let config: DaemonConfig = toml::from_str(
            "[keyvalue]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1/\"\nquota = \"1KiB\"",
        )
        .unwrap();
        assert_eq!(config.keyvalue.backend, Backend::Redis);
        assert_eq!(config.keyvalue.limits().quota, 1024);
        assert!(toml::from_str::<DaemonConfig>("[keyvalue]\nbackend = \"etcd\"").is_err());
    }

    #[test]
    fn the_nats_backend_takes_its_settings_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd.toml");
        std::fs::write(
            &path,
            "[keyvalue]\nbackend = \"nats\"\nurl = \"nats://a:4222,nats://b:4222\"\n\
             credentials_file = \"meshd.creds\"\nca_file = \"/ca.pem\"\nreplicas = 3\n",
        )
        .unwrap();
        let config = DaemonConfig::load(&path).unwrap();
        assert_eq!(config.keyvalue.backend, Backend::Nats);
        let nats = config.keyvalue.nats_options("nats://a:4222,nats://b:4222");
        assert_eq!(nats.credentials_file, Some(dir.path().join("meshd.creds")));
        assert_eq!(nats.ca_file, Some(PathBuf::from("/ca.pem")));
        assert_eq!(nats.replicas, 3);
        std::fs::write(&path, "[keyvalue]\nbackend = \"redis\"\nreplicas = 3\n").unwrap();
        let e = DaemonConfig::load(&path).unwrap_err();
        assert!(
            format!("{e:#}").contains("replicas applies to backend = \"nats\" only"),
            "{e:#}"
        );
    }

    #[test]
    fn tls_files_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd.toml");
        std::fs::write(
            &path,
            "[outbound]\nca_files = [\"ca/internal.pem\", \"/etc/ssl/other.pem\"]\n\
             [keyvalue]\nca_file = \"redis-ca.pem\"\nclient_key_file = \"/k.pem\"\n",
        )
        .unwrap();
        let config = DaemonConfig::load(&path).unwrap();
        assert_eq!(
            config.outbound.ca_files,
            [
                dir.path().join("ca/internal.pem"),
                PathBuf::from("/etc/ssl/other.pem")
            ]
        );
        let redis = config.keyvalue.redis_tls();
        assert_eq!(redis.ca_file, Some(dir.path().join("redis-ca.pem")));
        assert_eq!(redis.client_key_file, Some(PathBuf::from("/k.pem")));
        assert_eq!(redis.client_cert_file, None);
        assert!(toml::from_str::<DaemonConfig>("[outbound]\nallow = []").is_err());
    }

    #[test]
    fn tls_table_parses_with_paths_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd.toml");
        std::fs::write(
            &path,
            "[tls]\ncert = \"certs/default.crt\"\nkey = \"certs/default.key\"\nredirect_http = true\n\
             [tls.hosts.\"Shop.example.com\"]\ncert = \"/etc/shop.crt\"\nkey = \"shop.key\"\n\
             [tls.hosts.\"*.example.com\"]\ncert = \"w.crt\"\nkey = \"w.key\"\n",
        )
        .unwrap();
        let config = DaemonConfig::load(&path).unwrap();
        assert!(config.tls.redirect_http);
        let files = config.tls.cert_files().unwrap();
        assert_eq!(files.len(), 3);
        assert_eq!(files[0].host, None);
        assert_eq!(files[0].cert, dir.path().join("certs/default.crt"));
        assert_eq!(files[1].host.as_deref(), Some("*.example.com"));
        assert_eq!(files[2].host.as_deref(), Some("shop.example.com"));
        assert_eq!(files[2].cert, PathBuf::from("/etc/shop.crt"));
        assert_eq!(files[2].key, dir.path().join("shop.key"));
    }

    #[test]
    fn bad_tls_tables_are_refused() {
        let parse = |text: &str| toml::from_str::<DaemonConfig>(text).unwrap();
        assert!(parse("[tls]\ncert = \"a.crt\"").tls.cert_files().is_err());
        for host in [
            "shop.example.com:443",
            "*.com",
            "a.*.example.com",
            "https://x.example",
        ] {
            let text = format!("[tls.hosts.\"{host}\"]\ncert = \"c\"\nkey = \"k\"");
            let error = parse(&text).tls.cert_files().unwrap_err().to_string();
            assert!(error.contains(host), "{error}");
        }
        assert!(toml::from_str::<DaemonConfig>("[tls]\nredirect = true").is_err());
    }

    #[test]
    fn acme_table_needs_accepted_terms_and_exact_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshd.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            DaemonConfig::load(&path)
        };
        let good = "[acme]\ndirectory = \"https://ca.test/dir\"\nemail = \"ops@example.com\"\n\
                    accept_terms = true\nca_file = \"pebble.pem\"\nhosts = [\"Shop.example.com\"]\n\
                    challenge = \"tls-alpn-01\"\n";
        let config = load(good).unwrap();
        let acme = config.acme.unwrap();
        assert_eq!(acme.ca_file, Some(dir.path().join("pebble.pem")));
        assert_eq!(acme.listed_hosts().unwrap(), ["shop.example.com"]);
        assert_eq!(acme.challenge, Some(ChallengeName::TlsAlpn01));
        let error = |text: &str| format!("{:#}", load(text).unwrap_err());
        let e = error("[acme]\ndirectory = \"https://ca.test/dir\"\n");
        assert!(e.contains("accept_terms = true"), "{e}");
        let e = error("[acme]\ndirectory = \"https://ca.test/dir\"\naccept_terms = false\n");
        assert!(e.contains("accept_terms = true"), "{e}");
        let e = error(
            "[acme]\ndirectory = \"https://ca.test/dir\"\naccept_terms = true\nhosts = [\"*.example.com\"]\n",
        );
        assert!(e.contains("DNS-01"), "{e}");
        let e = error("[acme]\ndirectory = \"http://ca.test/dir\"\naccept_terms = true\n");
        assert!(e.contains("https://"), "{e}");
        assert!(load("[acme]\ndirectory = \"https://ca.test/dir\"\naccept_terms = true\nchallenge = \"dns-01\"\n").is_err());
        assert!(load(
            "[acme]\ndirectory = \"https://ca.test/dir\"\naccept_terms = true\nrenew = 1\n"
        )
        .is_err());
    }
}
