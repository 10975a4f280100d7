//! The admin API in process, against a fake pipeline: a task that owns the
//! pipeline's receiver, records every change it gets and answers what the
//! test says; and a real registry the tests publish into. The fake records a
//! change before it answers, and every handler waits for the answer: once a
//! response is in, every change it caused is recorded.

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::BodyExt as _;
use meshd_admin::{router, AdminState, Token};
use meshd_registry::{AppSet, AppStatus, Origin, Refused, Registry};
use meshd_reload::{Applied, CanarySource, Change, PipelineHandle};
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::mpsc;
use tower::ServiceExt as _;

const TOKEN: &str = "0123456789abcdef-admin-token";
const MAX_WASM: u64 = 256 * 1024;

type Answerer = Box<dyn Fn(&Change) -> Result<Applied, Refused> + Send>;

/// The admin API with a fake pipeline behind it.
struct Harness {
    app: Router,
    registry: Arc<Registry>,
    changes: Arc<Mutex<Vec<Change>>>,
    token: Option<&'static str>,
}

impl Harness {
    /// A token is required; every change is answered `Deployed`.
    fn new() -> Self {
        Self::answering(Some(TOKEN), Box::new(|_| Ok(Applied::Deployed)))
    }

    /// The fake pipeline answers each change with `answer(change)`; after
    /// an accepted change it publishes the app (as the real one would), so
    /// the API can answer with its status.
    fn answering(token: Option<&'static str>, answer: Answerer) -> Self {
        let (sender, mut requests) = mpsc::channel::<meshd_reload::Request>(8);
        let registry = Arc::new(Registry::new());
        let changes = Arc::new(Mutex::new(Vec::new()));
        let (published, recorded) = (registry.clone(), changes.clone());
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                let outcome = answer(&request.change);
                if outcome.is_ok() {
                    if let Some(name) = app_of(&request.change) {
                        publish(&published, &[name]);
                    }
                }
                recorded.lock().unwrap().push(request.change);
                let _ = request.reply.send(outcome);
            }
        });
        Self::with_pipeline(token, PipelineHandle::new(sender), registry, changes)
    }

    /// The pipeline has stopped: its receiver is gone.
    fn stopped() -> Self {
        let (sender, requests) = mpsc::channel(1);
        drop(requests);
        let registry = Arc::new(Registry::new());
        Self::with_pipeline(
            Some(TOKEN),
            PipelineHandle::new(sender),
            registry,
            Arc::default(),
        )
    }

    fn with_pipeline(
        token: Option<&'static str>,
        pipeline: PipelineHandle,
        registry: Arc<Registry>,
        changes: Arc<Mutex<Vec<Change>>>,
    ) -> Self {
        let app = router(AdminState {
            pipeline,
            registry: registry.clone(),
            metrics: Arc::default(),
            token: token.map(|t| Token::new(t).unwrap()),
            max_wasm_size: MAX_WASM,
            mesh: None,
            certificates: None,
            logs: Arc::default(),
            restart: None,
            restarting: Arc::default(),
        });
        Harness {
            app,
            registry,
            changes,
            token,
        }
    }

    /// A request with the right token (if one is set).
    fn request(&self, method: Method, uri: &str) -> http::request::Builder {
        let builder = Request::builder().method(method).uri(uri);
        match self.token {
            Some(token) => builder.header(header::AUTHORIZATION, format!("Bearer {token}")),
            None => builder,
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    /// Sends and parses the JSON answer.
    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, headers, body) = self.send(request).await;
        assert_eq!(
            headers.get(header::CONTENT_TYPE).unwrap(),
            "application/json",
            "{status}: {}",
            String::from_utf8_lossy(&body)
        );
        let json = serde_json::from_slice(&body).unwrap();
        (status, json)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(self.request(Method::GET, uri).body(Body::empty()).unwrap())
            .await
    }

    async fn post_empty(&self, uri: &str) -> (StatusCode, Value) {
        self.call(self.request(Method::POST, uri).body(Body::empty()).unwrap())
            .await
    }

    async fn put_wasm(&self, uri: &str, wasm: &'static [u8]) -> (StatusCode, Value) {
        let request = self
            .request(Method::PUT, uri)
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(Body::from(wasm))
            .unwrap();
        self.call(request).await
    }

    async fn post_json(&self, uri: &str, body: Value) -> (StatusCode, Value) {
        let request = self
            .request(Method::POST, uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.call(request).await
    }

    fn changes(&self) -> Vec<Change> {
        self.changes.lock().unwrap().clone()
    }
}

