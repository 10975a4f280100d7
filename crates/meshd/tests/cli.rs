//! The client subcommands (`meshd deploy`, `meshd apps`, ...) as a real
//! process against a small HTTP server in the test that plays the admin
//! API: what the CLI sends (method, path, token, body, multipart parts) and
//! what it makes of the answer (stdout, stderr, exit code).
//!
//! The end-to-end tests against meshd's real admin API are in tests/e2e.

// The throwaway CA and certificates of the end-to-end suite's TLS tests.
#[path = "../../../tests/e2e/support/pki.rs"]
#[allow(dead_code)]
mod pki;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

/// A request as the fake admin API received it.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// Path and query.
    target: String,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

type Handler = dyn Fn(&Received) -> (u16, String) + Send + Sync;

/// An HTTP server on 127.0.0.1 answering every request through `handler`.
struct FakeAdmin {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    _runtime: tokio::runtime::Runtime,
}

impl FakeAdmin {
    fn start(handler: impl Fn(&Received) -> (u16, String) + Send + Sync + 'static) -> FakeAdmin {
        FakeAdmin::serve(None, Arc::new(handler))
    }

    /// The same over TLS, with `pki`'s certificate for 127.0.0.1.
    fn start_tls(
        pki: &pki::TestPki,
        handler: impl Fn(&Received) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeAdmin {
        FakeAdmin::serve(Some(pki.server_acceptor()), Arc::new(handler))
    }

    fn serve(tls: Option<tokio_rustls::TlsAcceptor>, handler: Arc<Handler>) -> FakeAdmin {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (handler, log, tls) = (handler.clone(), log.clone(), tls.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                            let (handler, log) = (handler.clone(), log.clone());
                            async move {
                                let (parts, body) = request.into_parts();
                                let body = body.collect().await?.to_bytes().to_vec();
                                let received = Received {
                                    method: parts.method.to_string(),
                                    target: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                };
                                let (status, answer) = handler(&received);
                                log.lock().unwrap().push(received);
                                let response = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer)))
                                    .unwrap();
                                Ok::<_, hyper::Error>(response)
                            }
                        });
                    let http1 = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => http1.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http1.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        FakeAdmin {
            url,
            received,
            _runtime: runtime,
        }
    }

    /// Answers every request with `status` and `body`.
    fn answering(status: u16, body: &str) -> FakeAdmin {
        let body = body.to_owned();
        FakeAdmin::start(move |_| (status, body.clone()))
    }

    /// Runs `meshd ARGS` against this server (given by MESHD_ADMIN).
    fn meshd(&self, args: &[&str]) -> Output {
        meshd(args, &[("MESHD_ADMIN", &self.url)])
    }

    fn only_request(&self) -> Received {
        let received = self.received.lock().unwrap();
        assert_eq!(received.len(), 1, "{received:#?}");
        received[0].clone()
    }
}

/// Runs the real binary with a clean client environment plus `env`.
fn meshd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_meshd"));
    command
        .args(args)
        .env_remove("MESHD_ADMIN")
        .env_remove("MESHD_ADMIN_TOKEN_FILE")
        .env_remove("MESHD_ADMIN_TIMEOUT");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn exit_code(output: &Output) -> i32 {
    output.status.code().expect("meshd was killed by a signal")
}

const DIGEST: &str = "3f2a1b9c0d1e4455667788990011223344556677889900aabbccddeeff0011";
const CANARY_DIGEST: &str = "9a8b7c6d5e4f00112233445566778899aabbccddeeff00112233445566778899";

