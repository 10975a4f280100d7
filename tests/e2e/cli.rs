//! The real `meshd` binary's client subcommands (deploy, apps, canary,
//! promote, rollback, rm) against a real meshd with an admin token, their
//! output and their exit codes.

use crate::support::canary::{answered_by, HELLO};
use crate::support::{guest, AppsDir, Client, Meshd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The token both sides use.
const TOKEN: &str = "e2e-cli-token-0123456789abcdef";

/// A meshd with the admin API behind a token file (mode 600), and a work
/// directory for the CLI's files.
struct Setup {
    meshd: Meshd,
    admin: String,
    token_file: PathBuf,
    work: tempfile::TempDir,
    _apps: AppsDir,
}

impl Setup {
    fn start() -> Setup {
        use std::os::unix::fs::PermissionsExt as _;
        let apps = AppsDir::new();
        let work = tempfile::tempdir().expect("temp dir");
        let token_file = work.path().join("admin-token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).expect("write the token");
        std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600))
            .expect("chmod 600");
        let meshd = Meshd::builder(apps.path())
            .args(&["--admin", "127.0.0.1:0", "--admin-token-file"])
            .args(&[token_file.to_str().expect("utf-8 path")])
            .start();
        let admin = meshd.admin_url();
        Setup {
            meshd,
            admin,
            token_file,
            work,
            _apps: apps,
        }
    }

    /// Copies guest `guest` to `FILE` in the work directory; its path.
    fn wasm_file(&self, file: &str, guest_name: &str) -> PathBuf {
        let path = self.work.path().join(file);
        std::fs::copy(guest(guest_name), &path).expect("copy the guest");
        path
    }

    /// `meshd ARGS --admin URL --token-file FILE`.
    fn cli(&self, args: &[&str]) -> Output {
        let token_file = self.token_file.to_str().expect("utf-8 path");
        cli(&[args, &["--admin", &self.admin, "--token-file", token_file]].concat())
    }

    /// [`Setup::cli`], which must exit 0; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert_eq!(
            output.status.code(),
            Some(0),
            "meshd {args:?}: {}",
            show(&output)
        );
        String::from_utf8(output.stdout).expect("utf-8 stdout")
    }
}

/// Runs the meshd binary with `args`, without the client's environment.
fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(args)
        .env_remove("MESHD_ADMIN")
        .env_remove("MESHD_ADMIN_TOKEN_FILE")
        .env_remove("MESHD_ADMIN_CA_FILE")
        .env_remove("MESHD_ADMIN_TIMEOUT")
        .output()
        .expect("meshd runs")
}

fn show(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The guest that answers `GET url` (which must answer 200).
async fn served_by(url: &str) -> &'static str {
    let reply = Client::http1().get(url).await;
    assert_eq!(reply.status, 200, "{url}: {}", reply.text());
    answered_by(&reply.body)
        .unwrap_or_else(|| panic!("{url}: a body of no guest: {}", reply.text()))
}