fn app_of(change: &Change) -> Option<&str> {
    match change {
        Change::Upsert(spec) => Some(&spec.name),
        Change::Rollback { name, .. }
        | Change::Canary { name, .. }
        | Change::Promote { name, .. }
        | Change::Abort { name, .. } => Some(name),
        Change::Remove { .. } | Change::Snapshot(_) => None,
    }
}

/// An app the registry knows: being deployed, from the API (an
/// `AppVersion` needs wasmtime; the e2e tests cover live versions).
fn status(name: &str) -> AppStatus {
    let mut status = AppStatus::new(name, Origin::Api);
    status.route = Some(meshd_routes::Route::parse(&format!("/{name}")).unwrap());
    status.deploying = true;
    status
}

fn publish(registry: &Registry, names: &[&str]) {
    let mut set = AppSet::default();
    for name in names {
        set.apps.insert(name.to_string(), status(name));
    }
    registry.publish(set);
}

fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "XyZ-boundary-42";
    let mut body = Vec::new();
    for (name, bytes) in parts {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn assert_error(status: StatusCode, json: &Value, expected: StatusCode, kind: &str) {
    assert_eq!(status, expected, "{json}");
    assert_eq!(json["error"]["kind"], kind, "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );
}

/// A body that never ends, counting the bytes taken from it.
struct Endless {
    taken: Arc<AtomicUsize>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        const CHUNK: usize = 16 * 1024;
        self.taken.fetch_add(CHUNK, Ordering::SeqCst);
        Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(vec![
            0u8;
            CHUNK
        ])))))
    }
}

// === auth ===

#[tokio::test]
async fn without_the_right_token_every_request_is_401_and_nothing_changes() {
    let harness = Harness::new();
    publish(&harness.registry, &["hello"]);
    let requests = [
        (Method::GET, "/v1/apps"),
        (Method::GET, "/v1/apps/hello"),
        (Method::PUT, "/v1/apps/hello"),
        (Method::DELETE, "/v1/apps/hello"),
        (Method::POST, "/v1/apps/hello/rollback"),
        (Method::POST, "/v1/apps/hello/canary?percent=10"),
        (Method::POST, "/v1/apps/hello/promote"),
        (Method::POST, "/v1/apps/hello/abort"),
        (Method::GET, "/metrics"),
        (Method::GET, "/v1/certificates"),
        (Method::GET, "/no/such/path"),
    ];
    let wrong = [
        None,
        Some("Bearer not-the-token"),
        Some("Bearer 0123456789abcdef-admin-toke"),
        Some("Bearer 0123456789abcdef-admin-tokenX"),
        Some("Basic 0123456789abcdef-admin-token"),
        Some(TOKEN),
    ];
    for (method, uri) in requests {
        for authorization in wrong {
            let mut builder = Request::builder().method(method.clone()).uri(uri);
            if let Some(value) = authorization {
                builder = builder.header(header::AUTHORIZATION, value);
            }
            let request = builder
                .header(header::CONTENT_TYPE, "application/wasm")
                .body(Body::from("\0asm"))
                .unwrap();
            let (status, headers, body) = harness.send(request).await;
            let json: Value = serde_json::from_slice(&body).unwrap();
            assert_error(status, &json, StatusCode::UNAUTHORIZED, "unauthorized");
            assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        }
    }
    assert!(harness.changes().is_empty());
}

#[tokio::test]
async fn certificates_without_acme_are_an_empty_list() {
    let harness = Harness::new();
    let (status, json) = harness.get("/v1/certificates").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({"acme": false, "certificates": []}));
}

