//! Helpers of the canary and CLI tests: which guest answered, and a load
//! generator that counts which version answered each request. (The admin
//! API client is support::admin's.)

use super::client::{empty, Client, Reply};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The answer of the `hello` guest.
pub const HELLO: &str = "Hello from Steelmesh!\n";

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
