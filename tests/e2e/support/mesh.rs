//! Helpers of the mesh tests: meshd nodes following one set of NATS
//! servers (each with its own apps dir, data dir and admin API, and able to
//! stop and start again on the same data), the `meshd publish` and
//! `meshd apps --mesh` commands, polls of what each node serves and reports,
//! and a load spread over several nodes.

use super::admin::{Admin, TokenFile};
use super::canary::{answered_by, Load, Tally};
use super::client::{empty, request, Client};
use super::{guest, shared_cache_dir, AppsDir, Meshd};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a test waits for the mesh to converge (a node to serve or
/// report something).
pub const CONVERGE: Duration = Duration::from_secs(60);

/// One meshd node of the mesh. Its apps dir, data dir (artifact store) and
/// admin token outlive its process, so it can be stopped and started again
/// as the same node.
pub struct Node {
    /// `--node-name`.
    pub name: String,
    apps: AppsDir,
    data: tempfile::TempDir,
    /// Kept for the node's life: its admin API reads it at each start.
    token: TokenFile,
    args: Vec<String>,
    meshd: Option<Meshd>,
}

impl Node {
    /// A node named `name` following the NATS servers `urls`, with
    /// `extra` arguments; not started yet.
    pub fn new(name: &str, urls: &str, extra: &[&str]) -> Node {
        let token = TokenFile::new();
        let mut args: Vec<String> = [
            "--mesh",
            urls,
            "--node-name",
            name,
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token.arg(),
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        Node {
            name: name.to_owned(),
            apps: AppsDir::new(),
            data: tempfile::tempdir().expect("temp dir"),
            token,
            args,
            meshd: None,
        }
    }

    /// [`Node::new`], started.
    pub fn start(name: &str, urls: &str, extra: &[&str]) -> Node {
        let mut node = Node::new(name, urls, extra);
        node.run();
        node
    }

    /// The node's own apps directory (`--apps`).
    pub fn apps(&self) -> &AppsDir {
        &self.apps
    }

    /// Starts the node's process (again), on the same apps and data dirs,
    /// and waits until it listens.
    pub fn run(&mut self) {
        assert!(self.meshd.is_none(), "node {} runs already", self.name);
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let meshd = Meshd::builder(self.apps.path())
            .args(&args)
            .data_dir(self.data.path())
            .cache_dir(&shared_cache_dir())
            .start();
        self.meshd = Some(meshd);
    }

    /// Kills the node's process (SIGKILL: no goodbye to NATS or anyone).
    pub fn kill(&mut self) {
        let mut meshd = self.meshd.take().expect("the node runs");
        meshd.signal("KILL");
        meshd.wait_exit(Duration::from_secs(10));
    }

    /// The running process.
    pub fn meshd(&self) -> &Meshd {
        self.meshd.as_ref().expect("the node runs")
    }

    /// `http://ADDR{path}` on the node's public port.
    pub fn url(&self, path: &str) -> String {
        self.meshd().url(path)
    }

    /// A client of the node's admin API.
    pub fn admin(&self) -> Admin {
        Admin::of(self.meshd())
    }
}

/// Runs `meshd ARGS` (a client command) without blocking the test's
/// runtime, and returns what it printed and its exit status.
pub async fn meshd_cli(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .args(&args)
            .output()
            .expect("meshd runs")
    })
    .await
    .expect("the command's thread")
}

