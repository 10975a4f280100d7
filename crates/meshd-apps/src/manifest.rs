//! `NAME.toml`: the optional, declarative settings of one app.

use crate::limits::Limits;
use crate::outbound::OutboundRule;
use meshd_routes::{Route, RouteError};
use serde::Deserialize;
use std::collections::BTreeMap;
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
    /// How many requests one instance may serve, one after another. Off (1)
    /// by default: every request gets a fresh instance. Above 1, an app's
    /// globals and heap survive from one request to the next in the same
    /// instance: faster, but a request can see what an earlier one of the
    /// same app left in memory.
    pub reuse: Option<u32>,
    /// Resource limits; unset keys take the daemon's defaults.
    #[serde(default)]
    pub limits: Limits,
    /// The environment variables the app sees; nothing else is visible.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A directory the app may read (and, if writable, write), seen as `/`.
    pub files: Option<Files>,
    /// Where the app may send HTTP requests; nowhere by default.
    #[serde(default)]
    pub outbound: Outbound,
    /// The values the app reads through wasi:config.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

/// `[files]`: a directory of the apps directory, preopened as `/`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Files {
    /// Relative to the apps directory, and must stay inside it.
    pub dir: String,
    /// Whether the app may create, change and delete files there.
    #[serde(default)]
    pub writable: bool,
}

/// `[outbound]`: the allowlist of destinations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// Rules such as `"https://*.example.com"` or `"http://127.0.0.1:9000"`.
    #[serde(default)]
    pub allow: Vec<String>,
}

impl Outbound {
    /// The parsed rules. Valid once the manifest has loaded.
    pub fn rules(&self) -> Vec<OutboundRule> {
        self.allow
            .iter()
            .filter_map(|rule| OutboundRule::parse(rule).ok())
            .collect()
    }
}

impl Files {
    /// The directory on the host, resolved against `apps_dir`; it must exist
    /// and, with symlinks followed, stay inside `apps_dir`.
    pub fn resolve(&self, apps_dir: &Path) -> Result<PathBuf, String> {
        let apps = apps_dir
            .canonicalize()
            .map_err(|e| format!("cannot resolve {}: {e}", apps_dir.display()))?;
        let dir = apps
            .join(&self.dir)
            .canonicalize()
            .map_err(|e| format!("[files] dir {:?}: {e}", self.dir))?;
        if !dir.starts_with(&apps) || dir == apps {
            return Err(format!(
                "[files] dir {:?} resolves to {}, outside the apps directory (symlinks leading out are refused)",
                self.dir,
                dir.display()
            ));
        }
        if !dir.is_dir() {
            return Err(format!("[files] dir {:?} is not a directory", self.dir));
        }
        Ok(dir)
    }
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
            Route::parse(route).map_err(|e| invalid(path, "route", e))?;
        }
        for rule in &manifest.outbound.allow {
            OutboundRule::parse(rule).map_err(|e| invalid(path, "outbound.allow", e))?;
        }
        if let Some(files) = &manifest.files {
            if Path::new(&files.dir).is_absolute() {
                return Err(invalid(
                    path,
                    "files.dir",
                    "must be relative to the apps directory",
                ));
            }
        }
        if manifest.reuse == Some(0) {
            return Err(invalid(path, "reuse", "must be at least 1"));
        }
        if manifest.limits.max_concurrency == Some(0) {
            return Err(invalid(
                path,
                "limits.max_concurrency",
                "must be at least 1",
            ));
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

    /// The route of an app called `name` with this manifest: its `route`,
    /// else `/{name}` on any host.
    pub fn mount_route(&self, name: &str) -> Result<Route, RouteError> {
        match &self.route {
            Some(route) => Route::parse(route),
            None => Route::parse(&format!("/{name}")),
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
        assert_eq!(m.mount_route("hello").unwrap().to_string(), "/hello");
    }

    #[test]
    fn route_overrides_the_mount() {
        let m = parse("route = \"/other/prefix\"").unwrap();
        assert_eq!(m.mount_route("hello").unwrap().to_string(), "/other/prefix");
    }

    #[test]
    fn route_may_name_a_host() {
        let m = parse("route = \"Shop.Example.com/api/\"").unwrap();
        assert_eq!(
            m.mount_route("hello").unwrap().to_string(),
            "shop.example.com/api"
        );
        let err = parse("route = \"shop.example.com:8080/\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`route`") && err.contains("port"), "{err}");
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
    fn full_manifest_parses() {
        let m = parse(
            r#"
            route = "/api"
            [limits]
            memory = "32MiB"
            timeout = "2s"
            max_concurrency = 4
            max_body = "1KiB"
            [env]
            GREETING = "hi"
            [files]
            dir = "api-data"
            writable = true
            [outbound]
            allow = ["http://127.0.0.1:9000", "https://*.example.com"]
            [config]
            name = "Steelmesh"
            "#,
        )
        .unwrap();
        assert_eq!(m.limits.memory, Some(32 << 20));
        assert_eq!(m.limits.max_body, Some(1024));
        assert_eq!(m.env["GREETING"], "hi");
        assert!(m.files.as_ref().unwrap().writable);
        assert_eq!(m.outbound.rules().len(), 2);
        assert_eq!(m.config["name"], "Steelmesh");
    }

    #[test]
    fn unknown_keys_in_tables_are_errors() {
        let err = parse(
            "[limits]
memroy = \"1MiB\"",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("memroy"), "{err}");
    }

    #[test]
    fn bad_cpu_weight_names_the_manifest_and_the_key() {
        let err = parse("[limits]\ncpu_weight = 1000")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cpu_weight"), "{err}");
        assert!(err.contains("between 0.01 and 100"), "{err}");
        assert!(err.contains(".toml"), "the manifest is named: {err}");
        let manifest = parse("[limits]\ncpu_weight = 4").unwrap();
        assert_eq!(manifest.limits.cpu_weight, Some(4000));
    }

    #[test]
    fn bad_outbound_rule_names_the_key() {
        let err = parse(
            "[outbound]
allow = [\"example.com\"]",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`outbound.allow`"), "{err}");
    }

    #[test]
    fn files_must_stay_inside_the_apps_dir() {
        let apps = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(apps.path().join("a-data")).unwrap();
        std::os::unix::fs::symlink(outside.path(), apps.path().join("escape")).unwrap();
        let files = |dir: &str| Files {
            dir: dir.into(),
            writable: false,
        };
        assert!(files("a-data").resolve(apps.path()).is_ok());
        let err = files("escape").resolve(apps.path()).unwrap_err();
        assert!(err.contains("outside the apps directory"), "{err}");
        assert!(files("../").resolve(apps.path()).is_err());
        assert!(files(".").resolve(apps.path()).is_err());
        assert!(files("missing").resolve(apps.path()).is_err());
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
