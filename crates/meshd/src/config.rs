//! `meshd.toml`: daemon-wide settings that are awkward as flags.

use anyhow::{Context as _, Result};
use meshd_apps::{Ceiling, Limits};
use serde::Deserialize;
use std::path::Path;

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
}

/// `[keyvalue]`: the backend and its limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValueConfig {
    /// `redb` (default: a file under --data-dir) or `redis`.
    #[serde(default)]
    pub backend: Backend,
    /// The Redis URL, e.g. `redis://127.0.0.1:6379/`; required for `redis`.
    pub url: Option<String>,
    /// Longest key, e.g. "1KiB".
    pub max_key: Option<bytesize::ByteSize>,
    /// Largest value, e.g. "1MiB".
    pub max_value: Option<bytesize::ByteSize>,
    /// Most bytes one app may store, e.g. "64MiB".
    pub quota: Option<bytesize::ByteSize>,
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
}

impl KeyValueConfig {
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
        toml::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "invalid config file {}: {}",
                path.display(),
                e.to_string().trim_end().replace('\n', " ")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
