//! Zero-downtime hot swap: make before break, one app at a time.

use crate::support::{empty, guest, request, spawn_get, AppsDir, Client, Meshd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SWAP_WAIT: Duration = Duration::from_secs(30);

/// Polls `url` until it answers 200 with `body`, returning how long it took.
async fn wait_for_body(client: &Client, url: &str, body: &str) -> Duration {
    let started = Instant::now();
    loop {
        if let Ok(reply) = client.fetch(request("GET", url, empty())).await {
            if reply.status == 200 && reply.text() == body {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < SWAP_WAIT,
            "{url} did not answer {body:?} within {SWAP_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `url` until it answers with `status`.
async fn wait_for_status(client: &Client, url: &str, status: u16) {
    let started = Instant::now();
    loop {
        if let Ok(reply) = client.fetch(request("GET", url, empty())).await {
            if reply.status == status {
                return;
            }
        }
        assert!(
            started.elapsed() < SWAP_WAIT,
            "{url} did not answer {status} within {SWAP_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The two protocols of the swap test's load.
const PROTOCOLS: [&str; 2] = ["HTTP/1.1", "h2"];

/// Slow requests of the swap test: streamed for 4 s, far longer than a swap.
const SLOW_CHUNKS: usize = 40;
const SLOW_PATH: &str = "/app/drip?chunks=40&ms=100";
/// Quick requests, so that every swap window has completed requests.
const QUICK_PATH: &str = "/app/drip?chunks=2&ms=10";

/// What the swap test's load saw, shared between the clients and the test.
#[derive(Default)]
struct SwapTally {
    /// Swaps triggered (a new version written) so far.
    triggered: AtomicUsize,
    /// Swaps done (the new version answers) so far.
    done: AtomicUsize,
    /// Per protocol: slow responses whose head arrived at the client and
    /// whose body has not ended, each with the swaps triggered before its
    /// head arrived.
    slow_heads: [Mutex<Vec<usize>>; 2],
    /// Per swap, per protocol: slow requests whose head arrived before the
    /// swap was triggered and whose body was still streaming after the swap
    /// was done.
    spanned: Mutex<Vec<[usize; 2]>>,
    /// Per swap window (window `w` ends when swap `w` is done): requests
    /// completed in it.
    completed: Mutex<Vec<usize>>,
    failures: Mutex<Vec<String>>,
    stop: AtomicBool,
}

impl SwapTally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

/// One client of the swap test: `GET path` again and again on its own
/// connection, with retries off. Every response must be a whole `drip` of
/// `chunks` lines from one version.
async fn swap_client(
    tally: Arc<SwapTally>,
    client: Client,
    protocol: usize,
    url: String,
    chunks: usize,
    slow: bool,
    start_after: Duration,
) {
    use http_body_util::BodyExt as _;
    // Load shaping, not synchronisation: slow clients start at different
    // times so that fresh slow requests arrive all along.
    tokio::time::sleep(start_after).await;
    while !tally.stop.load(Ordering::SeqCst) {
        let resp = match client.send(request("GET", &url, empty())).await {
            Ok(resp) => resp,
            Err(e) => {
                tally.fail(format!("{} {url}: {e}", PROTOCOLS[protocol]));
                continue;
            }
        };
        if resp.status() != 200 {
            tally.fail(format!(
                "{} {url}: status {}",
                PROTOCOLS[protocol],
                resp.status()
            ));
            continue;
        }
        // The head is here: this request is in flight until its body ends.
        let head_triggered = tally.triggered.load(Ordering::SeqCst);
        if slow {
            tally.slow_heads[protocol]
                .lock()
                .unwrap()
                .push(head_triggered);
        }
        let mut body = resp.into_body();
        let mut text = Vec::new();
        // Swaps done before the last frame arrived (read before waiting for
        // it, so a swap counted here was done while the body still streamed).
        let mut done_before_end;
        let result = loop {
            done_before_end = tally.done.load(Ordering::SeqCst);
            match body.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(format!("{e:?}")),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        text.extend_from_slice(data);
                    }
                }
            }
        };
        if slow {
            let mut heads = tally.slow_heads[protocol].lock().unwrap();
            let mine = heads.iter().position(|&h| h == head_triggered).unwrap();
            heads.swap_remove(mine);
        }
        if let Err(e) = result {
            tally.fail(format!("{} {url}: body cut: {e}", PROTOCOLS[protocol]));
            continue;
        }
        let text = String::from_utf8_lossy(&text);
        let tag = text.split(' ').next().unwrap_or_default();
        let expected: String = (0..chunks).map(|i| format!("{tag} chunk {i}\n")).collect();
        if !matches!(tag, "stream" | "stream-v2") || text != expected {
            tally.fail(format!("{} {url}: body {text:?}", PROTOCOLS[protocol]));
            continue;
        }
        if slow {
            let mut spanned = tally.spanned.lock().unwrap();
            for swap in head_triggered..done_before_end {
                spanned[swap][protocol] += 1;
            }
        }
        tally.completed.lock().unwrap()[done_before_end] += 1;
    }
}

/// Waits until `ready` holds, checking every 10 ms; panics with `what` after
/// [`SWAP_WAIT`].
async fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < SWAP_WAIT, "{what} within {SWAP_WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fifty swaps under load of HTTP/1.1 and h2 clients with retries off. Slow
/// requests (streaming for 4 s) are in flight at every swap: each swap is
/// triggered right after a slow response head of each protocol arrived, and
/// the test asserts that for every swap at least one request of each
/// protocol started before it and was still streaming after it. Every
/// request of the load completes whole, and every swap window has completed
/// requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_drop_no_request() {
    const SWAPS: usize = 50;
    /// Requests that complete in each window before the next swap starts.
    const MIN_COMPLETED_PER_WINDOW: usize = 4;
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms"])
        .start();

    let tally = Arc::new(SwapTally {
        spanned: Mutex::new(vec![[0; 2]; SWAPS]),
        completed: Mutex::new(vec![0; SWAPS + 1]),
        ..SwapTally::default()
    });
    let mut load = tokio::task::JoinSet::new();
    for protocol in 0..2 {
        let new_client = || match protocol {
            0 => Client::http1_no_retries(),
            _ => Client::http2_no_retries(),
        };
        // Each client on a connection of its own.
        for n in 0..6 {
            load.spawn(swap_client(
                tally.clone(),
                new_client(),
                protocol,
                meshd.url(SLOW_PATH),
                SLOW_CHUNKS,
                true,
                Duration::from_millis(n * 650),
            ));
        }
        for _ in 0..2 {
            load.spawn(swap_client(
                tally.clone(),
                new_client(),
                protocol,
                meshd.url(QUICK_PATH),
                2,
                false,
                Duration::ZERO,
            ));
        }
    }

    let probe = Client::http1_no_retries();
    let url = meshd.url("/app/");
    for swap in 0..SWAPS {
        // A fresh slow request of each protocol: its head arrived after the
        // previous swap was done, so it has most of its 4 s still to stream.
        wait_until(
            &format!("a slow request of each protocol before swap {swap}"),
            || {
                tally
                    .slow_heads
                    .iter()
                    .all(|heads| heads.lock().unwrap().contains(&swap))
            },
        )
        .await;
        let tag = if swap % 2 == 0 { "stream-v2" } else { "stream" };
        tally.triggered.store(swap + 1, Ordering::SeqCst);
        apps.deploy("app", tag);
        // The swap is done when new requests get the new version; until then
        // they get the old one, and never anything else.
        let started = Instant::now();
        loop {
            let reply = probe
                .fetch(request("GET", &url, empty()))
                .await
                .unwrap_or_else(|e| panic!("swap {swap}: {e}"));
            assert_eq!(reply.status, 200, "swap {swap}: {}", reply.text());
            if reply.text() == tag {
                break;
            }
            assert!(
                started.elapsed() < SWAP_WAIT,
                "swap {swap} not done within {SWAP_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tally.done.store(swap + 1, Ordering::SeqCst);
        // Once the swap has settled, every new request gets the new version.
        for _ in 0..5 {
            assert_eq!(probe.get(&url).await.text(), tag, "after swap {swap}");
        }
        wait_until(
            &format!("{MIN_COMPLETED_PER_WINDOW} requests completed after swap {swap}"),
            || tally.completed.lock().unwrap()[swap + 1] >= MIN_COMPLETED_PER_WINDOW,
        )
        .await;
    }
    tally.stop.store(true, Ordering::SeqCst);
    while load.join_next().await.is_some() {}

    let failures = tally.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let spanned = tally.spanned.lock().unwrap();
    for (swap, per_protocol) in spanned.iter().enumerate() {
        for (protocol, count) in per_protocol.iter().enumerate() {
            assert!(
                *count >= 1,
                "no {} request was in flight across swap {swap}: {spanned:?}",
                PROTOCOLS[protocol]
            );
        }
    }
    let completed = tally.completed.lock().unwrap();
    eprintln!(
        "swap load: in flight across each swap (HTTP/1.1, h2): {spanned:?}; \
         completed per window: {completed:?}"
    );
    assert!(
        completed[1..]
            .iter()
            .all(|&n| n >= MIN_COMPLETED_PER_WINDOW),
        "completed per swap window: {completed:?}"
    );
    assert_eq!(meshd.count_log(&["app updated", "app=app"]), SWAPS);
}

#[tokio::test]
async fn slow_stream_from_the_old_version_completes_after_the_swap() {
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms"])
        .start();
    let client = Client::http1();
    let resp = client
        .send(request(
            "GET",
            &meshd.url("/app/drip?chunks=8&ms=250"),
            empty(),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    apps.deploy("app", "stream-v2");
    wait_for_body(&Client::http1(), &meshd.url("/app/"), "stream-v2").await;

    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .expect("the old version's body completes")
        .to_bytes();
    let expected: String = (0..8).map(|i| format!("stream chunk {i}\n")).collect();
    assert_eq!(String::from_utf8_lossy(&body), expected);
    meshd.wait_for_log(&["old version drained and retired", "app=app", "why=replaced"]);
}

#[tokio::test]
async fn broken_new_versions_never_replace_a_working_one() {
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms", "--health-timeout", "3s"])
        .start();
    let client = Client::http1();
    let url = meshd.url("/app/");

    let whole = std::fs::read(guest("stream-v2")).unwrap();
    let bad_versions: [(&str, Vec<u8>, &str); 3] = [
        (
            "garbage",
            b"garbage, not wasm".to_vec(),
            "not a WebAssembly file",
        ),
        (
            "truncated",
            whole[..whole.len() / 2].to_vec(),
            "invalid component",
        ),
        ("empty", Vec::new(), "the file is empty"),
    ];
    for (n, (what, bytes, cause)) in bad_versions.into_iter().enumerate() {
        apps.write_atomically("app.wasm", &bytes);
        let line = meshd.wait_for_log_count(&["new version refused", "app=app"], n + 1);
        assert!(line.contains(cause), "{what}: {line}");
        assert!(line.contains("app.wasm"), "{what}: {line}");
        assert!(line.contains("keeps serving"), "{what}: {line}");
        assert_eq!(client.get(&url).await.text(), "stream", "{what}");
    }

    // A new version that fails its health check is refused too.
    apps.write("app.toml", "health = \"/status?code=503\"\n");
    apps.deploy("app", "stream-v2");
    let line = meshd.wait_for_log_count(&["new version refused", "app=app"], 4);
    assert!(
        line.contains("health check GET /status?code=503 failed"),
        "{line}"
    );
    assert!(line.contains("503"), "{line}");
    assert_eq!(client.get(&url).await.text(), "stream");

    // Fixing the files loads the fix.
    apps.write("app.toml", "health = \"/status?code=204\"\n");
    wait_for_body(&client, &url, "stream-v2").await;
    meshd.wait_for_log(&["health check passed", "app=app"]);
}

#[tokio::test]
async fn apps_can_be_added_removed_renamed_and_moved_while_serving() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms"])
        .start();
    let client = Client::http1();

    // Add.
    apps.deploy("echo", "echo");
    wait_for_status(&client, &meshd.url("/echo"), 200).await;

    // Move: the route changes in one step.
    apps.write("echo.toml", "route = \"/api\"\n");
    wait_for_status(&client, &meshd.url("/api"), 200).await;
    assert_eq!(client.get(&meshd.url("/echo")).await.status, 404);
    assert_eq!(client.get(&meshd.url("/api/x")).await.json()["path"], "/x");
    meshd.wait_for_log(&["app moved", "from=/echo", "to=/api"]);

    // Rename: the app is served under its new name.
    std::fs::rename(
        apps.path().join("hello.wasm"),
        apps.path().join("greeter.wasm"),
    )
    .unwrap();
    wait_for_status(&client, &meshd.url("/greeter"), 200).await;
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 404);

    // Remove, with a request in flight: it completes, then the app is gone.
    apps.deploy("slow", "stream");
    wait_for_status(&client, &meshd.url("/slow"), 200).await;
    let in_flight = client
        .send(request(
            "GET",
            &meshd.url("/slow/drip?chunks=4&ms=250"),
            empty(),
        ))
        .await
        .unwrap();
    apps.remove("slow.wasm");
    wait_for_status(&client, &meshd.url("/slow"), 404).await;
    let body = http_body_util::BodyExt::collect(in_flight.into_body())
        .await
        .expect("the in-flight body completes")
        .to_bytes();
    assert_eq!(String::from_utf8_lossy(&body).lines().count(), 4);
    meshd.wait_for_log(&["old version drained and retired", "app=slow", "why=removed"]);

    // The others never stopped serving.
    assert_eq!(client.get(&meshd.url("/api")).await.status, 200);
}

#[tokio::test]
async fn drain_timeout_cancels_what_is_left_and_counts_it() {
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms", "--drain-timeout", "1s"])
        .start();
    let stuck = spawn_get(meshd.url("/app/slow?ms=60000"));
    meshd
        .wait_for_log_async(&["app=app", "slow request started"])
        .await;
    apps.deploy("app", "stream-v2");
    let line = meshd.wait_for_log(&["drain timeout reached", "app=app"]);
    assert!(line.contains("cancelled=1"), "{line}");
    let reply = stuck.await.unwrap().expect("the client gets an answer");
    assert_eq!(reply.status, 503);
    assert_eq!(
        Client::http1().get(&meshd.url("/app/")).await.text(),
        "stream-v2"
    );
}

#[tokio::test]
async fn file_written_slowly_onto_the_live_name_is_loaded_only_when_complete() {
    use std::io::Write as _;
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "100ms"])
        .start();
    let client = Client::http1();
    let url = meshd.url("/app/");

    let bytes = std::fs::read(guest("stream-v2")).unwrap();
    let mut file = std::fs::File::create(apps.path().join("app.wasm")).unwrap();
    for chunk in bytes.chunks(bytes.len() / 20 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        // Pauses longer than the settle time: only the open file handle says
        // the write is not finished.
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(client.get(&url).await.text(), "stream");
    }
    drop(file);

    wait_for_body(&client, &url, "stream-v2").await;
    // The route switches before the deploy is logged (and the log is read
    // from meshd's stderr on a thread of its own): wait for the line.
    meshd.wait_for_log_async(&["app updated", "app=app"]).await;
    assert_eq!(meshd.count_log(&["new version refused"]), 0);
    assert_eq!(meshd.count_log(&["app updated", "app=app"]), 1);
}

#[tokio::test]
async fn a_burst_of_writes_is_loaded_once_with_the_last_content() {
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "300ms"])
        .start();
    for guest_name in ["stream-v2", "stream", "stream-v2", "stream", "stream-v2"] {
        apps.deploy("app", guest_name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_body(&Client::http1(), &meshd.url("/app/"), "stream-v2").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(meshd.count_log(&["app updated", "app=app"]), 1);
}

#[tokio::test]
async fn sighup_rescans_the_directory() {
    let apps = AppsDir::with(&["hello"]);
    let meshd = Meshd::builder(apps.path()).args(&["--no-watch"]).start();
    let client = Client::http1();
    apps.deploy("echo", "echo");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        client.get(&meshd.url("/echo")).await.status,
        404,
        "not watched"
    );
    meshd.signal("HUP");
    wait_for_status(&client, &meshd.url("/echo"), 200).await;
    meshd.wait_for_log(&["rescan requested"]);
}

#[tokio::test]
async fn a_deploy_while_every_instance_slot_is_busy_waits_for_one() {
    let apps = AppsDir::new();
    apps.deploy("warm", "hostile");
    apps.write("warm.toml", "reuse = 10\n");
    apps.deploy("busy", "stream");
    let meshd = Meshd::builder(apps.path())
        .args(&["--max-instances", "1"])
        .start();
    let client = Client::http1();
    // The pool holds two instances per slot: one is now parked for reuse...
    assert_eq!(client.get(&meshd.url("/warm/seen")).await.text(), "1");
    // ...and the one instance slot is held by a slow request.
    let slow = spawn_get(meshd.url("/busy/slow?ms=1500"));
    meshd
        .wait_for_log_async(&["app=busy", "slow request started"])
        .await;
    // A new app with a health check arrives while the pool is full: its
    // checks wait for the slot instead of failing a healthy version.
    apps.write("late.toml", "health = \"/\"\n");
    apps.deploy("late", "hello");
    assert_eq!(slow.await.unwrap().unwrap().status, 200);
    wait_for_status(&client, &meshd.url("/late/"), 200).await;
    assert_eq!(meshd.count_log(&["app=late", "app not loaded"]), 0);
}

#[tokio::test]
async fn max_concurrency_holds_across_a_swap() {
    let apps = AppsDir::new();
    apps.deploy("app", "stream");
    apps.write("app.toml", "[limits]\nmax_concurrency = 1\n");
    let meshd = Meshd::builder(apps.path())
        .args(&["--settle", "50ms"])
        .start();
    let client = Client::http1();
    // The app's one request slot, held by the old version.
    let slow = spawn_get(meshd.url("/app/slow?ms=2000"));
    meshd
        .wait_for_log_async(&["app=app", "slow request started"])
        .await;
    apps.deploy("app", "stream-v2");
    meshd.wait_for_log(&["app updated", "app=app"]);
    // The new version serves now, but the old one's request still counts.
    let reply = client.get(&meshd.url("/app/")).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("max_concurrency"), "{}", reply.text());
    assert_eq!(
        slow.await.unwrap().unwrap().text(),
        "stream slept 2000 ms\n"
    );
    wait_for_body(&client, &meshd.url("/app/"), "stream-v2").await;
}
