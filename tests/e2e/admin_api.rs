//! The admin API (`--admin`), end to end: a real meshd with its admin
//! listener on loopback, real uploads of real guests, and the public port
//! checked for what actually serves, across restarts on the same data dir.

use crate::support::admin::{sha256_file, sha256_hex, wait_for_answer, Admin, TokenFile, TOKEN};
use crate::support::{guest, shared_cache_dir, AppsDir, Client, Meshd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const HELLO: &str = "Hello from Steelmesh!\n";

/// meshd on `apps` with its data in `data`, the admin API on an ephemeral
/// loopback port and `token` as its token file.
fn start(apps: &AppsDir, data: &Path, token: &TokenFile) -> Meshd {
    Meshd::builder(apps.path())
        .args(&["--admin", "127.0.0.1:0", "--admin-token-file", &token.arg()])
        .data_dir(data)
        .cache_dir(&shared_cache_dir())
        .start()
}

/// The bytes of guest `name`.
fn wasm(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).expect("the guest is readable")
}

/// The names in a `GET /v1/apps` answer, in order.
fn names(apps: &[serde_json::Value]) -> Vec<String> {
    apps.iter()
        .map(|a| a["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// Asserts that `reply` is the refusal `status` of kind `kind`, and returns
/// its message.
fn refusal(reply: &crate::support::admin::Reply, status: u16, kind: &str) -> String {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert!(
        reply.headers[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{:?}",
        reply.headers
    );
    let body = reply.json();
    assert_eq!(body["error"]["kind"], kind, "{body}");
    body["error"]["message"]
        .as_str()
        .expect("the error has a message")
        .to_owned()
}

/// Asserts that `app` (an app object) is live at `route` with `digest`.
fn assert_live(app: &serde_json::Value, route: &str, digest: &str) {
    assert_eq!(app["state"], "live", "{app:#}");
    assert_eq!(app["route"], route, "{app:#}");
    assert_eq!(app["version"]["digest"], digest, "{app:#}");
    assert_eq!(app["version"]["id"], &digest[..12], "{app:#}");
}

/// The digests of an app object's kept versions, newest first.
fn kept(app: &serde_json::Value) -> Vec<String> {
    app["kept"]
        .as_array()
        .unwrap_or_else(|| panic!("no kept list in {app:#}"))
        .iter()
        .map(|k| k["digest"].as_str().expect("a digest").to_owned())
        .collect()
}

#[tokio::test]
async fn without_the_right_token_every_request_gets_401_and_nothing_changes() {
    let apps = AppsDir::with(&["hello"]);
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let before = admin.apps().await;
    assert_eq!(names(&before), ["hello"]);

    let echo = wasm("echo");
    for (who, client) in [
        ("no token", Admin::with_token(&meshd, None)),
        (
            "a wrong token",
            Admin::with_token(&meshd, Some("not-the-token")),
        ),
        (
            "the token with one more character",
            Admin::with_token(&meshd, Some(&format!("{TOKEN}x"))),
        ),
    ] {
        let mut replies = vec![
            ("GET /v1/apps", client.get("/v1/apps").await),
            ("GET /v1/apps/hello", client.get("/v1/apps/hello").await),
            ("GET /metrics", client.get("/metrics").await),
            (
                "PUT /v1/apps/echo",
                client.put_wasm("echo", echo.clone()).await,
            ),
            ("DELETE /v1/apps/hello", client.delete("hello").await),
            ("POST rollback", client.rollback("hello", "").await),
        ];
        replies.push(("GET /nope", client.get("/nope").await));
        for (what, reply) in replies {
            assert_eq!(reply.status, 401, "{what} with {who}: {}", reply.text());
            assert_eq!(reply.headers["www-authenticate"], "Bearer", "{what}");
            assert_eq!(reply.json()["error"]["kind"], "unauthorized", "{what}");
            if what.starts_with("PUT") {
                // Its body was not read: the connection cannot carry the
                // next request (the next one here uses a fresh connection).
                assert_eq!(reply.headers["connection"], "close", "{what}");
            }
        }
    }

    // Nothing changed: the same apps, nothing deployed or removed, hello
    // still serves and echo does not.
    let after = admin.apps().await;
    assert_eq!(names(&after), ["hello"]);
    assert_eq!(
        after[0]["version"]["digest"],
        before[0]["version"]["digest"]
    );
    assert_eq!(meshd.count_log(&["app deployed", "echo"]), 0);
    assert_eq!(meshd.count_log(&["app removed"]), 0);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    assert_eq!(client.get(&meshd.url("/echo")).await.status, 404);
    // Wrong tokens are warned about, at most once a second (a client
    // guessing tokens cannot flood the log); a missing token is not.
    meshd.wait_for_log(&["wrong token"]);
    let warned = meshd.count_log(&["wrong token"]);
    assert!(
        (1..=14).contains(&warned),
        "{warned} warnings for 14 requests with a wrong token"
    );

    // The right token works.
    let reply = admin.put_wasm("echo", echo).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let reply = client.get(&meshd.url("/echo/x")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["path"], "/x");
}

/// Runs meshd with `args` and an empty apps dir, expecting it to refuse to
/// start: its exit status and stderr.
fn start_expecting_refusal(args: &[&str]) -> (std::process::ExitStatus, String) {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--apps")
        .arg(apps.path())
        .args(["--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache_dir())
        .arg("--data-dir")
        .arg(data.path())
        .args(args)
        .env("MESHD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("meshd starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("wait");
            panic!(
                "meshd {args:?} did not refuse to start within 30 s:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = child.wait_with_output().expect("stderr");
    (status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn an_exposed_admin_api_without_a_token_refuses_to_start() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let (status, stderr) = start_expecting_refusal(&["--admin", addr]);
        assert!(!status.success(), "{addr}: {status}\n{stderr}");
        assert!(
            stderr.contains("not a loopback address") && stderr.contains("--admin-token-file"),
            "{addr}: the message says why and what to do:\n{stderr}"
        );
        assert!(!stderr.contains("meshd listening"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn an_admin_token_file_others_can_read_is_refused_at_start() {
    for mode in [0o644, 0o640, 0o604] {
        let token = TokenFile::with_mode(TOKEN, mode);
        let (status, stderr) = start_expecting_refusal(&[
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token.arg(),
        ]);
        assert!(!status.success(), "mode {mode:o}: {status}\n{stderr}");
        assert!(
            stderr.contains(&token.arg())
                && stderr.contains(&format!("{mode:04o}"))
                && stderr.contains("chmod 600"),
            "mode {mode:o}: the message names the file, its mode and the fix:\n{stderr}"
        );
        assert!(!stderr.contains("meshd listening"), "{stderr}");
    }
    let empty = TokenFile::with_mode("", 0o600);
    let (status, stderr) =
        start_expecting_refusal(&["--admin", "127.0.0.1:0", "--admin-token-file", &empty.arg()]);
    assert!(!status.success(), "an empty token: {status}\n{stderr}");
    assert!(stderr.contains("empty"), "{stderr}");
}

#[tokio::test]
async fn an_exposed_admin_api_with_a_token_starts_and_requires_it() {
    let apps = AppsDir::new();
    let token = TokenFile::new();
    let meshd = Meshd::builder(apps.path())
        .args(&["--admin", "0.0.0.0:0", "--admin-token-file", &token.arg()])
        .start();
    // The log names 0.0.0.0:PORT; reach it on loopback.
    let url = meshd.admin_url().replace("0.0.0.0", "127.0.0.1");
    let client = Client::http1();
    assert_eq!(client.get(&format!("{url}/v1/apps")).await.status, 401);
    let mut req =
        crate::support::request("GET", &format!("{url}/v1/apps"), crate::support::empty());
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let reply = client.fetch(req).await.expect("the admin API answers");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["apps"], serde_json::json!([]));
}

#[tokio::test]
async fn deploys_through_the_api_serve_and_are_listed_with_their_versions() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let client = Client::http1();
    let hello_digest = sha256_file(&guest("hello"));
    let echo_digest = sha256_file(&guest("echo"));

    // The wasm alone: created (201), mounted at /NAME.
    let reply = admin.put_wasm("greeter", wasm("hello")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let answer = reply.json();
    assert_eq!(answer["name"], "greeter");
    assert_eq!(answer["origin"], "api");
    assert_live(&answer, "/greeter", &hello_digest);
    assert_eq!(client.get(&meshd.url("/greeter/")).await.text(), HELLO);
    meshd.wait_for_log(&["app deployed", "greeter", &hello_digest[..12]]);

    // The same bytes again: 200, nothing changed.
    let reply = admin.put_wasm("greeter", wasm("hello")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_live(&reply.json(), "/greeter", &hello_digest);
    assert_eq!(meshd.count_log(&["app updated", "greeter"]), 0);
    assert_eq!(meshd.count_log(&["app deployed", "greeter"]), 1);

    // A multipart form with a manifest that sets the route.
    let reply = admin
        .put_form("api-echo", &wasm("echo"), Some("route = \"/api-hello\"\n"))
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_live(&reply.json(), "/api-hello", &echo_digest);
    let served = client.get(&meshd.url("/api-hello/a/b")).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json()["path"], "/a/b");
    assert_eq!(served.json()["x_forwarded_prefix"], "/api-hello");
    assert_eq!(client.get(&meshd.url("/api-echo")).await.status, 404);
    // The same form again: 200.
    let reply = admin
        .put_form("api-echo", &wasm("echo"), Some("route = \"/api-hello\"\n"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    // Some requests, then the counters.
    for _ in 0..3 {
        assert_eq!(client.get(&meshd.url("/greeter")).await.status, 200);
    }
    let list = admin.apps().await;
    assert_eq!(names(&list), ["api-echo", "greeter"], "sorted by name");
    for app in &list {
        assert_eq!(app["origin"], "api", "{app:#}");
        assert_eq!(app["state"], "live", "{app:#}");
        assert!(app["last_error"].is_null(), "{app:#}");
        assert!(app["canary"].is_null(), "{app:#}");
    }
    let greeter = admin.app("greeter").await;
    assert_eq!(&greeter, &list[1], "the list holds the same object");
    assert_live(&greeter, "/greeter", &hello_digest);
    assert_eq!(
        greeter["version"]["requests"],
        serde_json::json!({"1xx": 0, "2xx": 4, "3xx": 0, "4xx": 0, "5xx": 0}),
        "{greeter:#}"
    );
    assert_eq!(greeter["in_flight"], 0);
    assert_eq!(kept(&greeter), [hello_digest.as_str()]);
    let kept0 = &greeter["kept"][0];
    assert_eq!(kept0["live"], true);
    assert_eq!(kept0["origin"], "api");
    assert_eq!(kept0["id"], &hello_digest[..12]);
    assert!(kept0["manifest"].is_null(), "no manifest: {greeter:#}");
    let deployed_at = greeter["version"]["deployed_at"].as_str().unwrap();
    assert!(
        deployed_at.len() == 20 && deployed_at.ends_with('Z'),
        "RFC 3339 UTC to the second: {deployed_at}"
    );
    let api_echo = admin.app("api-echo").await;
    assert_eq!(
        api_echo["kept"][0]["manifest"],
        sha256_hex(b"route = \"/api-hello\"\n"),
        "the kept version names its manifest's digest: {api_echo:#}"
    );
    assert_eq!(api_echo["version"]["requests"]["2xx"], 1, "{api_echo:#}");

    // A new version of greeter: 201, and both are kept, newest first.
    let reply = admin.put_wasm("greeter", wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let greeter = reply.json();
    assert_live(&greeter, "/greeter", &echo_digest);
    assert_eq!(
        kept(&greeter),
        [echo_digest.as_str(), hello_digest.as_str()]
    );
    assert_eq!(greeter["kept"][0]["live"], true);
    assert_eq!(greeter["kept"][1]["live"], false);
    assert_eq!(
        greeter["version"]["requests"]["2xx"], 0,
        "counters are per version"
    );
    meshd.wait_for_log(&["app updated", "greeter", &echo_digest[..12]]);
    assert_eq!(
        client.get(&meshd.url("/greeter/x")).await.json()["path"],
        "/x"
    );

    // Unknown app, bad name.
    let reply = admin.get("/v1/apps/nobody").await;
    refusal(&reply, 404, "not_found");
    let reply = admin.put_wasm("bad.name", wasm("hello")).await;
    refusal(&reply, 400, "bad_request");
}

#[tokio::test]
async fn bad_uploads_are_refused_with_their_cause_and_the_old_version_serves_across_a_restart() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let hello_digest = sha256_file(&guest("hello"));
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        let client = Client::http1();
        let reply = admin.put_wasm("app", wasm("hello")).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        let reply = admin
            .put_form("holder", &wasm("echo"), Some("route = \"/held\"\n"))
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text());

        let core_module = wat::parse_str("(module)").expect("a core module");
        // What, the bytes, the manifest, the kind of refusal, what its
        // message names.
        type Case<'a> = (&'a str, Vec<u8>, Option<&'a str>, &'a str, &'a [&'a str]);
        let cases: Vec<Case> = vec![
            (
                "garbage",
                b"this is not wasm at all".to_vec(),
                None,
                "invalid_component",
                &[],
            ),
            (
                "a core module",
                core_module,
                None,
                "invalid_component",
                &["module"],
            ),
            (
                "a component whose health check answers 503",
                wasm("stream"),
                Some("health = \"/status?code=503\"\n"),
                "health_check",
                &["/status?code=503", "503", "stream status 503"],
            ),
            (
                "a component whose health check traps",
                wasm("hostile"),
                Some("health = \"/trap\"\n"),
                "health_check",
                &["/trap", "trap"],
            ),
            (
                "a route held by another app",
                wasm("echo"),
                Some("route = \"/held\"\n"),
                "route_conflict",
                &["holder", "/held"],
            ),
        ];
        for (refused, (what, bytes, manifest, kind, named)) in cases.into_iter().enumerate() {
            let digest = sha256_hex(&bytes);
            let reply = match manifest {
                Some(manifest) => admin.put_form("app", &bytes, Some(manifest)).await,
                None => admin.put_wasm("app", bytes).await,
            };
            let message = refusal(&reply, 422, kind);
            assert_eq!(reply.json()["error"]["app"], "app", "{what}");
            for needle in named {
                assert!(
                    message.contains(needle),
                    "{what}: {needle:?} in {message:?}"
                );
            }
            // The old version serves, and shows the refusal.
            let reply = client.get(&meshd.url("/app")).await;
            assert_eq!(reply.status, 200, "{what}");
            assert_eq!(reply.text(), HELLO, "{what}");
            let app = admin.app("app").await;
            assert_live(&app, "/app", &hello_digest);
            assert_eq!(app["last_error"]["kind"], kind, "{what}: {app:#}");
            assert_eq!(kept(&app), [hello_digest.as_str()], "{what}: nothing kept");
            // The log is read from meshd's stderr as it comes: wait for this
            // refusal's own line, not any earlier one.
            meshd.wait_for_log_count(
                &["new version refused", "keeps serving", &hello_digest[..12]],
                refused + 1,
            );
            assert!(
                !meshd.log().iter().any(|l| l.contains("app updated")
                    && l.contains("app")
                    && l.contains(&digest[..12])),
                "{what}: not deployed"
            );
        }
        assert_eq!(
            meshd.count_log(&["new version refused", &hello_digest[..12]]),
            5
        );
        // The holder kept its route.
        let held = client.get(&meshd.url("/held/x")).await;
        assert_eq!(held.json()["path"], "/x");
        meshd.signal("TERM");
    }

    // A restart on the same data dir loads the old version, not a refused one.
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    meshd.wait_for_log(&["restoring the apps deployed through the admin API"]);
    assert_eq!(
        wait_for_answer(&meshd.url("/app"), 200, None).await.text(),
        HELLO
    );
    let app = admin.app("app").await;
    assert_live(&app, "/app", &hello_digest);
    assert_eq!(kept(&app), [hello_digest.as_str()]);
    assert_eq!(meshd.count_log(&["app not loaded"]), 0);
    assert_eq!(
        meshd.count_log(&["refused"]),
        0,
        "nothing refused is loaded"
    );
    let held = Client::http1().get(&meshd.url("/held/x")).await;
    assert_eq!(held.json()["path"], "/x");
}

#[tokio::test]
async fn deploy_restart_rollback_and_delete_survive_restarts() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let hello_digest = sha256_file(&guest("hello"));
    let echo_digest = sha256_file(&guest("echo"));
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        for (name, g) in [("app", "hello"), ("app", "echo"), ("solo", "hello")] {
            let reply = admin.put_wasm(name, wasm(g)).await;
            assert_eq!(reply.status, 201, "{name} {g}: {}", reply.text());
        }
        meshd.signal("TERM");
    }

    // Restart: the apps deployed through the API serve, same versions.
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        let client = Client::http1();
        meshd.wait_for_log(&["restoring the apps deployed through the admin API"]);
        let served = wait_for_answer(&meshd.url("/app/x"), 200, None).await;
        assert_eq!(served.json()["path"], "/x", "v2 (echo) serves");
        assert_eq!(client.get(&meshd.url("/solo")).await.text(), HELLO);
        let app = admin.app("app").await;
        assert_eq!(app["origin"], "api");
        assert_live(&app, "/app", &echo_digest);
        assert_eq!(kept(&app), [echo_digest.as_str(), hello_digest.as_str()]);

        // Rollback after a restart: the previous version, hello.
        let reply = admin.rollback("app", "").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_live(&reply.json(), "/app", &hello_digest);
        assert_eq!(client.get(&meshd.url("/app/x")).await.text(), HELLO);
        meshd.wait_for_log(&["rolling back", "app"]);
        assert_live(&admin.app("app").await, "/app", &hello_digest);

        // Rollback to an explicit version, by its 12-hex id.
        let body = format!(r#"{{"version": "{}"}}"#, &echo_digest[..12]);
        let reply = admin.rollback("app", &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_live(&reply.json(), "/app", &echo_digest);
        assert_eq!(client.get(&meshd.url("/app/y")).await.json()["path"], "/y");
        // And by its full digest, with the sha256: prefix.
        let body = format!(r#"{{"version": "sha256:{hello_digest}"}}"#);
        let reply = admin.rollback("app", &body).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_live(&reply.json(), "/app", &hello_digest);
        assert_eq!(client.get(&meshd.url("/app/y")).await.text(), HELLO);

        // A version the app does not keep; a malformed one.
        let body = format!(r#"{{"version": "{}"}}"#, &sha256_hex(b"other")[..12]);
        refusal(&admin.rollback("app", &body).await, 422, "no_such_version");
        refusal(
            &admin.rollback("app", r#"{"version": "xyz"}"#).await,
            400,
            "bad_request",
        );
        assert_live(&admin.app("app").await, "/app", &hello_digest);

        // Nothing earlier to roll back to.
        let message = refusal(
            &admin.rollback("solo", "").await,
            422,
            "nothing_to_roll_back",
        );
        assert!(!message.is_empty());
        assert_eq!(client.get(&meshd.url("/solo")).await.text(), HELLO);
        refusal(&admin.rollback("nobody", "").await, 404, "not_found");

        // Delete: 200, the route answers 404 once drained, and it is gone.
        let reply = admin.delete("app").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json(), serde_json::json!({"removed": "app"}));
        wait_for_answer(&meshd.url("/app"), 404, None).await;
        meshd.wait_for_log(&["app removed", "app"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while admin.get("/v1/apps/app").await.status != 404 {
            assert!(
                Instant::now() < deadline,
                "app still listed after its drain"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(names(&admin.apps().await), ["solo"]);
        refusal(&admin.delete("app").await, 404, "not_found");
        meshd.signal("TERM");
    }

    // After another restart the deleted app stays gone; solo still serves.
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let client = Client::http1();
    assert_eq!(
        wait_for_answer(&meshd.url("/solo"), 200, None).await.text(),
        HELLO
    );
    assert_eq!(client.get(&meshd.url("/app")).await.status, 404);
    assert_eq!(names(&admin.apps().await), ["solo"]);
    refusal(&admin.get("/v1/apps/app").await, 404, "not_found");
    // Deploying it again starts a fresh history.
    let reply = admin.put_wasm("app", wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(kept(&reply.json()), [echo_digest]);
}

#[tokio::test]
async fn the_directory_and_the_api_do_not_take_each_others_apps() {
    let apps = AppsDir::with(&["hello"]);
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let client = Client::http1();
    let hello_digest = sha256_file(&guest("hello"));
    let echo_digest = sha256_file(&guest("echo"));
    assert_eq!(admin.app("hello").await["origin"], "dir");
    // A directory version is kept in the background; its kept list comes
    // back to the listing shortly after.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let app = admin.app("hello").await;
        if kept(&app) == [hello_digest.as_str()] {
            assert_eq!(app["kept"][0]["origin"], "dir", "{app:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the directory version is never listed as kept: {app:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A directory app cannot be replaced, rolled back or deleted through the API.
    for (what, reply) in [
        ("PUT", admin.put_wasm("hello", wasm("echo")).await),
        ("DELETE", admin.delete("hello").await),
        ("rollback", admin.rollback("hello", "").await),
    ] {
        let message = refusal(&reply, 422, "origin_conflict");
        assert!(
            message.contains("apps directory")
                && message.contains("admin API")
                && message.contains("hello"),
            "{what}: the message names both sources: {message}"
        );
    }
    // Nor can an API app take its route.
    let reply = admin
        .put_form("thief", &wasm("echo"), Some("route = \"/hello\"\n"))
        .await;
    let message = refusal(&reply, 422, "route_conflict");
    assert!(message.contains("hello"), "{message}");
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    let app = admin.app("hello").await;
    assert_eq!(app["origin"], "dir");
    assert_live(&app, "/hello", &hello_digest);

    // A name first deployed through the API; then a file of that name in the
    // directory: the directory's version is refused, the API's serves.
    let reply = admin.put_wasm("mine", wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    apps.deploy("mine", "hello");
    let line = meshd.wait_for_log(&["new version refused", "app=mine"]);
    assert!(
        line.contains("apps directory") && line.contains("admin API"),
        "the log names both sources: {line}"
    );
    // A later change in the directory (another app) rescans it: still refused.
    apps.deploy("other", "hello");
    wait_for_answer(&meshd.url("/other"), 200, Some(HELLO)).await;
    assert_eq!(client.get(&meshd.url("/mine/x")).await.json()["path"], "/x");
    let mine = admin.app("mine").await;
    assert_eq!(mine["origin"], "api", "{mine:#}");
    assert_live(&mine, "/mine", &echo_digest);
    assert_eq!(kept(&mine), [echo_digest.as_str()], "{mine:#}");

    // A directory snapshot without the directory's apps leaves API apps alone.
    apps.remove("mine.wasm");
    apps.remove("hello.wasm");
    apps.remove("other.wasm");
    wait_for_answer(&meshd.url("/hello"), 404, None).await;
    wait_for_answer(&meshd.url("/other"), 404, None).await;
    assert_eq!(admin.delete("thief").await.status, 200, "the refused thief");
    let deadline = Instant::now() + Duration::from_secs(30);
    while names(&admin.apps().await) != ["mine"] {
        assert!(
            Instant::now() < deadline,
            "the directory's apps are still listed: {:#?}",
            admin.apps().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client.get(&meshd.url("/mine/y")).await.json()["path"], "/y");
    let mine = admin.app("mine").await;
    assert_eq!(mine["origin"], "api");
    assert_live(&mine, "/mine", &echo_digest);

    // Now that the directory has no hello, the API may take the name.
    let reply = admin.put_wasm("hello", wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(reply.json()["origin"], "api");
}

#[tokio::test]
async fn listing_apps_does_not_wait_for_a_slow_health_check() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let platform = wasm("platform");
    // Warm the compile cache, so that the health check is the slow part.
    let reply = admin.put_wasm("warm", platform.clone()).await;
    assert_eq!(reply.status, 201, "{}", reply.text());

    // The issue asks for 100 ms. Measured here during a deploy: a median
    // under 1 ms, the slowest of ~130 listings 2 to 5 ms. But this machine has 2 cores shared by three
    // engineers building and testing at once, where a loopback request can
    // stall past 100 ms for reasons that have nothing to do with meshd. So
    // the median listing is held to the issue's 100 ms, and every listing to
    // 500 ms: both far below the 3 s health check that a listing waiting for
    // the deploy would take. The figures are printed in the test's output.
    const MEDIAN_BOUND: Duration = Duration::from_millis(100);
    const BOUND: Duration = Duration::from_millis(500);
    // The [env] makes it a new version of warm's code (other settings), so
    // that its health check runs.
    let slow_manifest = "health = \"/sleep?ms=3000\"\n[env]\nDEPLOY = \"2\"\n";

    for (name, first) in [("slow", true), ("warm", false)] {
        let deploy = {
            let base = meshd.admin_url();
            let (content_type, body) =
                crate::support::admin::multipart(&platform, Some(slow_manifest));
            tokio::spawn(async move {
                let started = Instant::now();
                let mut req = crate::support::request(
                    "PUT",
                    &format!("{base}/v1/apps/{name}"),
                    crate::support::full(body),
                );
                req.headers_mut().insert(
                    http::header::AUTHORIZATION,
                    format!("Bearer {TOKEN}").parse().unwrap(),
                );
                req.headers_mut()
                    .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
                let reply = Client::http1()
                    .fetch(req)
                    .await
                    .expect("the deploy answers");
                (reply, started.elapsed())
            })
        };
        let mut took_all = Vec::new();
        let mut seen_in_progress = 0;
        while !deploy.is_finished() {
            let started = Instant::now();
            let list = admin.apps().await;
            let took = started.elapsed();
            took_all.push(took);
            assert!(took < BOUND, "GET /v1/apps took {took:?} during a deploy");
            let app = list.iter().find(|a| a["name"] == name);
            let in_progress = match (first, app) {
                (true, Some(app)) => app["state"] == "loading" && app["version"].is_null(),
                (false, Some(app)) => {
                    // The old version serves meanwhile.
                    assert_eq!(app["state"], "live", "{app:#}");
                    assert_eq!(app["version"]["digest"], sha256_hex(&platform), "{app:#}");
                    true
                }
                (true, None) => false,
                (false, None) => panic!("warm vanished: {list:#?}"),
            };
            if in_progress && !deploy.is_finished() {
                seen_in_progress += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (reply, took) = deploy.await.expect("the deploy task");
        assert_eq!(reply.status, 201, "{name}: {}", reply.text());
        assert!(
            took >= Duration::from_secs(3),
            "the deploy waited for the health check"
        );
        assert!(
            seen_in_progress >= 10,
            "{name}: the listing showed the deploy in progress only {seen_in_progress} times"
        );
        took_all.sort();
        let median = took_all[took_all.len() / 2];
        let slowest = took_all[took_all.len() - 1];
        eprintln!(
            "{name}: {} GET /v1/apps during the deploy: median {median:?}, slowest {slowest:?}",
            took_all.len()
        );
        assert!(median < MEDIAN_BOUND, "median GET /v1/apps {median:?}");
        let app = admin.app(name).await;
        assert_eq!(app["state"], "live");
        assert_eq!(
            app["kept"][0]["manifest"],
            sha256_hex(slow_manifest.as_bytes())
        );
    }
}

#[tokio::test]
async fn a_newcomer_asking_for_a_held_route_is_refused_before_and_after_the_holder_redeploys() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let client = Client::http1();
    let shared = Some("route = \"/shared\"\n");

    let reply = admin.put_form("holder", &wasm("hello"), shared).await;
    assert_eq!(reply.status, 201, "{}", reply.text());

    let check_refused = |reply: crate::support::admin::Reply, when: &str| {
        let message = refusal(&reply, 422, "route_conflict");
        assert!(
            message.contains("holder") && message.contains("/shared"),
            "{when}: the refusal names the holder and the route: {message}"
        );
    };
    check_refused(
        admin.put_form("newcomer", &wasm("echo"), shared).await,
        "before",
    );
    let newcomer = admin.app("newcomer").await;
    assert_eq!(newcomer["state"], "refused", "{newcomer:#}");
    assert!(newcomer["version"].is_null(), "{newcomer:#}");
    assert_eq!(newcomer["last_error"]["kind"], "route_conflict");
    assert_eq!(client.get(&meshd.url("/shared")).await.text(), HELLO);

    // The holder redeploys (new code, same route): it keeps the route.
    let reply = admin.put_form("holder", &wasm("echo"), shared).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        client.get(&meshd.url("/shared/x")).await.json()["path"],
        "/x"
    );
    check_refused(
        admin.put_form("newcomer", &wasm("hello"), shared).await,
        "after",
    );
    // And again after a rollback of the holder.
    let reply = admin.rollback("holder", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    check_refused(
        admin.put_form("newcomer", &wasm("echo"), shared).await,
        "after a rollback",
    );
    assert_eq!(client.get(&meshd.url("/shared")).await.text(), HELLO);
    let holder = admin.app("holder").await;
    assert_eq!(holder["route"], "/shared");
    assert!(holder["last_error"].is_null(), "{holder:#}");

    // A refused newcomer has no version, but can be removed from the list.
    let reply = admin.delete("newcomer").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    refusal(&admin.get("/v1/apps/newcomer").await, 404, "not_found");
    assert_eq!(names(&admin.apps().await), ["holder"]);

    // Once the holder is gone, the route is free.
    assert_eq!(admin.delete("holder").await.status, 200);
    wait_for_answer(&meshd.url("/shared"), 404, None).await;
    let reply = admin.put_form("newcomer", &wasm("echo"), shared).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        client.get(&meshd.url("/shared/z")).await.json()["path"],
        "/z"
    );
}

#[tokio::test]
async fn probes_answer_without_the_token_and_metrics_need_it() {
    let apps = AppsDir::with(&["hello"]);
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let anonymous = Admin::with_token(&meshd, None);
    let admin = Admin::of(&meshd);

    let healthz = anonymous.get("/healthz").await;
    assert_eq!(healthz.status, 200, "{}", healthz.text());
    assert_eq!(
        healthz.json(),
        serde_json::json!({"status": "ok", "pid": meshd.pid()})
    );
    let readyz = wait_ready(&anonymous).await;
    assert_eq!(readyz["loaded"], 1, "{readyz}");
    assert_eq!(readyz["total"], 1, "{readyz}");

    let reply = admin.put_wasm("api", wasm("echo")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    let client = Client::http1();
    for _ in 0..2 {
        assert_eq!(client.get(&meshd.url("/hello")).await.status, 200);
    }
    assert_eq!(client.get(&meshd.url("/api")).await.status, 200);

    assert_eq!(anonymous.get("/metrics").await.status, 401);
    let metrics = admin.get("/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.headers[http::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"),
        "{:?}",
        metrics.headers
    );
    let text = metrics.text();
    let hello_id = &sha256_file(&guest("hello"))[..12];
    let api_id = &sha256_file(&guest("echo"))[..12];
    for (app, id, count) in [("hello", hello_id, 2), ("api", api_id, 1)] {
        let line = format!(
            "meshd_requests_total{{app=\"{app}\",version=\"{id}\",side=\"live\",status=\"2xx\"}} {count}"
        );
        assert!(
            text.lines().any(|l| l == line),
            "{line} in the metrics:\n{text}"
        );
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );

    // The admin listener speaks h2c (prior knowledge) too.
    let mut req =
        crate::support::request("GET", &admin.url("/v1/apps/api"), crate::support::empty());
    req.headers_mut().insert(
        http::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().unwrap(),
    );
    let reply = Client::http2().fetch(req).await.expect("h2c answers");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["version"]["requests"]["2xx"], 1);
    let reply = Client::http2()
        .fetch(crate::support::request(
            "GET",
            &admin.url("/v1/apps"),
            crate::support::empty(),
        ))
        .await
        .expect("h2c answers");
    assert_eq!(reply.status, 401);
}

/// Polls `/readyz` (without a token) until it answers 200; its body.
async fn wait_ready(admin: &Admin) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = admin.get("/readyz").await;
        let body = reply.json();
        if reply.status == 200 {
            assert_eq!(body["ready"], true, "{body}");
            return body;
        }
        assert_eq!(reply.status, 503, "{}", reply.text());
        assert_eq!(body["ready"], false, "{body}");
        assert!(Instant::now() < deadline, "not ready within 30 s: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_new_manifest_for_the_same_code_is_a_new_deploy_that_survives_a_restart() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let hello_digest = sha256_file(&guest("hello"));
    let one = "route = \"/one\"\n";
    let two = "route = \"/two\"\n";
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        let reply = admin.put_form("app", &wasm("hello"), Some(one)).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        // The same code with another manifest: not "the same code and
        // manifest were live already", so 201, and the new manifest is kept.
        let reply = admin.put_form("app", &wasm("hello"), Some(two)).await;
        assert_eq!(
            reply.status,
            201,
            "a new manifest is a change: {}",
            reply.text()
        );
        let app = reply.json();
        assert_live(&app, "/two", &hello_digest);
        assert_eq!(
            app["kept"][0]["manifest"],
            sha256_hex(two.as_bytes()),
            "{app:#}"
        );
        wait_for_answer(&meshd.url("/two"), 200, Some(HELLO)).await;
        wait_for_answer(&meshd.url("/one"), 404, None).await;
        meshd.signal("TERM");
    }
    // A restart restores the manifest that was live.
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    wait_for_answer(&meshd.url("/two"), 200, Some(HELLO)).await;
    assert_eq!(Client::http1().get(&meshd.url("/one")).await.status, 404);
    let app = admin.app("app").await;
    assert_live(&app, "/two", &hello_digest);
    assert_eq!(kept(&app), [hello_digest.as_str(), hello_digest.as_str()]);
    // Rolling back brings the previous manifest back, and its route.
    let reply = admin.rollback("app", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_live(&reply.json(), "/one", &hello_digest);
    wait_for_answer(&meshd.url("/one"), 200, Some(HELLO)).await;
    wait_for_answer(&meshd.url("/two"), 404, None).await;

    // A new manifest for the running code is checked like a new version: a
    // health path that fails is refused, and the live manifest stays.
    let failing = "route = \"/three\"\nhealth = \"/status?code=503\"\n";
    let reply = admin.put_form("app", &wasm("stream"), Some(two)).await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(
        Client::http1()
            .get(&meshd.url("/two/status?code=200"))
            .await
            .status,
        200
    );
    let reply = admin.put_form("app", &wasm("stream"), Some(failing)).await;
    let message = refusal(&reply, 422, "health_check");
    assert!(
        message.contains("/status?code=503") && message.contains("503"),
        "{message}"
    );
    let app = admin.app("app").await;
    assert_live(&app, "/two", &sha256_file(&guest("stream")));
    assert_eq!(
        app["kept"][0]["manifest"],
        sha256_hex(two.as_bytes()),
        "{app:#}"
    );
    assert_eq!(Client::http1().get(&meshd.url("/three")).await.status, 404);
    assert_eq!(
        Client::http1()
            .get(&meshd.url("/two/status?code=200"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn uploads_too_large_or_malformed_are_refused_and_only_the_last_versions_are_kept() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    // hello (113 KiB), counter (120 KiB) and stream (133 KiB) fit; echo
    // (163 KiB) does not.
    let meshd = Meshd::builder(apps.path())
        .args(&[
            "--admin",
            "127.0.0.1:0",
            "--admin-token-file",
            &token.arg(),
            "--max-wasm-size",
            "150KB",
            "--keep-versions",
            "2",
        ])
        .data_dir(data.path())
        .cache_dir(&shared_cache_dir())
        .start();
    let admin = Admin::of(&meshd);
    let echo = wasm("echo");
    assert!(echo.len() > 150_000 && wasm("stream").len() < 150_000);

    let reply = admin.put_wasm("app", echo.clone()).await;
    let message = refusal(&reply, 413, "too_large");
    assert!(message.contains("--max-wasm-size"), "{message}");
    assert_eq!(
        reply.headers["connection"], "close",
        "the body was not read"
    );
    let reply = admin.put_form("app", &echo, None).await;
    refusal(&reply, 413, "too_large");
    let reply = admin
        .send("PUT", "/v1/apps/app", Some("text/plain"), wasm("hello"))
        .await;
    refusal(&reply, 415, "bad_request");
    let reply = admin.send("PUT", "/v1/apps/app", None, wasm("hello")).await;
    refusal(&reply, 415, "bad_request");
    let boundary = "b0undary";
    let only_manifest = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"manifest\"\r\n\r\nroute = \"/x\"\r\n--{boundary}--\r\n"
    );
    let form = format!("multipart/form-data; boundary={boundary}");
    let reply = admin
        .send("PUT", "/v1/apps/app", Some(&form), only_manifest)
        .await;
    let message = refusal(&reply, 400, "bad_request");
    assert!(message.contains("wasm"), "{message}");
    let reply = admin
        .put_form("app", &wasm("hello"), Some("route = 42\n"))
        .await;
    let message = refusal(&reply, 422, "invalid_manifest");
    assert!(message.contains("route"), "{message}");
    // The uploads refused before the pipeline left no trace; the one the
    // pipeline refused shows as refused, with no version.
    let app = admin.app("app").await;
    assert_eq!(app["state"], "refused", "{app:#}");
    assert!(
        app["version"].is_null() && app["route"].is_null(),
        "{app:#}"
    );
    assert_eq!(app["last_error"]["kind"], "invalid_manifest", "{app:#}");
    assert_eq!(app["kept"], serde_json::json!([]), "{app:#}");
    refusal(&admin.get("/v2/nothing").await, 404, "not_found");
    refusal(
        &admin.send("POST", "/v1/apps", None, Vec::new()).await,
        405,
        "method_not_allowed",
    );
    assert_eq!(meshd.count_log(&["app deployed"]), 0);
    assert_eq!(
        Client::http1().get(&meshd.url("/app")).await.status,
        404,
        "nothing serves"
    );

    // --keep-versions 2: the oldest of three versions is forgotten.
    let digests: Vec<String> = ["hello", "counter", "stream"]
        .iter()
        .map(|g| sha256_file(&guest(g)))
        .collect();
    for g in ["hello", "counter", "stream"] {
        let reply = admin.put_wasm("app", wasm(g)).await;
        assert_eq!(reply.status, 201, "{g}: {}", reply.text());
    }
    let app = admin.app("app").await;
    assert_live(&app, "/app", &digests[2]);
    assert_eq!(kept(&app), [digests[2].as_str(), digests[1].as_str()]);
    let body = format!(r#"{{"version": "{}"}}"#, &digests[0][..12]);
    refusal(&admin.rollback("app", &body).await, 422, "no_such_version");
    let reply = admin.rollback("app", "").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_live(&reply.json(), "/app", &digests[1]);
}

#[tokio::test]
async fn an_api_app_keeps_its_name_across_a_restart_when_the_directory_gets_a_file_of_that_name() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let echo_digest = sha256_file(&guest("echo"));
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        let reply = admin.put_wasm("x", wasm("echo")).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        meshd.signal("TERM");
    }
    // While meshd is down, a file of the same name lands in the directory.
    apps.deploy("x", "hello");
    apps.deploy("y", "hello");
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    // The API's app is restored before the directory is read: it keeps the
    // name, and the directory's file is refused naming both sources.
    let line = meshd.wait_for_log(&["new version refused", "app=x"]);
    assert!(
        line.contains("admin API") && line.contains("apps directory"),
        "{line}"
    );
    let served = wait_for_answer(&meshd.url("/x/p"), 200, None).await;
    assert_eq!(served.json()["path"], "/p");
    assert_eq!(Client::http1().get(&meshd.url("/y")).await.text(), HELLO);
    let x = admin.app("x").await;
    assert_eq!(x["origin"], "api", "{x:#}");
    assert_live(&x, "/x", &echo_digest);
    assert_eq!(admin.app("y").await["origin"], "dir");
    meshd.wait_for_log(&["meshd listening", "apps=2", "failed=1"]);
}

#[tokio::test]
async fn delete_lets_requests_in_flight_finish_then_unmounts() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let reply = admin.put_wasm("sleepy", wasm("platform")).await;
    assert_eq!(reply.status, 201, "{}", reply.text());

    let in_flight = crate::support::spawn_get(meshd.url("/sleepy/sleep?ms=1500"));
    // Wait until the request is in the app (the registry counts it).
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.app("sleepy").await["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "the request never got in flight");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = admin.delete("sleepy").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json(), serde_json::json!({"removed": "sleepy"}));
    // Listed as draining while its request (1.5 s) is in flight.
    let app = admin.app("sleepy").await;
    assert_eq!(app["state"], "draining", "{app:#}");
    assert_eq!(app["in_flight"], 1, "{app:#}");
    // New requests find no app; the one in flight finishes.
    assert_eq!(Client::http1().get(&meshd.url("/sleepy")).await.status, 404);
    let finished = in_flight
        .await
        .expect("the task")
        .expect("the request in flight is answered");
    assert_eq!(finished.status, 200);
    assert_eq!(finished.text(), "slept");
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin.get("/v1/apps/sleepy").await.status != 404 {
        assert!(
            Instant::now() < deadline,
            "sleepy still listed after its drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deploy_cut_short_by_a_stop_is_not_loaded_by_the_restart() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let hello_digest = sha256_file(&guest("hello"));
    {
        let meshd = start(&apps, data.path(), &token);
        let admin = Admin::of(&meshd);
        let reply = admin.put_wasm("app", wasm("hello")).await;
        assert_eq!(reply.status, 201, "{}", reply.text());
        // A new app whose health check takes 3 s; meshd stops meanwhile.
        let (content_type, body) = crate::support::admin::multipart(
            &wasm("platform"),
            Some("health = \"/sleep?ms=3000\"\n"),
        );
        let url = admin.url("/v1/apps/cut");
        let deploy = tokio::spawn(async move {
            let mut req = crate::support::request("PUT", &url, crate::support::full(body));
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            );
            req.headers_mut()
                .insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
            Client::http1().fetch(req).await
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = admin.get("/v1/apps/cut").await;
            if reply.status == 200 && reply.json()["state"] == "loading" {
                break;
            }
            assert!(
                !deploy.is_finished(),
                "the deploy ended before it was seen loading"
            );
            assert!(Instant::now() < deadline, "cut never showed as loading");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        meshd.signal("TERM");
        let answer = deploy.await.expect("the deploy task");
        // Answered "stopped" (or, if the connection closed first, not at all).
        if let Ok(reply) = &answer {
            refusal(reply, 503, "stopped");
        }
    }
    // The restart serves what was live, and knows nothing of the cut deploy.
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    assert_eq!(
        wait_for_answer(&meshd.url("/app"), 200, None).await.text(),
        HELLO
    );
    assert_live(&admin.app("app").await, "/app", &hello_digest);
    assert_eq!(names(&admin.apps().await), ["app"]);
    assert_eq!(Client::http1().get(&meshd.url("/cut")).await.status, 404);
    assert_eq!(meshd.count_log(&["app=cut"]), 0);
}

#[tokio::test]
async fn concurrent_deploys_of_one_app_are_each_decided_and_the_last_one_serves() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    let token = TokenFile::new();
    let meshd = start(&apps, data.path(), &token);
    let admin = Admin::of(&meshd);
    let digests = [
        sha256_file(&guest("hello")),
        sha256_file(&guest("echo")),
        sha256_file(&guest("counter")),
    ];
    let mut tasks = Vec::new();
    for g in ["hello", "echo", "counter"] {
        let url = admin.url("/v1/apps/race");
        let bytes = wasm(g);
        tasks.push(tokio::spawn(async move {
            let mut req = crate::support::request("PUT", &url, crate::support::full(bytes));
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            );
            req.headers_mut().insert(
                http::header::CONTENT_TYPE,
                "application/wasm".parse().unwrap(),
            );
            Client::http1()
                .fetch(req)
                .await
                .expect("the deploy answers")
        }));
    }
    let mut answered = Vec::new();
    for task in tasks {
        let reply = task.await.expect("the task");
        assert_eq!(reply.status, 201, "{}", reply.text());
        answered.push(
            reply.json()["version"]["digest"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut sorted_answered = answered.clone();
    sorted_answered.sort();
    let mut sorted_digests = digests.to_vec();
    sorted_digests.sort();
    assert_eq!(
        sorted_answered, sorted_digests,
        "each answer names its own version"
    );
    let app = admin.app("race").await;
    let live = app["version"]["digest"].as_str().unwrap().to_owned();
    let mut kept_sorted = kept(&app);
    assert_eq!(kept_sorted[0], live, "the newest kept is live: {app:#}");
    kept_sorted.sort();
    assert_eq!(kept_sorted, sorted_digests, "{app:#}");
    // What serves is the live version.
    let served = Client::http1().get(&meshd.url("/race/x")).await;
    match digests.iter().position(|d| *d == live).unwrap() {
        0 => assert_eq!(served.text(), HELLO),
        1 => assert_eq!(served.json()["path"], "/x"),
        _ => assert_eq!(served.text(), "try GET / or POST /incr\n", "counter"),
    }
}
