//! Finding the apps in an apps directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The files of one app: `NAME.wasm` and, if present, `NAME.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppFiles {
    /// The app's name: the file stem of its `.wasm`.
    pub name: String,
    /// `NAME.wasm`.
    pub wasm: PathBuf,
    /// `NAME.toml`, if it exists.
    pub manifest: Option<PathBuf>,
}

/// A directory entry that looks like an app but cannot be one.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The apps directory itself cannot be listed.
    #[error("cannot read apps directory {}: {source}", dir.display())]
    Dir {
        /// The apps directory.
        dir: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A `.wasm` file whose stem is not a usable app name.
    #[error(
        "skipping {}: app names may only contain ASCII letters, digits, '-' and '_' and must start with a letter or digit",
        path.display()
    )]
    BadName {
        /// The file.
        path: PathBuf,
    },
}

/// Whether `path` is a file the apps directory cares about: `NAME.wasm` or
/// `NAME.toml` with a valid name. Temporary files such as `.NAME.tmp` or
/// `NAME.wasm.part` are not.
pub fn is_app_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("wasm") | Some("toml")
    ) && path
        .file_stem()
        .and_then(|s| s.to_str())
        .is_some_and(is_valid_name)
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Lists the apps in `dir`, keyed and ordered by name. Entries with a bad name
/// are returned as soft errors beside the apps that are fine. Hidden files and
/// files other than `*.wasm` and `*.toml` are ignored; a `NAME.toml` without a
/// `NAME.wasm` is not an app.
pub fn scan(dir: &Path) -> Result<(BTreeMap<String, AppFiles>, Vec<ScanError>), ScanError> {
    let dir_err = |source| ScanError::Dir {
        dir: dir.to_owned(),
        source,
    };
    let mut apps = BTreeMap::new();
    let mut errors = Vec::new();
    let mut manifests = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(dir_err)? {
        let path = entry.map_err(dir_err)?.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if file_name.starts_with('.') || !path.is_file() {
            continue;
        }
        let (Some(stem), Some(ext)) = (
            path.file_stem().and_then(|s| s.to_str()),
            path.extension().and_then(|e| e.to_str()),
        ) else {
            continue;
        };
        match ext {
            "wasm" if is_valid_name(stem) => {
                apps.insert(
                    stem.to_owned(),
                    AppFiles {
                        name: stem.to_owned(),
                        wasm: path.clone(),
                        manifest: None,
                    },
                );
            }
            "wasm" => errors.push(ScanError::BadName { path }),
            "toml" if is_valid_name(stem) => {
                manifests.insert(stem.to_owned(), path);
            }
            _ => {}
        }
    }
    for (name, path) in manifests {
        if let Some(app) = apps.get_mut(&name) {
            app.manifest = Some(path);
        }
    }
    Ok((apps, errors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_apps_and_their_manifests_and_ignores_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        for f in [
            "hello.wasm",
            "echo.wasm",
            "echo.toml",
            "orphan.toml",
            ".hello.tmp",
            "notes.txt",
            "bad name.wasm",
        ] {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        let (apps, errors) = scan(dir.path()).unwrap();
        assert_eq!(apps.keys().collect::<Vec<_>>(), ["echo", "hello"]);
        assert_eq!(
            apps["echo"].manifest.as_deref(),
            Some(dir.path().join("echo.toml").as_path())
        );
        assert_eq!(apps["hello"].manifest, None);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("bad name.wasm"));
    }

    #[test]
    fn app_files_are_recognised_by_name() {
        assert!(is_app_file(Path::new("/a/hello.wasm")));
        assert!(is_app_file(Path::new("/a/hello.toml")));
        assert!(!is_app_file(Path::new("/a/.hello.tmp")));
        assert!(!is_app_file(Path::new("/a/.hello.wasm")));
        assert!(!is_app_file(Path::new("/a/hello.wasm.part")));
    }

    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let err = scan(Path::new("/nonexistent/apps")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/apps"));
    }
}
