//! `NAME.toml`: the optional, declarative settings of one app.

use meshd_routes::{Prefix, PrefixError};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The parsed contents of `NAME.toml`. Every key is optional; an unknown key
/// is an error so that a typo never silently does nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Where the app is mounted; defaults to `/NAME`.
    pub route: Option<String>,
    /// A path (as the app sees it, e.g. `/healthz`) that a new version must
    /// answer with 2xx to a GET before it takes traffic.
    pub health: Option<String>,
}

/// A manifest that could not be used. The message names the file and, where
/// the TOML parser knows it, the key and position.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {}: {source}", path.display())]
    Read {
        /// The manifest file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong
    /// type.
    #[error("invalid manifest {}: {message}", path.display())]
    Parse {
        /// The manifest file.
        path: PathBuf,
        /// The parser's explanation, including the key and line.
        message: String,
    },
    /// A value is well-typed but not acceptable.
    #[error("invalid manifest {}: key `{key}`: {reason}", path.display())]
    Invalid {
        /// The manifest file.
        path: PathBuf,
        /// The offending key.
        key: &'static str,
        /// Why its value is not acceptable.
        reason: String,
    },
}

impl Manifest {
    /// Reads and validates a manifest file.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates manifest text; `path` is only used in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        if let Some(route) = &manifest.route {
            Prefix::parse(route).map_err(|e| invalid(path, "route", e))?;
        }
        if let Some(health) = &manifest.health {
            if !health.starts_with('/') || health.parse::<http::uri::PathAndQuery>().is_err() {
                return Err(invalid(
                    path,
                    "health",
                    format!("{health:?} must be a path starting with '/'"),
                ));
            }
        }
        Ok(manifest)
    }

    /// The mount prefix of an app called `name` with this manifest.
    pub fn prefix(&self, name: &str) -> Result<Prefix, PrefixError> {
        match &self.route {
            Some(route) => Prefix::parse(route),
            None => Prefix::parse(&format!("/{name}")),
        }
    }
}

fn invalid(path: &Path, key: &'static str, reason: impl ToString) -> ManifestError {
    ManifestError::Invalid {
        path: path.to_owned(),
        key,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(Path::new("apps/x.toml"), text)
    }

    #[test]
    fn empty_manifest_mounts_at_the_app_name() {
        let m = parse("").unwrap();
        assert_eq!(m.prefix("hello").unwrap().as_str(), "/hello");
    }

    #[test]
    fn route_overrides_the_mount() {
        let m = parse("route = \"/other/prefix\"").unwrap();
        assert_eq!(m.prefix("hello").unwrap().as_str(), "/other/prefix");
    }

    #[test]
    fn unknown_key_names_the_file_and_the_key() {
        let err = parse("rout = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("apps/x.toml"), "{err}");
        assert!(err.contains("rout"), "{err}");
    }

    #[test]
    fn malformed_toml_names_the_file() {
        let err = parse("route = ").unwrap_err().to_string();
        assert!(err.contains("apps/x.toml"), "{err}");
    }

    #[test]
    fn health_must_be_a_path() {
        assert_eq!(
            parse("health = \"/healthz?deep=1\"")
                .unwrap()
                .health
                .as_deref(),
            Some("/healthz?deep=1")
        );
        let err = parse("health = \"healthz\"").unwrap_err().to_string();
        assert!(err.contains("`health`"), "{err}");
    }

    #[test]
    fn bad_route_names_the_key() {
        let err = parse("route = \"nope\"").unwrap_err().to_string();
        assert!(err.contains("`route`"), "{err}");
        assert!(err.contains("must start with '/'"), "{err}");
    }
}