#[tokio::test]
async fn deploy_list_canary_promote_rollback_and_remove_with_the_cli() {
    let setup = Setup::start();
    let url = setup.meshd.url("/web/");
    let hello = setup.wasm_file("hello-build.wasm", "hello");
    let echo = setup.wasm_file("echo-build.wasm", "echo");

    // deploy FILE --name N: live when the command returns.
    let out = setup.ok(&["deploy", path_str(&hello), "--name", "web"]);
    assert!(out.contains("deployed web"), "{out}");
    assert!(out.contains("/web"), "{out}");
    assert_eq!(served_by(&url).await, "hello");

    // apps: a table with a header and the app's line.
    let out = setup.ok(&["apps"]);
    let mut lines = out.lines();
    let header = lines.next().expect("a header line");
    assert!(
        header.starts_with("NAME") && header.contains("STATE"),
        "{out}"
    );
    let row = lines
        .find(|line| line.split_whitespace().next() == Some("web"))
        .unwrap_or_else(|| panic!("no line for web:\n{out}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..4], ["/web", "api", "live"], "{row}");

    // apps --json: the API's list.
    let out = setup.ok(&["apps", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&out).expect("apps --json is JSON");
    let apps = list["apps"].as_array().expect("a list of apps");
    assert_eq!(apps.len(), 1, "{list}");
    assert_eq!(apps[0]["name"], "web");
    let hello_id = apps[0]["version"]["id"].as_str().expect("an id").to_owned();
    assert_eq!(cells[4], hello_id, "{row}");

    // apps NAME: the app in detail, with its live version.
    let out = setup.ok(&["apps", "web"]);
    assert!(out.contains("web"), "{out}");
    assert!(out.contains(&hello_id), "{out}");

    // canary NAME FILE --percent 20.
    let out = setup.ok(&["canary", "web", path_str(&echo), "--percent", "20"]);
    assert!(out.contains("20%"), "{out}");
    let app: serde_json::Value =
        serde_json::from_str(&setup.ok(&["apps", "web", "--json"])).expect("JSON");
    assert_eq!(app["canary"]["percent"], 20, "{app}");
    let echo_id = app["canary"]["id"].as_str().expect("a canary").to_owned();
    let out = setup.ok(&["apps", "web"]);
    assert!(out.contains(&echo_id) && out.contains("20%"), "{out}");
    // Both sides answer (no echo in 200 requests at 20% has probability
    // 0.8^200 < 1e-19).
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..200 {
        seen.insert(served_by(&url).await);
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["echo", "hello"]);

    // promote NAME: the canary serves everything.
    let out = setup.ok(&["promote", "web"]);
    assert!(out.contains(&echo_id), "{out}");
    for _ in 0..50 {
        assert_eq!(served_by(&url).await, "echo");
    }

    // rollback NAME: the version before the live one serves again.
    let out = setup.ok(&["rollback", "web"]);
    assert!(out.contains(&hello_id), "{out}");
    for _ in 0..50 {
        assert_eq!(served_by(&url).await, "hello");
    }

    // canary NAME --version ID (a kept version), sticky on a header, then
    // abort NAME: the live version serves everything again.
    let out = setup.ok(&[
        "canary",
        "web",
        "--version",
        &echo_id,
        "--percent",
        "50",
        "--sticky-header",
        "x-user",
    ]);
    assert!(out.contains(&echo_id) && out.contains("50%"), "{out}");
    let out = setup.ok(&["apps", "web"]);
    assert!(out.contains("sticky on header x-user"), "{out}");
    let out = setup.ok(&["abort", "web"]);
    assert!(out.contains(&hello_id), "{out}");
    for _ in 0..50 {
        assert_eq!(served_by(&url).await, "hello");
    }
    // A share the CLI knows meshd refuses is a usage error: nothing sent.
    let output = setup.cli(&["canary", "web", path_str(&echo), "--percent", "100"]);
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let output = setup.cli(&["promote", "web"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no_canary"),
        "{}",
        show(&output)
    );

    // rm NAME: gone from the route and from the API.
    let out = setup.ok(&["rm", "web"]);
    assert!(out.contains("removed web"), "{out}");
    assert_eq!(Client::http1().get(&url).await.status, 404);
    // The API forgets it once its (zero) requests in flight have drained.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let output = loop {
        let output = setup.cli(&["apps", "web"]);
        if output.status.code() != Some(0) || std::time::Instant::now() > deadline {
            break output;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not_found"),
        "{}",
        show(&output)
    );
}

#[tokio::test]
async fn a_refused_deploy_exits_1_naming_the_app_and_the_kind() {
    let setup = Setup::start();
    let hello = setup.wasm_file("shop.wasm", "hello");
    setup.ok(&["deploy", path_str(&hello)]);
    let garbage = setup.work.path().join("garbage.wasm");
    std::fs::write(&garbage, b"garbage, not wasm").expect("write");

    let output = setup.cli(&["deploy", path_str(&garbage), "--name", "shop"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("shop"), "{stderr}");
    assert!(stderr.contains("invalid_component"), "{stderr}");
    // The old version still serves.
    assert_eq!(served_by(&setup.meshd.url("/shop/")).await, "hello");
}

#[tokio::test]
async fn a_wrong_token_or_no_meshd_exits_3() {
    let setup = Setup::start();
    let hello = setup.wasm_file("hello.wasm", "hello");

    let wrong = setup.work.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").expect("write");
    let output = cli(&[
        "deploy",
        path_str(&hello),
        "--admin",
        &setup.admin,
        "--token-file",
        path_str(&wrong),
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("401"),
        "{}",
        show(&output)
    );
    // Nothing was deployed.
    assert_eq!(
        Client::http1()
            .get(&setup.meshd.url("/hello/"))
            .await
            .status,
        404
    );

    // A port nothing listens on (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("an address");
    let output = cli(&[
        "apps",
        "--admin",
        &format!("http://{closed}"),
        "--token-file",
        path_str(&setup.token_file),
    ]);
    assert_eq!(output.status.code(), Some(3), "{}", show(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&closed.to_string()),
        "{}",
        show(&output)
    );
}

#[tokio::test]
async fn deploy_sends_the_manifest_beside_the_file() {
    let setup = Setup::start();
    let wasm = setup.wasm_file("side.wasm", "hello");
    std::fs::write(
        setup.work.path().join("side.toml"),
        "route = \"/elsewhere\"\n",
    )
    .expect("write the manifest");

    let output = setup.cli(&["deploy", path_str(&wasm)]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("deployed side") && stdout.contains("/elsewhere"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("side.toml"),
        "{}",
        show(&output)
    );
    let reply = Client::http1().get(&setup.meshd.url("/elsewhere/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), HELLO);
    assert_eq!(
        Client::http1().get(&setup.meshd.url("/side/")).await.status,
        404
    );
}
