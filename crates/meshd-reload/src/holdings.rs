//! Who holds which route and `[files]` directory, kept on disk, so that a
//! restart does not hand them to whichever app sorts first by name: a tenant
//! that planted a manifest asking for another app's route would otherwise
//! get it at the next start.
//!
//! The file is rewritten after every pass that changes it (temporary file +
//! rename). A file that cannot be read or written is logged and otherwise
//! ignored: holdings then fall back to the running table, as before.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The routes and directories held after a pass, by app name. A route is
/// kept as it is shown (`/api`, `shop.example.com/api`), host included.
/// Sets, so that every app of a pass asks in O(log n) whether it held its
/// route (a start-up asks for thousands); on disk, JSON arrays.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holdings {
    routes: BTreeSet<RouteHolding>,
    dirs: BTreeSet<DirHolding>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct RouteHolding {
    route: String,
    app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct DirHolding {
    dir: PathBuf,
    app: String,
}

impl Holdings {
    /// Records that `app` holds `route` and, if it has one, `dir`.
    pub(crate) fn add(&mut self, app: &str, route: &str, dir: Option<&Path>) {
        self.routes.insert(RouteHolding {
            route: route.to_owned(),
            app: app.to_owned(),
        });
        if let Some(dir) = dir {
            self.dirs.insert(DirHolding {
                dir: dir.to_owned(),
                app: app.to_owned(),
            });
        }
    }

    /// Whether `app` held `route`.
    pub(crate) fn holds_route(&self, app: &str, route: &str) -> bool {
        self.routes.contains(&RouteHolding {
            route: route.to_owned(),
            app: app.to_owned(),
        })
    }

    /// Whether `app` held `dir`.
    pub(crate) fn holds_dir(&self, app: &str, dir: &Path) -> bool {
        self.dirs.contains(&DirHolding {
            dir: dir.to_owned(),
            app: app.to_owned(),
        })
    }

    /// The holdings saved at `path`; none if there is no file (a first
    /// start) or it cannot be used (logged).
    pub(crate) fn load(path: &Path) -> Holdings {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Holdings::default(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the saved route holdings; the first app by name wins conflicts at this start");
                return Holdings::default();
            }
        };
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(file = %path.display(), error = %e, "the saved route holdings are unreadable; the first app by name wins conflicts at this start");
            Holdings::default()
        })
    }

    /// Saves the holdings at `path` (creating its directory), replacing the
    /// file in one step. A failure is logged.
    pub(crate) fn save(&self, path: &Path) {
        if let Err(e) = self.try_save(path) {
            tracing::warn!(file = %path.display(), error = %e, "cannot save the route holdings; after a restart the first app by name wins conflicts");
        }
    }

    fn try_save(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        crate::atomic_file::replace(path, &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_survive_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/holdings.json");
        let mut holdings = Holdings::default();
        holdings.add("shop", "/shop", Some(Path::new("/srv/apps/shop-data")));
        holdings.add("hello", "/hello", None);
        holdings.save(&path);
        let loaded = Holdings::load(&path);
        assert_eq!(loaded, holdings);
        assert!(loaded.holds_route("shop", "/shop"));
        assert!(!loaded.holds_route("aaa", "/shop"));
        assert!(loaded.holds_dir("shop", Path::new("/srv/apps/shop-data")));
        assert!(!loaded.holds_dir("hello", Path::new("/srv/apps/shop-data")));
    }

    #[test]
    fn a_file_saved_as_arrays_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holdings.json");
        let text = r#"{"routes":[{"route":"/shop","app":"shop"},{"route":"/hello","app":"hello"}],"dirs":[]}"#;
        std::fs::write(&path, text).unwrap();
        let loaded = Holdings::load(&path);
        assert!(loaded.holds_route("shop", "/shop"));
        assert!(loaded.holds_route("hello", "/hello"));
        assert!(!loaded.holds_route("hello", "/shop"));
    }

    #[test]
    fn a_missing_or_broken_file_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("holdings.json");
        assert_eq!(Holdings::load(&path), Holdings::default());
        std::fs::write(&path, b"{ not json").unwrap();
        assert_eq!(Holdings::load(&path), Holdings::default());
    }
}