/// `meshd publish GUEST.wasm --name APP --mesh URLS EXTRA...`.
pub async fn publish(urls: &str, guest_name: &str, app: &str, extra: &[&str]) -> Output {
    let mut args: Vec<String> = vec![
        "publish".into(),
        guest(guest_name).to_str().expect("utf-8 path").into(),
        "--name".into(),
        app.into(),
        "--mesh".into(),
        urls.into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    meshd_cli(args).await
}

/// [`publish`] with `--wait`, which must succeed with every one of `nodes`
/// live: returns its standard output.
pub async fn publish_live(urls: &str, guest_name: &str, app: &str, nodes: usize) -> String {
    let out = publish(urls, guest_name, app, &["--wait", "--wait-timeout", "60s"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "meshd publish {guest_name} as {app} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("live on {nodes} node(s)")),
        "meshd publish --wait did not answer live on {nodes} node(s):\n{stdout}"
    );
    stdout
}

/// [`publish_live`], tried again (for at most 30 s) while the publish
/// itself fails as unreachable (exit 3 before anything was stored): what an
/// operator does while a NATS cluster elects new stream leaders after
/// losing a member, when JetStream requests time out for a few seconds.
/// A publish that was stored must then be live everywhere at once.
pub async fn publish_live_retrying(
    urls: &str,
    guest_name: &str,
    app: &str,
    nodes: usize,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = publish(urls, guest_name, app, &["--wait", "--wait-timeout", "60s"]).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stored = stdout.contains("published");
        if out.status.code() == Some(3) && !stored && Instant::now() < deadline {
            eprintln!(
                "meshd publish failed as unreachable; trying again: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        assert!(
            out.status.success() && stdout.contains(&format!("live on {nodes} node(s)")),
            "meshd publish {guest_name} as {app} --wait did not answer live on {nodes} node(s) ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        return stdout;
    }
}

/// `meshd publish` without `--wait`, tried again (for at most 90 s) while
/// it fails as unreachable (see [`publish_live_retrying`]).
pub async fn publish_retrying(urls: &str, guest_name: &str, app: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = publish(urls, guest_name, app, &[]).await;
        if out.status.success() {
            return;
        }
        assert!(
            out.status.code() == Some(3) && Instant::now() < deadline,
            "meshd publish {guest_name} as {app} failed: {out:?}"
        );
        eprintln!(
            "meshd publish failed as unreachable; trying again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Polls `url` until guest `guest_name` answers it (at most [`CONVERGE`]).
pub async fn wait_serving(url: &str, guest_name: &str) {
    wait_only(url, guest_name, 1).await;
}

/// Polls `url` until guest `guest_name` answers it (at most `within`).
pub async fn wait_serving_within(url: &str, guest_name: &str, within: Duration) {
    wait_answers(url, guest_name, 1, within).await;
}

/// Polls `url` until `guest_name` answered `in_a_row` requests in a row
/// (at most [`CONVERGE`]): the node serves that guest alone.
pub async fn wait_only(url: &str, guest_name: &str, in_a_row: usize) {
    wait_answers(url, guest_name, in_a_row, CONVERGE).await;
}

async fn wait_answers(url: &str, guest_name: &str, in_a_row: usize, within: Duration) {
    let client = Client::http1();
    let deadline = Instant::now() + within;
    let mut row = 0;
    loop {
        let last = client.fetch(request("GET", url, empty())).await;
        let by = last
            .as_ref()
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| answered_by(&r.body));
        if by == Some(guest_name) {
            row += 1;
            if row >= in_a_row {
                return;
            }
            continue;
        }
        row = 0;
        assert!(
            Instant::now() < deadline,
            "{url} was not answered by {guest_name} within {within:?}; last: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which guests answered `count` requests to `url` (sorted, each once).
pub async fn guests_answering(url: &str, count: usize) -> Vec<&'static str> {
    let client = Client::http1();
    let mut guests = Vec::new();
    for _ in 0..count {
        let reply = client.get(url).await;
        assert_eq!(reply.status, 200, "GET {url}: {}", reply.text());
        let by = answered_by(&reply.body)
            .unwrap_or_else(|| panic!("GET {url}: a body no guest gives: {:?}", reply.text()));
        guests.push(by);
    }
    guests.sort();
    guests.dedup();
    guests
}

/// `GET /v1/mesh` on `admin`, which must answer 200.
pub async fn mesh_view(admin: &Admin) -> serde_json::Value {
    let reply = admin.get("/v1/mesh").await;
    assert_eq!(reply.status, 200, "GET /v1/mesh: {}", reply.text());
    reply.json()
}

/// Node `node`'s status in a `GET /v1/mesh` answer (`null` if absent).
pub fn node_status<'a>(view: &'a serde_json::Value, node: &str) -> &'a serde_json::Value {
    view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == node))
        .unwrap_or(&serde_json::Value::Null)
}

/// Polls `GET /v1/mesh` on `admin` until `done` holds of it (at most
/// [`CONVERGE`]; `what` names the wait in the failure), and returns it.
pub async fn wait_view(
    admin: &Admin,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        // 503: the node cannot read the mesh right now (a NATS cluster
        // electing a stream leader); asked again until the deadline.
        let reply = admin.get("/v1/mesh").await;
        assert!(
            reply.status == 200 || reply.status == 503,
            "GET /v1/mesh: {} {}",
            reply.status,
            reply.text()
        );
        let view = if reply.status == 200 {
            reply.json()
        } else {
            serde_json::json!({ "unavailable": reply.text() })
        };
        if done(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "the mesh did not show {what} within {CONVERGE:?}; last GET /v1/mesh:\n{view:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every one of `nodes` reports to the mesh, having read the
/// whole desired set (a publish with `--wait` then counts them all).
pub async fn wait_synced(admin: &Admin, nodes: &[&str]) {
    wait_view(admin, &format!("nodes {nodes:?} synced"), |view| {
        nodes.iter().all(|n| node_status(view, n)["synced"] == true)
    })
    .await;
}

/// Polls `GET /v1/apps/NAME` on `admin` until `done` holds of the app
/// (at most [`CONVERGE`]), and returns it.
pub async fn wait_app(
    admin: &Admin,
    name: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let reply = admin.get(&format!("/v1/apps/{name}")).await;
        let app = if reply.status == 200 {
            reply.json()
        } else {
            serde_json::Value::Null
        };
        if done(&app) {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "app {name} did not show {what} within {CONVERGE:?}; last: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A [`Load`] on each of several URLs (one per node), moved through the
/// same phases together.
pub struct Loads(Vec<Load>);

impl Loads {
    /// `tasks` clients on each of `urls`.
    pub fn start(urls: &[String], tasks: usize) -> Loads {
        Loads(urls.iter().map(|u| Load::start(u.clone(), tasks)).collect())
    }

    /// Moves every load to the next phase; returns it.
    pub fn next_phase(&self) -> usize {
        self.0.iter().map(Load::next_phase).max().unwrap_or(0)
    }

    /// Waits until every URL gave `count` answers of `guest_name` sent in
    /// phase `phase` or later.
    pub async fn wait_for(&self, phase: usize, guest_name: &str, count: usize) {
        for load in &self.0 {
            load.wait_for(phase, guest_name, count).await;
        }
    }

    /// Stops every client; returns what they saw, together.
    pub async fn stop(self) -> Tally {
        let mut all = Tally::default();
        for load in self.0 {
            let tally = load.stop().await;
            all.answers.extend(tally.answers);
            all.failures.extend(tally.failures);
        }
        all
    }
}
