//! The end-to-end harness: real guests built once per run, a real `meshd`
//! process on an ephemeral loopback port, real HTTP/1.1 and HTTP/2 clients.

#![allow(dead_code)] // Each test module uses a different part of the harness.

mod client;
mod meshd;

pub use client::{count_body, empty, generated, request, Client};
pub use meshd::Meshd;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root exists")
}

/// Builds every guest in `apps-example/` (examples and test fixtures) once per
/// test run and returns the directory holding the `.wasm` files.
pub fn guests_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let target = root.join("target/guests");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .current_dir(&root)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("apps-example/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("cargo runs");
        assert!(
            output.status.success(),
            "building the test guests failed (is the target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join("wasm32-wasip2/release")
    })
}

/// The built component of guest `name` (`hello`, `echo`, `stream`, ...).
pub fn guest(name: &str) -> PathBuf {
    let path = guests_dir().join(format!("{}.wasm", name.replace('-', "_")));
    assert!(
        path.exists(),
        "guest {name} was not built: {}",
        path.display()
    );
    path
}

/// A temporary apps directory.
pub struct AppsDir {
    dir: tempfile::TempDir,
}

impl AppsDir {
    /// An empty apps directory.
    pub fn new() -> Self {
        AppsDir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// An apps directory with the given guests deployed under their own names.
    pub fn with(guests: &[&str]) -> Self {
        let apps = Self::new();
        for name in guests {
            apps.deploy(name, name);
        }
        apps
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Deploys guest `guest` as app `app`: written beside the directory, then
    /// renamed in, as the operations guide recommends.
    pub fn deploy(&self, app: &str, guest_name: &str) {
        let bytes = std::fs::read(guest(guest_name)).expect("guest is readable");
        self.write_atomically(&format!("{app}.wasm"), &bytes);
    }

    /// Writes `file` in the apps directory in one step (temp file + rename).
    pub fn write_atomically(&self, file: &str, bytes: &[u8]) {
        let tmp = self.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, bytes).expect("write temp file");
        std::fs::rename(&tmp, self.path().join(file)).expect("rename into place");
    }

    /// Writes `file` in the apps directory directly.
    pub fn write(&self, file: &str, bytes: impl AsRef<[u8]>) {
        std::fs::write(self.path().join(file), bytes).expect("write file");
    }

    /// Removes `file` from the apps directory.
    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.path().join(file)).expect("remove file");
    }
}
