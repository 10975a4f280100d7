//! Helpers of the canary and CLI tests: an admin API client (uploads,
//! canaries, JSON answers), and a load generator that counts which version
//! answered each request.

use super::client::{empty, full, Client, Reply};
use bytes::Bytes;
use http::Request;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The answer of the `hello` guest.
pub const HELLO: &str = "Hello from Steelmesh!\n";

/// The boundary of the multipart forms this client builds.
const BOUNDARY: &str = "steelmesh-e2e-boundary-7f3a";

/// A client of meshd's admin API.
#[derive(Clone)]
pub struct Admin {
    base: String,
    token: Option<String>,
    client: Client,
}

impl Admin {
    /// The admin API at `base` (`http://ADDR`), without a token.
    pub fn new(base: String) -> Self {
        Admin {
            base,
            token: None,
            client: Client::http1(),
        }
    }

    /// The same API, sending `Authorization: Bearer TOKEN`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request to the admin API and reads the whole answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Reply {
        let mut builder = Request::builder().method(method).uri(self.url(path));
        if let Some(token) = &self.token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        if let Some(content_type) = content_type {
            builder = builder.header("content-type", content_type);
        }
        let body = if body.is_empty() { empty() } else { full(body) };
        let request = builder.body(body).expect("a valid request");
        self.client
            .fetch(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {path} on the admin API failed: {e}"))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, None, Bytes::new()).await
    }

    /// `POST path` without a body.
    pub async fn post(&self, path: &str) -> Reply {
        self.send("POST", path, None, Bytes::new()).await
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, json: serde_json::Value) -> Reply {
        let body = Bytes::from(json.to_string());
        self.send("POST", path, Some("application/json"), body)
            .await
    }

    /// `PUT /v1/apps/NAME` with the wasm alone.
    pub async fn deploy(&self, name: &str, wasm: &[u8]) -> Reply {
        let path = format!("/v1/apps/{name}");
        self.send("PUT", &path, Some("application/wasm"), wasm.to_vec().into())
            .await
    }

    /// `POST /v1/apps/NAME/canary?QUERY` with the wasm alone.
    pub async fn canary(&self, name: &str, query: &str, wasm: &[u8]) -> Reply {
        let path = format!("/v1/apps/{name}/canary?{query}");
        self.send(
            "POST",
            &path,
            Some("application/wasm"),
            wasm.to_vec().into(),
        )
        .await
    }

    /// `POST /v1/apps/NAME/canary?QUERY` with a form: parts `wasm` and
    /// `manifest`.
    pub async fn canary_with_manifest(
        &self,
        name: &str,
        query: &str,
        wasm: &[u8],
        manifest: &str,
    ) -> Reply {
        let path = format!("/v1/apps/{name}/canary?{query}");
        let (content_type, body) = form(wasm, manifest);
        self.send("POST", &path, Some(&content_type), body).await
    }

    /// The app object of `GET /v1/apps/NAME`, which must answer 200.
    pub async fn app(&self, name: &str) -> serde_json::Value {
        let reply = self.get(&format!("/v1/apps/{name}")).await;
        assert_eq!(reply.status, 200, "GET /v1/apps/{name}: {}", reply.text());
        reply.json()
    }
}

/// A `multipart/form-data` body with parts `wasm` and `manifest`, and its
/// content type.
pub fn form(wasm: &[u8], manifest: &str) -> (String, Bytes) {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"wasm\"; filename=\"app.wasm\"\r\n\
             Content-Type: application/wasm\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(wasm);
    body.extend_from_slice(
        format!(
            "\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"manifest\"; filename=\"app.toml\"\r\n\
             Content-Type: application/toml\r\n\r\n{manifest}\r\n--{BOUNDARY}--\r\n"
        )
        .as_bytes(),
    );
    (
        format!("multipart/form-data; boundary={BOUNDARY}"),
        body.into(),
    )
}

/// Asserts that an admin answer is an error of `status` and `kind`.
pub fn assert_error(reply: &Reply, status: u16, kind: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.json()["error"]["kind"], kind, "{}", reply.text());
}

