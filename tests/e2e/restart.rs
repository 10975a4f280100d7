//! Graceful restart of meshd itself (SIGUSR2, `POST /v1/restart`): the new
//! process takes over the listening sockets and the key-value store, the old
//! one drains and exits; a new process that fails leaves the old one
//! serving, with the reason in the log.

use crate::support::admin::{Admin, TokenFile};
use crate::support::{empty, request, AppsDir, Client, Meshd};
use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The number after `key` (`new_pid=`, `pid=`) in a log line.
fn number_after(line: &str, key: &str) -> u32 {
    line.split(key)
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {key}N in {line:?}"))
}

/// Waits (without blocking the runtime) until process `pid` has exited.
async fn wait_gone(meshd: &Meshd, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while crate::support::is_running(pid) {
        assert!(
            Instant::now() < deadline,
            "the old meshd (pid {pid}) did not exit after handing over; log:\n{}",
            meshd.log().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `nth` graceful restart by SIGUSR2: waits for the new process to be
/// ready and the old one to exit; returns the new pid.
async fn restart_by_signal(meshd: &Meshd, nth: usize) -> u32 {
    let old = meshd.serving_pid();
    meshd.signal("USR2");
    let line = meshd
        .wait_for_log_count_async(&["the new meshd process is ready"], nth)
        .await;
    let new = number_after(&line, "new_pid=");
    meshd.handed_over_to(new);
    assert_ne!(new, old, "a new process serves");
    wait_gone(meshd, old).await;
    new
}

/// Requests of one kind sent in a loop until told to stop.
struct Tally {
    kind: &'static str,
    ok: u64,
    failures: Vec<String>,
    /// Requests sent again because an HTTP/2 GOAWAY said the server did not
    /// process them.
    retried: u64,
}

/// Whether a request failed on an HTTP/2 connection the server is closing
/// gracefully (GOAWAY, NO_ERROR) before the server processed it. RFC 9113
/// (6.8) lets a client send such a request again, and browsers do;
/// hyper-util's client does not when the GOAWAY arrived just before it
/// picked the connection. A retry of a processed request would show in the
/// counter test as an increment counted twice.
fn unprocessed_by_goaway(error: &str) -> bool {
    error.contains("GoAway(") && error.contains("NO_ERROR")
}

/// Continuous load of several kinds at once.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Tally>>,
}

impl Load {
    fn new() -> Load {
        Load {
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
        }
    }

    /// Sends `method url` again and again with `client` (a fresh one per
    /// request when `client` is `None`: a new connection each time); any
    /// transport error or status other than 200 is a failure.
    fn add(
        &mut self,
        kind: &'static str,
        client: Option<Client>,
        method: &'static str,
        url: String,
    ) {
        let stop = self.stop.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                kind,
                ok: 0,
                failures: Vec::new(),
                retried: 0,
            };
            while !stop.load(Ordering::Relaxed) {
                let client = client.clone().unwrap_or_else(Client::http1);
                let mut result = client.fetch(request(method, &url, empty())).await;
                for _ in 0..3 {
                    match &result {
                        Err(e) if unprocessed_by_goaway(e) => {
                            tally.retried += 1;
                            result = client.fetch(request(method, &url, empty())).await;
                        }
                        _ => break,
                    }
                }
                match result {
                    Ok(reply) if reply.status == 200 => tally.ok += 1,
                    Ok(reply) => tally
                        .failures
                        .push(format!("{} {}", reply.status, reply.text())),
                    Err(e) => tally.failures.push(e),
                }
            }
            tally
        }));
    }

    /// Stops the load and returns every kind's tally.
    async fn finish(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        let mut tallies = Vec::new();
        for task in self.tasks {
            tallies.push(task.await.expect("a load task"));
        }
        tallies
    }
}

/// Every kind of load ran, and none failed.
fn assert_no_failures(tallies: &[Tally], meshd: &Meshd) {
    for tally in tallies {
        assert!(
            tally.failures.is_empty(),
            "{}: {} of {} requests failed: {:?}; log:\n{}",
            tally.kind,
            tally.failures.len(),
            tally.ok as usize + tally.failures.len(),
            &tally.failures[..tally.failures.len().min(5)],
            meshd.log().join("\n")
        );
        assert!(tally.ok > 0, "{}: no request went through", tally.kind);
        eprintln!(
            "{}: {} requests, {} sent again after a GOAWAY",
            tally.kind, tally.ok, tally.retried
        );
    }
}

