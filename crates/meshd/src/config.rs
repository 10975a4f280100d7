//! `meshd.toml`: daemon-wide settings that are awkward as flags.

use anyhow::{Context as _, Result};
use meshd_apps::Limits;
use serde::Deserialize;
use std::path::Path;

/// The daemon settings file. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Default limits for every app.
    #[serde(default)]
    pub limits: Limits,
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
    }
}