#[tokio::test]
async fn the_right_token_is_let_in_and_the_scheme_is_case_insensitive() {
    let harness = Harness::new();
    let (status, json) = harness.get("/v1/apps").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({"apps": []}));

    let request = Request::get("/v1/apps")
        .header(header::AUTHORIZATION, format!("bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_eq!((status, json), (StatusCode::OK, json!({"apps": []})));
}

#[tokio::test]
async fn the_probes_answer_without_a_token() {
    let harness = Harness::new();
    for path in ["/healthz", "/readyz"] {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let (status, _, _) = harness.send(request).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
}

#[tokio::test]
async fn without_a_configured_token_no_header_is_needed() {
    let harness = Harness::answering(None, Box::new(|_| Ok(Applied::Deployed)));
    let (status, _) = harness.put_wasm("/v1/apps/hello", b"\0asm").await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(harness.changes().len(), 1);
}

// === reading apps ===

#[tokio::test]
async fn apps_are_listed_by_name_without_the_gone_ones() {
    let harness = Harness::new();
    let mut set = AppSet::default();
    for name in ["zeta", "alpha"] {
        set.apps.insert(name.into(), status(name));
    }
    // Removed and drained: not shown.
    set.apps
        .insert("gone".into(), AppStatus::new("gone", Origin::Api));
    let mut refused = AppStatus::new("broken", Origin::Dir);
    refused.last_error = Some((
        Refused::Compile("broken.wasm: bad code".into()),
        std::time::SystemTime::now(),
    ));
    set.apps.insert("broken".into(), refused);
    harness.registry.publish(set);

    let (status, json) = harness.get("/v1/apps").await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<&str> = json["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|app| app["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "broken", "zeta"]);
    let broken = &json["apps"][1];
    assert_eq!(broken["state"], "refused");
    assert_eq!(broken["origin"], "dir");
    assert_eq!(broken["last_error"]["kind"], "compile_error");
    assert_eq!(broken["last_error"]["message"], "broken.wasm: bad code");

    let (status, json) = harness.get("/v1/apps/alpha").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["name"], "alpha");
    assert_eq!(json["route"], "/alpha");
    assert_eq!(json["state"], "loading");
    assert_eq!(json["origin"], "api");
    assert_eq!(json["version"], Value::Null);
    assert_eq!(json["canary"], Value::Null);
    assert_eq!(json["kept"], json!([]));
    assert_eq!(json["in_flight"], 0);

    for missing in ["/v1/apps/nobody", "/v1/apps/gone"] {
        let (status, json) = harness.get(missing).await;
        assert_error(status, &json, StatusCode::NOT_FOUND, "not_found");
    }
}

#[tokio::test]
async fn a_bad_app_name_is_400_and_reaches_no_pipeline() {
    let harness = Harness::new();
    let too_long = format!("/v1/apps/{}", "a".repeat(65));
    let longest = format!("/v1/apps/{}", "a".repeat(64));
    for uri in [
        "/v1/apps/bad.name",
        "/v1/apps/-dash",
        "/v1/apps/_under",
        "/v1/apps/sp%20ace",
        "/v1/apps/%2E%2E",
        "/v1/apps/caf%C3%A9",
        too_long.as_str(),
    ] {
        let (status, json) = harness.put_wasm(uri, b"\0asm").await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
        let (status, json) = harness.get(uri).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert!(harness.changes().is_empty());

    let (status, _) = harness.put_wasm(&longest, b"\0asm").await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = harness.put_wasm("/v1/apps/A-b_9", b"\0asm").await;
    assert_eq!(status, StatusCode::CREATED);
}

// === deploying ===

#[tokio::test]
async fn a_wasm_body_is_deployed_as_an_api_upsert_of_exactly_those_bytes() {
    let harness = Harness::new();
    let (status, json) = harness
        .put_wasm("/v1/apps/hello", b"\0asm\x0d\0\x01\0 bytes")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["name"], "hello");
    assert_eq!(json["route"], "/hello");

    let changes = harness.changes();
    let [Change::Upsert(spec)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(spec.name, "hello");
    assert_eq!(spec.origin, Origin::Api);
    assert_eq!(
        &spec.wasm.in_memory().unwrap()[..],
        b"\0asm\x0d\0\x01\0 bytes"
    );
    assert_eq!(spec.manifest, None);
    assert_eq!(spec.wasm_label, "upload");
    assert_eq!(spec.manifest_label, None);
}

#[tokio::test]
async fn the_same_version_again_is_200() {
    let harness = Harness::answering(Some(TOKEN), Box::new(|_| Ok(Applied::Unchanged)));
    let (status, json) = harness.put_wasm("/v1/apps/hello", b"\0asm").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["name"], "hello");
}

#[tokio::test]
async fn a_multipart_upload_carries_the_wasm_and_the_manifest() {
    let harness = Harness::new();
    let manifest = "route = \"/greet\"\n";
    let (content_type, body) =
        multipart(&[("manifest", manifest.as_bytes()), ("wasm", b"\0asm\r\n--x")]);
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    let changes = harness.changes();
    let [Change::Upsert(spec)] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!(spec.origin, Origin::Api);
    assert_eq!(&spec.wasm.in_memory().unwrap()[..], b"\0asm\r\n--x");
    assert_eq!(spec.manifest.as_deref(), Some(manifest));
    assert_eq!(spec.wasm_label, "upload");
    assert_eq!(spec.manifest_label.as_deref(), Some("uploaded manifest"));
}