/// An AppJson as the contract describes it.
fn app_json(name: &str, canary: bool) -> String {
    let version = |digest: &str| {
        serde_json::json!({
            "digest": digest, "id": &digest[..12], "deployed_at": "2026-11-29T12:00:00Z",
            "in_flight": 0, "requests": {"1xx": 0, "2xx": 5, "3xx": 0, "4xx": 0, "5xx": 1}
        })
    };
    let mut canary_json = serde_json::Value::Null;
    if canary {
        canary_json = version(CANARY_DIGEST);
        canary_json["percent"] = 10.into();
    }
    serde_json::json!({
        "name": name, "route": format!("/{name}"), "origin": "api", "state": "live",
        "version": version(DIGEST), "canary": canary_json,
        "kept": [{"digest": DIGEST, "id": &DIGEST[..12], "manifest": null,
                  "deployed_at": "2026-11-29T12:00:00Z", "origin": "api", "live": true}],
        "last_error": null, "in_flight": 0
    })
    .to_string()
}

fn refusal(kind: &str, message: &str, app: &str) -> String {
    serde_json::json!({"error": {"kind": kind, "message": message, "app": app}}).to_string()
}

/// A directory with NAME.wasm (`len` bytes of a pattern) and, if given,
/// NAME.toml.
fn app_files(
    name: &str,
    len: usize,
    manifest: Option<&str>,
) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let wasm: Vec<u8> = b"\0asm\x0d\0\x01\0"
        .iter()
        .copied()
        .chain((0..len.saturating_sub(8)).map(|i| (i % 251) as u8))
        .collect();
    let path = dir.path().join(format!("{name}.wasm"));
    std::fs::write(&path, &wasm).unwrap();
    if let Some(manifest) = manifest {
        std::fs::write(dir.path().join(format!("{name}.toml")), manifest).unwrap();
    }
    (dir, path, wasm)
}