/// The pid `GET /healthz` on the admin API reports.
async fn admin_pid(admin: &Admin) -> u32 {
    let reply = admin.get("/healthz").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let pid = reply.json()["pid"].as_u64().expect("a pid in /healthz");
    u32::try_from(pid).expect("a pid fits u32")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_restarts_under_load_fail_no_request_and_keep_every_increment() {
    let apps = AppsDir::with(&["hello", "counter"]);
    let token = TokenFile::new();
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0"])
        .args(&["--admin-token-file", &token.arg()])
        .args(&["--metrics-listen", "127.0.0.1:0"])
        .start();
    let admin = Admin::of(&meshd);
    assert_eq!(admin_pid(&admin).await, meshd.pid());

    let mut load = Load::new();
    let hello = meshd.url("/hello/");
    load.add(
        "HTTP/1.1 keep-alive",
        Some(Client::http1()),
        "GET",
        hello.clone(),
    );
    load.add("HTTP/2", Some(Client::http2()), "GET", hello.clone());
    load.add("a new connection per request", None, "GET", hello);
    load.add(
        "admin API",
        Some(Client::http1()),
        "GET",
        admin.url("/healthz"),
    );
    let metrics = meshd.metrics_url();
    load.add("metrics", Some(Client::http1()), "GET", metrics);
    let incr = meshd.url("/counter/incr");
    load.add(
        "counter, HTTP/1.1",
        Some(Client::http1()),
        "POST",
        incr.clone(),
    );
    load.add("counter, HTTP/2", Some(Client::http2()), "POST", incr);

    let mut pids = vec![meshd.pid()];
    for nth in 1..=3 {
        // Some load on each process before the next restart.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let new = restart_by_signal(&meshd, nth).await;
        assert_eq!(
            admin_pid(&admin).await,
            new,
            "the admin API is the new process's"
        );
        assert!(!pids.contains(&new), "pid {new} is new");
        pids.push(new);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tallies = load.finish().await;
    assert_no_failures(&tallies, &meshd);

    // Every acknowledged increment counted once: the stored value is the
    // number of 200 answers.
    let increments: u64 = tallies
        .iter()
        .filter(|t| t.kind.starts_with("counter"))
        .map(|t| t.ok)
        .sum();
    let value = Client::http1().get(&meshd.url("/counter/")).await;
    assert_eq!(value.status, 200, "{}", value.text());
    assert_eq!(value.text().trim(), increments.to_string(), "pids {pids:?}");
    assert_eq!(
        meshd.count_log(&[
            "key-value store released to the new process",
            "released=true"
        ]),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_https_listener_is_handed_over_too() {
    let site = crate::tls::TlsSite::new("");
    let apps = AppsDir::with(&["hello"]);
    let meshd = site.start(apps.path(), &[]);
    let addr = meshd.https_addr();
    let https_get = || async {
        let tls = crate::tls::handshake(
            addr,
            &site.pki,
            "default.test",
            &[&rustls::version::TLS13],
            &[b"h2"],
        )
        .await
        .expect("a TLS handshake");
        crate::tls::get_on(tls.stream, true, "default.test", "/hello/", &[]).await
    };
    assert_eq!(https_get().await.0, 200, "HTTPS answers before the restart");
    let new = restart_by_signal(&meshd, 1).await;
    assert_eq!(
        https_get().await.0,
        200,
        "HTTPS answers after the restart (pid {new})"
    );
    assert_eq!(
        meshd.count_log(&["graceful restart: starting", "sockets=http:https"]),
        1
    );
}

/// A directory holding `meshd`: a link to the built binary, which a test
/// replaces with something else (as an upgrade replaces the file).
struct Program {
    dir: tempfile::TempDir,
}

impl Program {
    fn new() -> Program {
        let program = Program {
            dir: tempfile::tempdir().unwrap(),
        };
        program.restore();
        program
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("meshd")
    }

    /// Puts the built meshd back at the path.
    fn restore(&self) {
        let _ = std::fs::remove_file(self.path());
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_meshd"), self.path()).unwrap();
    }

    /// Replaces meshd at the path with a shell script.
    fn replace_with_script(&self, script: &str) {
        let tmp = self.dir.path().join("meshd.tmp");
        std::fs::write(&tmp, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, self.path()).unwrap();
    }
}

/// meshd serving hello, started from a [`Program`] a test then replaces,
/// with the admin API (no token) and `extra` arguments.
struct Upgradable {
    program: Program,
    _apps: AppsDir,
    meshd: Meshd,
    admin: Admin,
}

impl Upgradable {
    fn start(extra: &[&str]) -> Upgradable {
        let program = Program::new();
        let apps = AppsDir::with(&["hello"]);
        let mut args = vec!["--admin", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let meshd = Meshd::builder(apps.path())
            .program(&program.path())
            .args(&args)
            .start();
        let admin = Admin::with_token(&meshd, None);
        Upgradable {
            program,
            _apps: apps,
            meshd,
            admin,
        }
    }
}

/// The old process still serves `GET /hello/`, its pid is unchanged, and
/// its admin API takes changes.
async fn still_serving(meshd: &Meshd, admin: &Admin) {
    let reply = Client::http1().get(&meshd.url("/hello/")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        admin_pid(admin).await,
        meshd.pid(),
        "the old process serves"
    );
    assert!(crate::support::is_running(meshd.pid()));
    // And takes changes again (they were refused while the restart ran).
    let hello = std::fs::read(crate::support::guest("hello")).unwrap();
    let deploy = admin.put_wasm("after-failed-restart", hello).await;
    // 201 the first time, 200 when a test checks twice.
    assert!(
        matches!(deploy.status.as_u16(), 200 | 201),
        "{}",
        deploy.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_binary_that_exits_at_start_leaves_the_old_one_serving() {
    // `_apps` (not `..`): the apps directory must live as long as meshd.
    let Upgradable {
        program,
        _apps,
        meshd,
        admin,
    } = Upgradable::start(&[]);
    program.replace_with_script("echo 'broken build: cannot start' >&2; exit 3");

    meshd.signal("USR2");
    let line = meshd
        .wait_for_log_async(&["graceful restart failed; this process keeps serving"])
        .await;
    assert!(
        line.contains("closed the ready pipe without saying it was ready"),
        "{line}"
    );
    assert!(line.contains("exit status: 3"), "{line}");
    meshd
        .wait_for_log_async(&["broken build: cannot start"])
        .await;
    still_serving(&meshd, &admin).await;

    // The admin API says the same, with a 500.
    let reply = admin.send("POST", "/v1/restart", None, "").await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(reply.text().contains("exit status: 3"), "{}", reply.text());
    still_serving(&meshd, &admin).await;

    // A working binary back at the path: the next restart takes it (asked
    // for with the command line client this time).
    program.restore();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .args(["restart", "--admin", &meshd.admin_url()])
        .output()
        .await
        .expect("meshd restart runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("pid {} drains and exits", meshd.pid())),
        "{stdout}"
    );
    let new = number_after(&stdout, "restarted: pid ");
    meshd.handed_over_to(new);
    wait_gone(&meshd, meshd.pid()).await;
    assert_eq!(admin_pid(&admin).await, new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_is_never_ready_is_killed_after_the_restart_timeout() {
    // `_apps` (not `..`): the apps directory must live as long as meshd.
    let Upgradable {
        program,
        _apps,
        meshd,
        admin,
    } = Upgradable::start(&["--restart-timeout", "1s"]);
    program.replace_with_script("exec sleep 600");

    meshd.signal("USR2");
    let started = meshd
        .wait_for_log_async(&["the new meshd process started"])
        .await;
    let child = number_after(&started, "pid=");
    let line = meshd
        .wait_for_log_async(&["graceful restart failed; this process keeps serving"])
        .await;
    assert!(
        line.contains("was not ready within --restart-timeout"),
        "{line}"
    );
    assert!(line.contains("killed"), "{line}");
    assert!(
        !crate::support::is_running(child),
        "the stuck process was killed"
    );
    still_serving(&meshd, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_meshd_toml_leaves_the_old_one_serving_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meshd.toml");
    std::fs::write(&config, "[limits]\nmemory = \"64MiB\"\n").unwrap();
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .args(&["--admin", "127.0.0.1:0"])
        .start();
    let admin = Admin::with_token(&meshd, None);
    std::fs::write(&config, "[limits\nmemory = \n").unwrap();

    meshd.signal("USR2");
    meshd
        .wait_for_log_async(&["graceful restart failed; this process keeps serving"])
        .await;
    // The new process's own error names the file.
    let why = meshd.log().join("\n");
    assert!(
        why.lines()
            .any(|l| l.contains("ERROR") && l.contains(config.to_str().unwrap())),
        "the log names the broken file:\n{why}"
    );
    still_serving(&meshd, &admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_one_restart_runs_at_a_time() {
    // `_apps` (not `..`): the apps directory must live as long as meshd.
    let Upgradable {
        program,
        _apps,
        meshd,
        admin,
    } = Upgradable::start(&[]);
    // A slow start: the real meshd, two seconds late (exec keeps the pid,
    // the passed descriptors and the environment).
    program.replace_with_script(&format!(
        "sleep 2; exec '{}' \"$@\"",
        env!("CARGO_BIN_EXE_meshd")
    ));
    let first = tokio::spawn({
        let admin = Admin::with_token(&meshd, None);
        async move { admin.send("POST", "/v1/restart", None, "").await }
    });
    meshd
        .wait_for_log_async(&["the new meshd process started"])
        .await;
    let second = admin.send("POST", "/v1/restart", None, "").await;
    assert_eq!(second.status, 409, "{}", second.text());
    // A deploy now would be lost to the new process (it has read the apps
    // already): refused, to be sent again once the new process serves.
    let echo = std::fs::read(crate::support::guest("echo")).unwrap();
    let deploy = admin.put_wasm("late", echo.clone()).await;
    assert_eq!(deploy.status, 503, "{}", deploy.text());
    assert!(deploy.text().contains("restart"), "{}", deploy.text());
    let first = first.await.unwrap();
    assert_eq!(first.status, 200, "{}", first.text());
    let new = u32::try_from(first.json()["new_pid"].as_u64().unwrap()).unwrap();
    meshd.handed_over_to(new);
    wait_gone(&meshd, meshd.pid()).await;
    assert_eq!(admin_pid(&admin).await, new);
    assert_eq!(meshd.count_log(&["the new meshd process started"]), 1);
    // The new process takes changes.
    let deploy = admin.put_wasm("late", echo).await;
    assert_eq!(deploy.status, 201, "{}", deploy.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_systemd_passed_is_handed_over_too() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // systemd's own tool binds the port and becomes meshd (same pid) at the
    // first connection, passing the socket as `http` (LISTEN_FDS).
    let program = Program::new();
    program.replace_with_script(&format!(
        "exec systemd-socket-activate -l 127.0.0.1:{port} --fdname=http '{}' \"$@\"",
        env!("CARGO_BIN_EXE_meshd")
    ));
    let knock = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the socket never opened");
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .program(&program.path())
        .args(&["--admin", "127.0.0.1:0"])
        .start();
    knock.join().unwrap();
    assert_eq!(
        meshd.addr().port(),
        port,
        "meshd serves the socket it was passed"
    );
    let admin = Admin::with_token(&meshd, None);
    assert_eq!(admin_pid(&admin).await, meshd.pid());

    let new = restart_by_signal(&meshd, 1).await;
    assert_eq!(admin_pid(&admin).await, new);
    let reply = Client::http1()
        .get(&format!("http://127.0.0.1:{port}/hello/"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        meshd.count_log(&["graceful restart: starting", "sockets=http:admin"]),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_refuses_an_app_the_old_one_serves_does_not_take_over() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("meshd.toml");
    std::fs::write(&config, "[limits]\nmemory = \"16MiB\"\n").unwrap();
    let apps = AppsDir::with(&["hello"]);
    apps.deploy("big", "hello");
    apps.write("big.toml", "[limits]\nmemory = \"128MiB\"\n");
    let meshd = Meshd::builder(apps.path())
        .args(&["--config", config.to_str().unwrap()])
        .args(&["--admin", "127.0.0.1:0"])
        .start();
    let admin = Admin::with_token(&meshd, None);
    assert_eq!(Client::http1().get(&meshd.url("/big/")).await.status, 200);
    // The new configuration puts "big" over the ceiling: the new process
    // would refuse it.
    std::fs::write(
        &config,
        "[ceiling]\nmemory = \"64MiB\"\n\n[limits]\nmemory = \"16MiB\"\n",
    )
    .unwrap();

    meshd.signal("USR2");
    meshd
        .wait_for_log_async(&["graceful restart failed; this process keeps serving"])
        .await;
    meshd
        .wait_for_log_async(&["would serve 1 apps (1 refused), the running one serves 2"])
        .await;
    meshd
        .wait_for_log_async(&["app=big", "app not loaded", "limits.memory"])
        .await;
    still_serving(&meshd, &admin).await;
    assert_eq!(Client::http1().get(&meshd.url("/big/")).await.status, 200);
}