#[tokio::test]
async fn bad_uploads_are_400_or_415_and_reach_no_pipeline() {
    let harness = Harness::new();
    // No wasm part; an unknown part; two wasm parts; a manifest not UTF-8.
    type Parts<'a> = &'a [(&'a str, &'a [u8])];
    let cases: [Parts; 4] = [
        &[("manifest", b"route = \"/x\"")],
        &[("wasm", b"\0asm"), ("extra", b"?")],
        &[("wasm", b"\0asm"), ("wasm", b"\0asm")],
        &[("wasm", b"\0asm"), ("manifest", b"\xff\xfe")],
    ];
    for parts in cases {
        let (content_type, body) = multipart(parts);
        let request = harness
            .request(Method::PUT, "/v1/apps/hello")
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap();
        let (status, json) = harness.call(request).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    }

    // Garbage instead of a form.
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, "multipart/form-data; boundary=zz")
        .body(Body::from("this is not a form"))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");

    // No boundary.
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, "multipart/form-data")
        .body(Body::from("x"))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");

    for content_type in [Some("text/plain"), Some("application/octet-stream"), None] {
        let mut builder = harness.request(Method::PUT, "/v1/apps/hello");
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        let (status, json) = harness
            .call(builder.body(Body::from("\0asm")).unwrap())
            .await;
        assert_error(
            status,
            &json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_request",
        );
    }
    assert!(harness.changes().is_empty());
}

#[tokio::test]
async fn a_wasm_over_the_limit_is_413_whatever_its_form() {
    let harness = Harness::new();
    let limit = MAX_WASM as usize;

    // Exactly the limit is fine; one byte more is not.
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, "application/wasm")
        .body(Body::from(vec![7u8; limit]))
        .unwrap();
    assert_eq!(harness.call(request).await.0, StatusCode::CREATED);
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, "application/wasm")
        .body(Body::from(vec![7u8; limit + 1]))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    // In a form: the wasm part alone is held to the limit.
    let big = vec![7u8; limit + 1];
    let (content_type, body) = multipart(&[("wasm", &big)]);
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    let exact = vec![7u8; limit];
    let (content_type, body) = multipart(&[("wasm", &exact), ("manifest", b"route = \"/x\"")]);
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(harness.call(request).await.0, StatusCode::CREATED);

    // A canary upload has the same limit.
    let request = harness
        .request(Method::POST, "/v1/apps/hello/canary?percent=5")
        .header(header::CONTENT_TYPE, "application/wasm")
        .body(Body::from(vec![7u8; limit + 1]))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    let changes = harness.changes();
    assert_eq!(
        changes.len(),
        2,
        "only the uploads within the limit: {changes:?}"
    );
}

#[tokio::test]
async fn an_endless_upload_is_read_only_up_to_the_limit() {
    let harness = Harness::new();
    for content_type in ["application/wasm", "multipart/form-data; boundary=zz"] {
        let taken = Arc::new(AtomicUsize::new(0));
        let body = Body::new(Endless {
            taken: taken.clone(),
        });
        let request = harness
            .request(Method::PUT, "/v1/apps/hello")
            .header(header::CONTENT_TYPE, content_type)
            .body(body)
            .unwrap();
        let (status, json) = harness.call(request).await;
        // The form never finds its first boundary: the stream cap stops it.
        assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
        let taken = taken.load(Ordering::SeqCst);
        let most = MAX_WASM as usize + 128 * 1024;
        assert!(taken <= most, "{content_type}: read {taken} bytes");
    }

    // A declared length over the limit: refused before any byte is read.
    let taken = Arc::new(AtomicUsize::new(0));
    let request = harness
        .request(Method::PUT, "/v1/apps/hello")
        .header(header::CONTENT_TYPE, "application/wasm")
        .header(header::CONTENT_LENGTH, (MAX_WASM + 1).to_string())
        .body(Body::new(Endless {
            taken: taken.clone(),
        }))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_error(status, &json, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(taken.load(Ordering::SeqCst), 0);
    assert!(harness.changes().is_empty());
}

// === refusals ===

#[tokio::test]
async fn a_refusal_is_422_with_its_kind_message_and_app() {
    let harness = Harness::answering(
        Some(TOKEN),
        Box::new(|_| {
            Err(Refused::HealthCheck(
                "upload: GET / answered 500 Internal Server Error".into(),
            ))
        }),
    );
    let (status, json) = harness.put_wasm("/v1/apps/hello", b"\0asm").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        json,
        json!({"error": {
            "kind": "health_check",
            "message": "upload: GET / answered 500 Internal Server Error",
            "app": "hello",
        }})
    );
}