fn token_file(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// One part of a multipart/form-data body.
#[derive(Debug)]
struct FormPart {
    name: String,
    content_type: Option<String>,
    data: Vec<u8>,
}

/// Splits a multipart/form-data body into its parts (RFC 7578), strictly
/// enough that a malformed body fails the test.
fn form_parts(content_type: &str, body: &[u8]) -> Vec<FormPart> {
    let boundary = content_type
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("content type {content_type}"));
    let delimiter = format!("\r\n--{boundary}").into_bytes();
    let mut body = [b"\r\n".as_slice(), body].concat();
    assert!(
        body.ends_with(format!("--{boundary}--\r\n").as_bytes())
            || body.ends_with(format!("--{boundary}--").as_bytes())
    );
    let mut parts = Vec::new();
    loop {
        assert!(body.starts_with(&delimiter), "no delimiter");
        body.drain(..delimiter.len());
        if body.starts_with(b"--") {
            return parts;
        }
        assert!(body.starts_with(b"\r\n"), "bad delimiter line");
        body.drain(..2);
        let head_end = find(&body, b"\r\n\r\n").expect("part without a head");
        let head = String::from_utf8(body[..head_end].to_vec()).unwrap();
        body.drain(..head_end + 4);
        let data_end = find(&body, &delimiter).expect("part without an end");
        let data: Vec<u8> = body.drain(..data_end).collect();
        let mut name = None;
        let mut part_type = None;
        for line in head.split("\r\n") {
            let (key, value) = line.split_once(':').unwrap();
            match key.to_ascii_lowercase().as_str() {
                "content-disposition" => {
                    let start = value.find("name=\"").unwrap() + 6;
                    let end = value[start..].find('"').unwrap();
                    name = Some(value[start..start + end].to_owned());
                }
                "content-type" => part_type = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        parts.push(FormPart {
            name: name.expect("part without a name"),
            content_type: part_type,
            data,
        });
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[test]
fn deploy_uploads_the_wasm_and_the_manifest_beside_it_with_the_token() {
    let admin = FakeAdmin::answering(201, &app_json("hello", false));
    let manifest = "route = \"/hello\"\nhealth = \"/health\"\n";
    let (dir, wasm_path, wasm) = app_files("hello", 3000, Some(manifest));
    let token = token_file(dir.path(), "s3cret-token");

    let output = admin.meshd(&[
        "deploy",
        wasm_path.to_str().unwrap(),
        "--token-file",
        token.to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "deployed hello: version 3f2a1b9c0d1e is live at /hello\n"
    );
    assert!(
        stderr(&output).contains("hello.toml"),
        "{}",
        stderr(&output)
    );

    let request = admin.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.target, "/v1/apps/hello");
    assert_eq!(request.header("authorization"), Some("Bearer s3cret-token"));
    let parts = form_parts(request.header("content-type").unwrap(), &request.body);
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert_eq!(parts[0].name, "wasm");
    assert_eq!(parts[0].content_type.as_deref(), Some("application/wasm"));
    assert!(parts[0].data == wasm, "the wasm part is not the file");
    assert_eq!(parts[1].name, "manifest");
    assert_eq!(String::from_utf8_lossy(&parts[1].data), manifest);
}

#[test]
fn deploy_without_a_manifest_sends_the_wasm_alone() {
    let admin = FakeAdmin::answering(200, &app_json("other", false));
    let (_dir, wasm_path, wasm) = app_files("hello", 5000, None);

    let output = admin.meshd(&["deploy", wasm_path.to_str().unwrap(), "--name", "other"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    // 200: that digest was live already.
    assert_eq!(
        stdout(&output),
        "other: version 3f2a1b9c0d1e was already live at /other (unchanged)\n"
    );

    let request = admin.only_request();
    assert_eq!(request.method, "PUT");
    assert_eq!(request.target, "/v1/apps/other");
    assert_eq!(request.header("content-type"), Some("application/wasm"));
    assert_eq!(request.header("content-length"), Some("5000"));
    // So that a server can refuse by the headers before the body is sent.
    assert_eq!(request.header("expect"), Some("100-continue"));
    assert_eq!(request.header("authorization"), None);
    assert!(request.body == wasm, "the body is not the file");
}

#[test]
fn no_manifest_leaves_out_the_one_beside_the_wasm_and_manifest_names_another() {
    let admin = FakeAdmin::answering(201, &app_json("hello", false));
    let (dir, wasm_path, _) = app_files("hello", 100, Some("route = \"/beside\"\n"));
    let output = admin.meshd(&["deploy", wasm_path.to_str().unwrap(), "--no-manifest"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        admin.only_request().header("content-type"),
        Some("application/wasm")
    );

    let admin = FakeAdmin::answering(201, &app_json("hello", false));
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "route = \"/other\"\n").unwrap();
    let output = admin.meshd(&[
        "deploy",
        wasm_path.to_str().unwrap(),
        "--manifest",
        other.to_str().unwrap(),
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let request = admin.only_request();
    let parts = form_parts(request.header("content-type").unwrap(), &request.body);
    assert_eq!(parts[1].name, "manifest");
    assert_eq!(parts[1].data, b"route = \"/other\"\n");
}

#[test]
fn a_large_upload_streams_whole_and_shows_no_progress_bar_in_a_pipe() {
    let admin = FakeAdmin::answering(201, &app_json("big", false));
    let (_dir, wasm_path, wasm) =
        app_files("big", 3 * 1024 * 1024 + 17, Some("route = \"/big\"\n"));
    let output = admin.meshd(&["deploy", wasm_path.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let request = admin.only_request();
    let parts = form_parts(request.header("content-type").unwrap(), &request.body);
    assert_eq!(parts[0].data.len(), wasm.len());
    assert!(parts[0].data == wasm, "the wasm part is not the file");
    // stderr is a pipe here: only the line about the manifest, no bar.
    assert_eq!(stderr(&output).lines().count(), 1, "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("big.wasm ["),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_refused_deploy_exits_1_naming_the_app_and_the_refusal() {
    let body = refusal("health_check", "GET /health answered 500: boom", "hello");
    let admin = FakeAdmin::answering(422, &body);
    let (_dir, wasm_path, _) = app_files("hello", 100, None);

    let output = admin.meshd(&["deploy", wasm_path.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 1);
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        "meshd: cannot deploy hello: health_check: GET /health answered 500: boom\n"
    );

    // With --json the refusal's JSON goes to stdout as it came.
    let output = admin.meshd(&["deploy", wasm_path.to_str().unwrap(), "--json"]);
    assert_eq!(exit_code(&output), 1);
    assert_eq!(stdout(&output).trim_end(), body);
    assert!(
        stderr(&output).contains("health_check"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn apps_prints_a_table_or_the_json() {
    let list = format!(
        "{{\"apps\":[{},{}]}}",
        app_json("hello", true),
        app_json("zeta", false)
    );
    let admin = FakeAdmin::answering(200, &list);

    let output = admin.meshd(&["apps"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let table = stdout(&output);
    let lines: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert_eq!(
        lines[0],
        [
            "NAME",
            "ROUTE",
            "ORIGIN",
            "STATE",
            "VERSION",
            "CANARY",
            "IN-FLIGHT",
            "2XX",
            "5XX",
            "LAST-ERROR"
        ]
    );
    assert_eq!(
        lines[1],
        [
            "hello",
            "/hello",
            "api",
            "live",
            "3f2a1b9c0d1e",
            "9a8b7c6d5e4f",
            "10%",
            "0",
            "10",
            "2",
            "-"
        ]
    );
    assert_eq!(lines[2][0], "zeta");
    let request = admin.only_request();
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("GET", "/v1/apps")
    );

    let output = admin.meshd(&["apps", "--json"]);
    assert_eq!(exit_code(&output), 0);
    assert_eq!(stdout(&output).trim_end(), list);
}

#[test]
fn apps_name_shows_one_app_or_exits_1_when_there_is_none() {
    let admin = FakeAdmin::start(|request| match request.target.as_str() {
        "/v1/apps/hello" => (200, app_json("hello", true)),
        _ => (404, refusal("not_found", "no app named nope", "nope")),
    });

    let output = admin.meshd(&["apps", "hello"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let detail = stdout(&output);
    assert!(detail.contains("name:       hello\n"), "{detail}");
    assert!(
        detail.contains("canary:     9a8b7c6d5e4f on 10% of requests, deployed"),
        "{detail}"
    );
    assert!(detail.contains("kept versions (newest first):"), "{detail}");
    assert!(detail.contains(DIGEST), "{detail}");

    let output = admin.meshd(&["apps", "nope"]);
    assert_eq!(exit_code(&output), 1);
    assert_eq!(
        stderr(&output),
        "meshd: cannot show app nope: not_found: no app named nope\n"
    );
}

#[test]
fn rollback_sends_the_version_when_given() {
    let admin = FakeAdmin::answering(200, &app_json("hello", false));
    let output = admin.meshd(&["rollback", "hello"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "rolled back hello: version 3f2a1b9c0d1e is live\n"
    );
    let request = admin.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(request.target, "/v1/apps/hello/rollback");
    assert!(request.body.is_empty());

    let admin = FakeAdmin::answering(200, &app_json("hello", false));
    let output = admin.meshd(&["rollback", "hello", "3f2a1b9c0d1e"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let request = admin.only_request();
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, serde_json::json!({"version": "3f2a1b9c0d1e"}));

    let body = refusal(
        "no_such_version",
        "hello has no kept version 000000000000",
        "hello",
    );
    let admin = FakeAdmin::answering(422, &body);
    let output = admin.meshd(&["rollback", "hello", "000000000000"]);
    assert_eq!(exit_code(&output), 1);
    assert!(
        stderr(&output).starts_with("meshd: cannot roll back hello: no_such_version: "),
        "{}",
        stderr(&output)
    );
}

#[test]
fn rm_deletes_the_app() {
    let admin = FakeAdmin::answering(200, r#"{"removed":"hello"}"#);
    let output = admin.meshd(&["rm", "hello"]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "removed hello\n");
    let request = admin.only_request();
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("DELETE", "/v1/apps/hello")
    );
}

#[test]
fn canary_uploads_a_file_or_names_a_kept_version() {
    let admin = FakeAdmin::answering(201, &app_json("hello", true));
    let (_dir, wasm_path, wasm) = app_files("next", 2000, None);
    let output = admin.meshd(&[
        "canary",
        "hello",
        wasm_path.to_str().unwrap(),
        "--percent",
        "10",
        "--sticky-header",
        "x-user",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "canary of hello: version 9a8b7c6d5e4f serves 10% of requests, version 3f2a1b9c0d1e the rest\n"
    );
    let request = admin.only_request();
    assert_eq!(request.method, "POST");
    assert_eq!(
        request.target,
        "/v1/apps/hello/canary?percent=10&sticky_header=x-user"
    );
    assert_eq!(request.header("content-type"), Some("application/wasm"));
    assert!(request.body == wasm, "the body is not the file");

    let admin = FakeAdmin::answering(201, &app_json("hello", true));
    let output = admin.meshd(&[
        "canary",
        "hello",
        "--version",
        CANARY_DIGEST,
        "--percent",
        "50",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let request = admin.only_request();
    assert_eq!(request.target, "/v1/apps/hello/canary");
    assert_eq!(request.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"version": CANARY_DIGEST, "percent": 50})
    );

    let admin = FakeAdmin::answering(201, &app_json("hello", true));
    let output = admin.meshd(&[
        "canary",
        "hello",
        "--version",
        &CANARY_DIGEST[..12],
        "--percent",
        "5",
        "--sticky-header",
        "x-user",
    ]);
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    let body: serde_json::Value = serde_json::from_slice(&admin.only_request().body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"version": &CANARY_DIGEST[..12], "percent": 5, "sticky_header": "x-user"})
    );
}

#[test]
fn promote_and_abort_post_to_the_app() {
    for (command, expected) in [
        (
            "promote",
            "promoted the canary of hello: version 3f2a1b9c0d1e is live, for all requests\n",
        ),
        (
            "abort",
            "stopped the canary of hello: version 3f2a1b9c0d1e is live, for all requests\n",
        ),
    ] {
        let admin = FakeAdmin::answering(200, &app_json("hello", false));
        let output = admin.meshd(&[command, "hello"]);
        assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
        assert_eq!(stdout(&output), expected);
        let request = admin.only_request();
        assert_eq!(request.method, "POST");
        assert_eq!(request.target, format!("/v1/apps/hello/{command}"));

        let body = refusal("no_canary", "hello has no canary", "hello");
        let admin = FakeAdmin::answering(422, &body);
        let output = admin.meshd(&[command, "hello"]);
        assert_eq!(exit_code(&output), 1);
        assert!(
            stderr(&output).contains("no_canary: hello has no canary"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_bad_token_exits_3_and_says_what_to_check() {
    let admin = FakeAdmin::answering(401, &refusal("unauthorized", "missing or wrong token", ""));
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "wrong");
    let output = meshd(
        &["apps"],
        &[
            ("MESHD_ADMIN", &admin.url),
            ("MESHD_ADMIN_TOKEN_FILE", token.to_str().unwrap()),
        ],
    );
    assert_eq!(exit_code(&output), 3);
    let message = stderr(&output);
    assert!(
        message.contains(&format!("{} answered 401", admin.url)),
        "{message}"
    );
    assert!(message.contains("--token-file"), "{message}");
    assert_eq!(
        admin.only_request().header("authorization"),
        Some("Bearer wrong")
    );
}

#[test]
fn a_server_error_or_a_foreign_answer_exits_3() {
    let admin = FakeAdmin::answering(500, &refusal("internal", "the pipeline is gone", "hello"));
    let output = admin.meshd(&["apps", "hello"]);
    assert_eq!(exit_code(&output), 3);
    assert!(
        stderr(&output).contains("answered 500 (internal: the pipeline is gone)"),
        "{}",
        stderr(&output)
    );

    let admin = FakeAdmin::answering(200, "<html>not meshd</html>");
    let output = admin.meshd(&["apps"]);
    assert_eq!(exit_code(&output), 3);
    assert!(
        stderr(&output).contains("does not understand"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn nothing_listening_exits_3_naming_the_url() {
    // A port that was free a moment ago.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = meshd(&["rm", "hello", "--admin", &url], &[]);
    assert_eq!(exit_code(&output), 3);
    let message = stderr(&output);
    assert!(message.contains(&url), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    assert!(message.contains("MESHD_ADMIN"), "{message}");
}

#[test]
fn usage_errors_exit_2_and_send_nothing() {
    let admin = FakeAdmin::answering(200, "{}");
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.wasm");
    for args in [
        vec!["deploy", missing.to_str().unwrap()],
        vec!["canary", "hello", "x.wasm"],
        vec!["canary", "hello", "x.wasm", "--percent", "100"],
        vec!["rm", "bad/name"],
        vec!["apps", "--token-file", missing.to_str().unwrap()],
    ] {
        let output = admin.meshd(&args);
        assert_eq!(exit_code(&output), 2, "{args:?}: {}", stderr(&output));
    }
    assert!(admin.received.lock().unwrap().is_empty());
}

#[test]
fn the_daemons_environment_does_not_reach_client_commands() {
    // A value the daemon would refuse; `meshd apps` does not read it.
    let admin = FakeAdmin::answering(200, r#"{"apps":[]}"#);
    let output = meshd(
        &["apps"],
        &[
            ("MESHD_ADMIN", &admin.url),
            ("MESHD_LISTEN", "not-an-address"),
        ],
    );
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "no apps\n");
}

#[test]
fn help_explains_the_daemon_and_each_command() {
    let output = meshd(&["--help"], &[]);
    assert_eq!(exit_code(&output), 0);
    let help = stdout(&output);
    for expected in [
        "--apps <DIR>",
        "--listen <ADDR>",
        "deploy",
        "canary",
        "Exit codes:",
    ] {
        assert!(help.contains(expected), "{expected}: {help}");
    }
    let output = meshd(&["deploy", "--help"], &[]);
    let help = stdout(&output);
    for expected in [
        "<FILE>",
        "--manifest <FILE>",
        "--admin <URL>",
        "MESHD_ADMIN_TOKEN_FILE",
        "Exit codes:",
    ] {
        assert!(help.contains(expected), "{expected}: {help}");
    }
}

#[test]
fn an_https_admin_url_is_verified_against_the_ca_file() {
    let pki = pki::TestPki::new();
    let admin = FakeAdmin::start_tls(&pki, |_| (200, r#"{"apps":[]}"#.to_owned()));
    assert!(admin.url.starts_with("https://127.0.0.1:"));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let output = meshd(
        &["apps", "--ca-file", ca.to_str().unwrap()],
        &[("MESHD_ADMIN", &admin.url)],
    );
    assert_eq!(exit_code(&output), 0, "{}", stderr(&output));
    assert_eq!(stdout(&output), "no apps\n");

    // Mozilla's roots do not know the test CA: no request gets through.
    let output = admin.meshd(&["apps"]);
    assert_eq!(exit_code(&output), 3);
    assert!(stderr(&output).contains(&admin.url), "{}", stderr(&output));
    assert_eq!(admin.received.lock().unwrap().len(), 1);

    // A CA file without a certificate is a usage error.
    std::fs::write(&ca, "not a certificate\n").unwrap();
    let output = admin.meshd(&["apps", "--ca-file", ca.to_str().unwrap()]);
    assert_eq!(exit_code(&output), 2, "{}", stderr(&output));
}

#[test]
fn no_answer_within_the_timeout_exits_3() {
    let admin = FakeAdmin::start(|_| {
        // Longer than the client waits.
        std::thread::sleep(std::time::Duration::from_secs(2));
        (200, r#"{"apps":[]}"#.to_owned())
    });
    let output = admin.meshd(&["apps", "--timeout", "200ms"]);
    assert_eq!(exit_code(&output), 3);
    let message = stderr(&output);
    assert!(message.contains("timed out"), "{message}");
    assert!(message.contains("--timeout"), "{message}");
}
