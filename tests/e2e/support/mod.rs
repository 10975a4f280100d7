//! The end-to-end harness: real guests built once per run, a real `meshd`
//! process on an ephemeral loopback port, real HTTP/1.1 and HTTP/2 clients.

#![allow(dead_code)] // Each test module uses a different part of the harness.

pub mod admin;
pub mod canary;
mod client;
pub mod mesh;
mod meshd;
mod pki;

pub use client::{count_body, empty, full, generated, request, spawn_get, Client};
pub use meshd::{is_running, Meshd, MeshdBuilder};
pub use pki::TestPki;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The value of the one sample of the metrics `text` whose line starts with
/// `name` and contains every one of `labels`.
pub fn metric_sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with(name) && labels.iter().all(|l| line.contains(l)))
        .collect();
    assert_eq!(lines.len(), 1, "{name} {labels:?} in:\n{text}");
    let value = lines[0].rsplit(' ').next().unwrap_or_default();
    value
        .parse()
        .unwrap_or_else(|e| panic!("{value:?} is not a number ({e}) in {}", lines[0]))
}

/// Waits until no request of `app` is in flight on `meshd` (started with
/// `--metrics-listen`), its guest's side included.
///
/// A client has the whole response once the guest finishes the body, a
/// moment before the guest returns and its instance is parked for reuse. A
/// test whose next request must find that instance parked waits for this.
pub async fn wait_until_no_request_in_flight(meshd: &Meshd, app: &str) {
    let metrics_url = meshd.metrics_url();
    let label = format!("app=\"{app}\"");
    let client = Client::http1();
    let started = std::time::Instant::now();
    loop {
        let text = client.get(&metrics_url).await.text();
        let in_flight = metric_sample(&text, "meshd_requests_in_flight{", &[&label]);
        if in_flight == 0.0 {
            return;
        }
        assert!(
            started.elapsed() < meshd::WAIT,
            "{app}: {in_flight} requests in flight after {:?}",
            meshd::WAIT
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The compiled artifacts (`*.cwasm`) in a compile cache directory.
pub fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .expect("the cache directory is readable")
        .map(|e| e.expect("a readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

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

/// Builds the Python and JavaScript example apps once per test run (their
/// build scripts install their toolchains on first use) and returns the
/// directory holding `greeter-py.wasm` and `greeter-js.wasm`.
pub fn polyglot_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = repo_root();
        let out = root.join("target/guests/polyglot");
        for script in ["apps-example/python/build.sh", "apps-example/js/build.sh"] {
            let output = Command::new("bash")
                .arg(root.join(script))
                .arg(&out)
                .output()
                .expect("bash runs");
            assert!(
                output.status.success(),
                "{script} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        out
    })
}

/// A compile cache shared by every test of this run (and the next runs), for
/// the large polyglot components: compiling them takes seconds each.
pub fn shared_cache_dir() -> PathBuf {
    let dir = repo_root().join("target/test-cache");
    std::fs::create_dir_all(&dir).expect("create the shared cache dir");
    dir
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

/// Peak resident memory of a process, in bytes (`VmHWM`, Linux).
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
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

    /// Deploys a built polyglot app (`greeter-py`, `greeter-js`) under its
    /// own name.
    pub fn deploy_polyglot(&self, app: &str) {
        let bytes =
            std::fs::read(polyglot_dir().join(format!("{app}.wasm"))).expect("app is built");
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