#[tokio::test]
async fn an_origin_conflict_is_422_naming_both_sources() {
    let harness = Harness::answering(
        Some(TOKEN),
        Box::new(|_| {
            Err(Refused::OriginConflict {
                app: "hello".into(),
                owner: Origin::Dir,
                asked: Origin::Api,
            })
        }),
    );
    let (status, json) = harness.post_empty("/v1/apps/hello/rollback").await;
    assert_error(
        status,
        &json,
        StatusCode::UNPROCESSABLE_ENTITY,
        "origin_conflict",
    );
    let message = json["error"]["message"].as_str().unwrap();
    assert!(message.contains("the apps directory") && message.contains("the admin API"));
}

#[tokio::test]
async fn an_unknown_app_is_404_and_a_stopping_pipeline_503() {
    let harness = Harness::answering(
        Some(TOKEN),
        Box::new(|change| Err(Refused::NotFound(app_of(change).unwrap_or("?").into()))),
    );
    for uri in [
        "/v1/apps/nobody/promote",
        "/v1/apps/nobody/abort",
        "/v1/apps/nobody/rollback",
    ] {
        let (status, json) = harness.post_empty(uri).await;
        assert_error(status, &json, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(json["error"]["app"], "nobody");
        assert_eq!(json["error"]["message"], "no app named nobody");
    }

    let harness = Harness::stopped();
    let (status, json) = harness.put_wasm("/v1/apps/hello", b"\0asm").await;
    assert_error(status, &json, StatusCode::SERVICE_UNAVAILABLE, "stopped");
}

// === remove, rollback, canary, promote, abort ===

#[tokio::test]
async fn delete_removes_the_app_as_the_api() {
    let harness = Harness::answering(Some(TOKEN), Box::new(|_| Ok(Applied::Removed)));
    let request = harness
        .request(Method::DELETE, "/v1/apps/hello")
        .body(Body::empty())
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_eq!(
        (status, json),
        (StatusCode::OK, json!({"removed": "hello"}))
    );
    let changes = harness.changes();
    let [Change::Remove { name, origin }] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    assert_eq!((name.as_str(), *origin), ("hello", Origin::Api));
}

#[tokio::test]
async fn rollback_goes_to_the_previous_version_or_the_one_named() {
    let harness = Harness::new();
    let digest = "ab".repeat(32);
    let (status, json) = harness.post_empty("/v1/apps/hello/rollback").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["name"], "hello");
    let (status, _) = harness
        .post_json(
            "/v1/apps/hello/rollback",
            json!({"version": "0123456789AB"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = harness
        .post_json(
            "/v1/apps/hello/rollback",
            json!({"version": format!("sha256:{digest}")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // `curl -d` sends JSON as a form; an empty object is fine too.
    let request = harness
        .request(Method::POST, "/v1/apps/hello/rollback")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("{}"))
        .unwrap();
    assert_eq!(harness.call(request).await.0, StatusCode::OK);

    let targets: Vec<Option<String>> = harness
        .changes()
        .into_iter()
        .map(|change| match change {
            Change::Rollback { name, origin, to } => {
                assert_eq!((name.as_str(), origin), ("hello", Origin::Api));
                to
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        [None, Some("0123456789ab".into()), Some(digest), None]
    );

    for bad in [
        json!({"version": "123"}),
        json!({"version": "zz3456789abc"}),
        json!({"version": 5}),
        json!({"to": "0123456789ab"}),
    ] {
        let (status, json) = harness.post_json("/v1/apps/hello/rollback", bad).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    }
    assert_eq!(harness.changes().len(), 4);
}

#[tokio::test]
async fn a_canary_of_a_kept_version_is_sent_with_its_share_and_sticky_header() {
    let harness = Harness::new();
    let (status, json) = harness
        .post_json(
            "/v1/apps/hello/canary",
            json!({"version": "0123456789ab", "percent": 10, "sticky_header": "X-User"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(json["name"], "hello");
    // The share may also come in the query string.
    let (status, _) = harness
        .post_json(
            "/v1/apps/hello/canary?percent=50",
            json!({"version": "0123456789ab"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let changes = harness.changes();
    let [first, second] = changes.as_slice() else {
        panic!("{changes:?}")
    };
    let Change::Canary {
        name,
        origin,
        from: CanarySource::Kept(version),
        percent,
        sticky_header,
    } = first
    else {
        panic!("{first:?}")
    };
    assert_eq!((name.as_str(), *origin), ("hello", Origin::Api));
    assert_eq!((version.as_str(), *percent), ("0123456789ab", 10));
    assert_eq!(sticky_header.as_ref().map(|h| h.as_str()), Some("x-user"));
    let Change::Canary {
        percent: 50,
        sticky_header: None,
        ..
    } = second
    else {
        panic!("{second:?}")
    };
}

#[tokio::test]
async fn a_canary_upload_takes_its_share_from_the_query() {
    let harness = Harness::new();
    let request = harness
        .request(
            Method::POST,
            "/v1/apps/hello/canary?percent=25&sticky_header=x-session",
        )
        .header(header::CONTENT_TYPE, "application/wasm")
        .body(Body::from("\0asm v2"))
        .unwrap();
    let (status, json) = harness.call(request).await;
    assert_eq!(status, StatusCode::CREATED, "{json}");

    let manifest = "route = \"/hello\"";
    let (content_type, body) =
        multipart(&[("wasm", b"\0asm v3"), ("manifest", manifest.as_bytes())]);
    let request = harness
        .request(Method::POST, "/v1/apps/hello/canary?percent=99")
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .unwrap();
    assert_eq!(harness.call(request).await.0, StatusCode::CREATED);

    let changes = harness.changes();
    let [Change::Canary {
        from: CanarySource::Upload(first),
        percent: 25,
        sticky_header: Some(sticky),
        origin: Origin::Api,
        ..
    }, Change::Canary {
        from: CanarySource::Upload(second),
        percent: 99,
        sticky_header: None,
        ..
    }] = changes.as_slice()
    else {
        panic!("{changes:?}")
    };
    assert_eq!(sticky.as_str(), "x-session");
    assert_eq!(
        (&first.wasm.in_memory().unwrap()[..], first.origin),
        (&b"\0asm v2"[..], Origin::Api)
    );
    assert_eq!(first.manifest, None);
    assert_eq!(&second.wasm.in_memory().unwrap()[..], b"\0asm v3");
    assert_eq!(second.manifest.as_deref(), Some(manifest));
}

#[tokio::test]
async fn a_canary_share_outside_1_to_99_is_400() {
    let harness = Harness::new();
    for uri in [
        "/v1/apps/hello/canary?percent=0",
        "/v1/apps/hello/canary?percent=100",
        "/v1/apps/hello/canary?percent=1000",
        "/v1/apps/hello/canary?percent=-5",
        "/v1/apps/hello/canary?percent=ten",
        "/v1/apps/hello/canary",
        "/v1/apps/hello/canary?percent=10&sticky_header=bad%20header",
    ] {
        let (status, json) = harness.put_like_canary(uri).await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    }
    for percent in [0, 100] {
        let (status, json) = harness
            .post_json(
                "/v1/apps/hello/canary",
                json!({"version": "0123456789ab", "percent": percent}),
            )
            .await;
        assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    }
    let (status, json) = harness
        .post_json("/v1/apps/hello/canary", json!({"percent": 10}))
        .await;
    assert_error(status, &json, StatusCode::BAD_REQUEST, "bad_request");
    assert!(harness.changes().is_empty());
}

impl Harness {
    async fn put_like_canary(&self, uri: &str) -> (StatusCode, Value) {
        let request = self
            .request(Method::POST, uri)
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(Body::from("\0asm"))
            .unwrap();
        self.call(request).await
    }
}

#[tokio::test]
async fn promote_and_abort_are_sent_as_the_api() {
    let harness = Harness::new();
    let (status, json) = harness.post_empty("/v1/apps/hello/promote").await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["name"], "hello");
    let (status, _) = harness.post_empty("/v1/apps/hello/abort").await;
    assert_eq!(status, StatusCode::OK);
    let changes = harness.changes();
    let [Change::Promote {
        name: promoted,
        origin: Origin::Api,
    }, Change::Abort {
        name: aborted,
        origin: Origin::Api,
    }] = changes.as_slice()
    else {
        panic!("{changes:?}")
    };
    assert_eq!((promoted.as_str(), aborted.as_str()), ("hello", "hello"));
}

// === probes, metrics, unknown paths ===

#[tokio::test]
async fn readyz_is_503_until_the_first_load_is_decided() {
    let harness = Harness::new();
    let startup = harness.registry.startup();
    startup.expect(3);
    startup.decided();
    let (status, json) = harness.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json, json!({"ready": false, "loaded": 1, "total": 3}));

    startup.finish();
    let (status, json) = harness.get("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json, json!({"ready": true, "loaded": 3, "total": 3}));

    let (status, json) = harness.get("/healthz").await;
    assert_eq!(
        (status, json),
        (
            StatusCode::OK,
            json!({"status": "ok", "pid": std::process::id()})
        )
    );
}

#[tokio::test]
async fn metrics_are_the_registry_in_openmetrics_text() {
    let mut metrics = prometheus_client::registry::Registry::default();
    let counter = prometheus_client::metrics::counter::Counter::<u64>::default();
    metrics.register("meshd_test_things", "Things counted", counter.clone());
    counter.inc_by(7);
    let app = router(AdminState {
        pipeline: PipelineHandle::new(mpsc::channel(1).0),
        registry: Arc::new(Registry::new()),
        metrics: Arc::new(metrics),
        token: None,
        max_wasm_size: MAX_WASM,
        mesh: None,
        certificates: None,
        logs: Arc::default(),
        restart: None,
        restarting: Arc::default(),
    });
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("meshd_test_things_total 7"), "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_in_json() {
    let harness = Harness::new();
    let (status, json) = harness.get("/v2/apps").await;
    assert_error(status, &json, StatusCode::NOT_FOUND, "not_found");
    let (status, json) = harness.get("/v1/apps/hello/nothing").await;
    assert_error(status, &json, StatusCode::NOT_FOUND, "not_found");

    for (method, uri) in [
        (Method::POST, "/v1/apps"),
        (Method::POST, "/v1/apps/hello"),
        (Method::GET, "/v1/apps/hello/rollback"),
        (Method::PUT, "/v1/apps/hello/promote"),
        (Method::DELETE, "/healthz"),
    ] {
        let request = harness.request(method, uri).body(Body::empty()).unwrap();
        let (status, json) = harness.call(request).await;
        assert_error(
            status,
            &json,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
    assert!(harness.changes().is_empty());
}

/// Uploads are held two at a time until the pipeline has decided them: a
/// third is not read (nor sent) until one of the first two is answered.
#[tokio::test]
async fn at_most_two_uploads_are_held_at_once() {
    let (sender, mut requests) = mpsc::channel::<meshd_reload::Request>(8);
    let harness = Harness::with_pipeline(
        Some(TOKEN),
        PipelineHandle::new(sender),
        Arc::new(Registry::new()),
        Arc::default(),
    );
    publish(&harness.registry, &["a", "b", "c"]);
    let mut uploads = Vec::new();
    for name in ["a", "b", "c"] {
        let request = harness
            .request(Method::PUT, &format!("/v1/apps/{name}"))
            .header(header::CONTENT_TYPE, "application/wasm")
            .body(Body::from("\0asm"))
            .unwrap();
        let app = harness.app.clone();
        uploads.push(tokio::spawn(async move {
            app.oneshot(request).await.unwrap().status()
        }));
    }
    let wait = std::time::Duration::from_secs(10);
    let first = tokio::time::timeout(wait, requests.recv())
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(wait, requests.recv())
        .await
        .unwrap()
        .unwrap();
    // Both places are taken and neither change is answered: the third waits.
    let held = std::time::Duration::from_millis(300);
    assert!(
        tokio::time::timeout(held, requests.recv()).await.is_err(),
        "a third upload reached the pipeline while two were held"
    );
    first.reply.send(Ok(Applied::Deployed)).unwrap();
    let third = tokio::time::timeout(wait, requests.recv())
        .await
        .unwrap()
        .unwrap();
    second.reply.send(Ok(Applied::Deployed)).unwrap();
    third.reply.send(Ok(Applied::Deployed)).unwrap();
    for upload in uploads {
        assert_eq!(upload.await.unwrap(), StatusCode::CREATED);
    }
}