/// Which guest answered a request, by its whole body: `hello`, `echo`,
/// `stream`, `stream-v2`, or `None` for anything else (a cut or foreign
/// body).
pub fn answered_by(body: &[u8]) -> Option<&'static str> {
    if body == HELLO.as_bytes() {
        return Some("hello");
    }
    if body == b"stream" {
        return Some("stream");
    }
    if body == b"stream-v2" {
        return Some("stream-v2");
    }
    // echo's answer is one complete JSON object describing the request.
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    (json["method"] == "GET" && json["path"].is_string()).then_some("echo")
}

/// What a load generator saw.
#[derive(Debug, Default)]
pub struct Tally {
    /// Per request: the phase when it was sent, the phase when its answer
    /// was read whole, and the guest that answered.
    pub answers: Vec<(usize, usize, &'static str)>,
    /// Every request that failed: transport error, status other than 200,
    /// or a body no guest gives.
    pub failures: Vec<String>,
}

impl Tally {
    /// How many answers of `guest` were sent in phase `phase` or later.
    pub fn sent_from(&self, phase: usize, guest: &str) -> usize {
        self.answers
            .iter()
            .filter(|(sent, _, g)| *sent >= phase && *g == guest)
            .count()
    }

    /// The guests that answered requests sent in phase `phase` or later.
    pub fn guests_sent_from(&self, phase: usize) -> Vec<&'static str> {
        let mut guests: Vec<_> = self
            .answers
            .iter()
            .filter(|(sent, _, _)| *sent >= phase)
            .map(|(_, _, g)| *g)
            .collect();
        guests.sort();
        guests.dedup();
        guests
    }

    /// How many answers (sent at any time) were read whole in phase
    /// `phase` or later.
    pub fn completed_from(&self, phase: usize) -> usize {
        self.answers
            .iter()
            .filter(|(_, done, _)| *done >= phase)
            .count()
    }
}

/// Several tasks sending `GET url` in a loop, each on its own keep-alive
/// HTTP/1.1 connection without retries (a request meshd fails shows as a
/// failure instead of being retried), until stopped. The test moves the
/// phase forward at each switch it makes; every answer records the phase
/// at which it was sent.
pub struct Load {
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts `tasks` clients of `url`.
    pub fn start(url: String, tasks: usize) -> Load {
        let phase = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let tasks = (0..tasks)
            .map(|_| {
                let (phase, stop, tally, url) =
                    (phase.clone(), stop.clone(), tally.clone(), url.clone());
                tokio::spawn(async move {
                    let client = Client::http1_no_retries();
                    while !stop.load(Ordering::SeqCst) {
                        let sent = phase.load(Ordering::SeqCst);
                        let outcome = client
                            .fetch(super::client::request("GET", &url, empty()))
                            .await;
                        let done = phase.load(Ordering::SeqCst);
                        let mut tally = tally.lock().unwrap();
                        match outcome {
                            Err(e) => tally.failures.push(format!("GET {url}: {e}")),
                            Ok(reply) if reply.status != 200 => tally.failures.push(format!(
                                "GET {url}: {} {}",
                                reply.status,
                                reply.text()
                            )),
                            Ok(reply) => match answered_by(&reply.body) {
                                Some(guest) => tally.answers.push((sent, done, guest)),
                                None => tally
                                    .failures
                                    .push(format!("GET {url}: body {:?}", reply.text())),
                            },
                        }
                    }
                })
            })
            .collect();
        Load {
            phase,
            stop,
            tally,
            tasks,
        }
    }

    /// Moves to the next phase (after a switch has been answered).
    pub fn next_phase(&self) -> usize {
        self.phase.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Waits until at least `count` answers of `guest` were sent in phase
    /// `phase` or later (at most 60 s).
    pub async fn wait_for(&self, phase: usize, guest: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let tally = self.tally.lock().unwrap();
                if tally.sent_from(phase, guest) >= count {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "fewer than {count} answers of {guest} in phase {phase} within 60 s; failures: {:?}",
                    tally.failures
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the clients and returns what they saw.
    pub async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("a load task panicked");
        }
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

/// Which of `stream` and `stream-v2` answered `GET /drip?chunks=N`, by its
/// whole body: N lines `TAG chunk I`, I from 0; `None` for anything else
/// (a body cut short).
pub fn drip_by(body: &[u8], chunks: usize) -> Option<&'static str> {
    ["stream", "stream-v2"].into_iter().find(|tag| {
        let whole: String = (0..chunks).map(|i| format!("{tag} chunk {i}\n")).collect();
        body == whole.as_bytes()
    })
}
