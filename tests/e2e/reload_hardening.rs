//! Hardening of the reload path (issue #12, items 2, 7, 9, 10 and 11): who
//! keeps a contested route or directory, one app's busy writer, durations
//! that overflow, the compile cache's verified bytes, and the compile-time
//! limit.

use crate::support::{cache_entries, guest, AppsDir, Client, Meshd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HELLO: &str = "Hello from Steelmesh!\n";

/// `guest`'s component with a custom section appended: different bytes (a
/// new version), same behaviour.
fn variant_of(guest_name: &str, tag: u8) -> Vec<u8> {
    let mut bytes = std::fs::read(guest(guest_name)).unwrap();
    // Custom section (id 0): size, then a name of 1 byte, then 1 byte.
    bytes.extend_from_slice(&[0, 3, 1, b'v', tag]);
    bytes
}

#[tokio::test]
async fn a_route_holder_keeps_its_route_across_its_own_redeploys() {
    let apps = AppsDir::new();
    apps.deploy("shop", "hello");
    let meshd = Meshd::start(apps.path());
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);

    // A newcomer that sorts first asks for shop's route: refused.
    apps.write("aaa.toml", "route = \"/shop\"\n");
    apps.deploy("aaa", "echo");
    let refusal = ["route /shop asked for by app aaa", "held by app shop"];
    let line = meshd.wait_for_log(&refusal);
    assert!(
        line.contains("aaa.toml") && line.contains("shop.wasm"),
        "{line}"
    );
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);

    // shop redeploys, by its manifest and then by its code: each time shop
    // keeps /shop and aaa is refused again.
    apps.write("shop.toml", "[env]\nSTAGE = \"2\"\n");
    meshd.wait_for_log_count(&["app updated", "app=shop"], 1);
    meshd.wait_for_log_count(&refusal, 2);
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);

    apps.write_atomically("shop.wasm", &variant_of("hello", 1));
    meshd.wait_for_log_count(&["app updated", "app=shop"], 2);
    meshd.wait_for_log_count(&refusal, 3);
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);
    assert_eq!(client.get(&meshd.url("/aaa")).await.status, 404);
    assert_eq!(meshd.count_log(&["app deployed", "app=aaa"]), 0);

    // Once shop lets go of the route (it is removed), the route is free.
    apps.remove("shop.wasm");
    meshd.wait_for_log(&["app deployed", "app=aaa"]);
    let reply = client.get(&meshd.url("/shop")).await;
    assert_eq!(reply.json()["x_forwarded_prefix"], "/shop");
}

#[tokio::test]
async fn a_directory_holder_keeps_its_writable_directory_across_its_own_redeploys() {
    let apps = AppsDir::new();
    std::fs::create_dir(apps.path().join("shop-data")).unwrap();
    apps.write(
        "shop.toml",
        "[files]\ndir = \"shop-data\"\nwritable = true\n",
    );
    apps.deploy("shop", "hostile");
    let meshd = Meshd::start(apps.path());
    meshd.wait_for_log(&["app deployed", "app=shop"]);

    apps.write(
        "aaa.toml",
        "[files]\ndir = \"shop-data\"\nwritable = true\n",
    );
    apps.deploy("aaa", "hostile");
    let refusal = ["[files] dir of app aaa", "held by app shop"];
    meshd.wait_for_log(&refusal);

    let client = Client::http1();
    apps.write(
        "shop.toml",
        "[files]\ndir = \"shop-data\"\nwritable = true\n[env]\nSTAGE = \"2\"\n",
    );
    meshd.wait_for_log_count(&["app updated", "app=shop"], 1);
    meshd.wait_for_log_count(&refusal, 2);
    apps.write_atomically("shop.wasm", &variant_of("hostile", 1));
    meshd.wait_for_log_count(&["app updated", "app=shop"], 2);
    meshd.wait_for_log_count(&refusal, 3);

    assert_eq!(client.get(&meshd.url("/shop/ok")).await.status, 200);
    assert_eq!(client.get(&meshd.url("/aaa/ok")).await.status, 404);
    assert_eq!(meshd.count_log(&["app deployed", "app=aaa"]), 0);
}

/// Rewrites `path` every 50 ms (faster than the default 250 ms settle time)
/// until dropped, for at most two minutes.
struct BusyWriter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BusyWriter {
    fn start(path: PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(120) {
                n += 1;
                std::fs::write(&path, format!("# rewrite {n}\n")).unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        BusyWriter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BusyWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test]
async fn a_file_rewritten_continuously_does_not_hold_back_another_apps_deploy() {
    let apps = AppsDir::new();
    apps.deploy("busy", "hello");
    let meshd = Meshd::start(apps.path());
    let writer = BusyWriter::start(apps.path().join("busy.toml"));

    apps.deploy("other", "hello");
    // Before per-app readiness, no pass ran while busy.toml kept changing
    // (the writer outlives this wait).
    meshd.wait_for_log(&["app deployed", "app=other"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/other")).await.text(), HELLO);

    // A removal goes through too.
    apps.remove("other.wasm");
    meshd.wait_for_log(&["app removed", "app=other"]);
    drop(writer);
    assert_eq!(client.get(&meshd.url("/busy")).await.text(), HELLO);
}

#[tokio::test]
async fn a_timeout_beyond_a_day_is_a_manifest_error_and_the_others_keep_serving() {
    let apps = AppsDir::with(&["hello"]);
    apps.deploy("forever", "hello");
    apps.write("forever.toml", "[limits]\ntimeout = \"300000000000y\"\n");
    let meshd = Meshd::start(apps.path());

    let line = meshd.wait_for_log(&["app not loaded", "forever.toml"]);
    assert!(line.contains("longer than the maximum of 1day"), "{line}");
    assert!(line.contains("timeout"), "{line}");
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/forever")).await.status, 404);
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);

    // The same on a live app: its working version keeps serving.
    apps.write("hello.toml", "[limits]\ntimeout = \"300000000000y\"\n");
    let line = meshd.wait_for_log(&["new version refused", "hello.toml"]);
    assert!(line.contains("longer than the maximum"), "{line}");
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    assert_eq!(meshd.count_log(&["panicked"]), 0);
}

#[test]
fn a_duration_flag_beyond_a_day_is_a_usage_error() {
    let apps = AppsDir::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--apps")
        .arg(apps.path())
        .args(["--listen", "127.0.0.1:0", "--no-watch"])
        .args(["--request-timeout", "300000000000y"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("meshd runs");
    // A meshd that accepted the flag would serve until killed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("meshd accepted --request-timeout 300000000000y and kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("longer than the maximum of 1day"),
        "{stderr}"
    );
}

#[tokio::test]
async fn rewriting_or_truncating_cache_entries_while_serving_changes_nothing() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let cache = tempfile::tempdir().unwrap();
    // Once to fill the cache, once to load both apps from it (on their
    // first requests: they passed their checks on the first start).
    drop(Meshd::builder(apps.path()).cache_dir(cache.path()).start());
    let meshd = Meshd::builder(apps.path()).cache_dir(cache.path()).start();
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    assert_eq!(client.post(&meshd.url("/echo/x"), "hi").await.status, 200);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=hit",
    ]);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=echo",
        "cache=hit",
    ]);

    // Truncate one entry and overwrite the other in place (same inode).
    let entries = cache_entries(cache.path());
    assert_eq!(entries.len(), 2);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&entries[0])
        .unwrap()
        .set_len(0)
        .unwrap();
    let len = std::fs::metadata(&entries[1]).unwrap().len();
    std::fs::write(&entries[1], vec![0xcc; len as usize]).unwrap();

    // A mapped entry would now crash meshd (SIGBUS) or run the new bytes.
    for _ in 0..20 {
        assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
        let reply = client.post(&meshd.url("/echo/x"), "hi").await;
        assert_eq!(reply.json()["body_length"], 2);
    }
    drop(meshd);

    // The next start finds both entries unusable when it loads them (on
    // their first requests), recompiles and serves.
    let meshd = Meshd::builder(apps.path()).cache_dir(cache.path()).start();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    let reply = client.post(&meshd.url("/echo/x"), "hi").await;
    assert_eq!(reply.json()["body_length"], 2);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=replaced",
    ]);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=echo",
        "cache=replaced",
    ]);
}

#[tokio::test]
async fn a_compile_over_the_time_limit_is_refused_naming_the_app_and_cached_apps_serve() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    drop(Meshd::builder(apps.path()).cache_dir(cache.path()).start());

    // `fresh` is not in the cache: it must compile, which takes far longer
    // than a millisecond. `hello` is loaded from the cache.
    apps.deploy("fresh", "echo");
    let meshd = Meshd::builder(apps.path())
        .cache_dir(cache.path())
        .args(&["--max-compile-time", "1ms"])
        .start();
    let line = meshd.wait_for_log(&["app not loaded", "app=fresh"]);
    assert!(line.contains("fresh.wasm"), "{line}");
    assert!(line.contains("--max-compile-time (1ms)"), "{line}");
    // hello passed its check on the first start: it starts unloaded.
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=hit",
    ]);
    assert_eq!(client.get(&meshd.url("/fresh")).await.status, 404);
}

#[tokio::test]
async fn route_and_directory_holdings_survive_a_restart() {
    let apps = AppsDir::new();
    let data = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(apps.path().join("shop-data")).unwrap();
    apps.write("shop.toml", "[files]\ndir = \"shop-data\"\n");
    apps.deploy("shop", "hello");
    let meshd = Meshd::builder(apps.path()).data_dir(data.path()).start();
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);
    drop(meshd);

    // While meshd is down, a tenant plants an app that sorts first by name
    // and asks for shop's route; another asks for shop's directory.
    apps.write("aaa.toml", "route = \"/shop\"\n");
    apps.deploy("aaa", "echo");
    apps.write("aab.toml", "[files]\ndir = \"shop-data\"\n");
    apps.deploy("aab", "echo");

    let meshd = Meshd::builder(apps.path()).data_dir(data.path()).start();
    meshd.wait_for_log(&["route /shop asked for by app aaa", "held by app shop"]);
    meshd.wait_for_log(&["[files] dir of app aab", "held by app shop"]);
    assert_eq!(client.get(&meshd.url("/shop")).await.text(), HELLO);
    assert_eq!(client.get(&meshd.url("/aab")).await.status, 404);
    assert_eq!(meshd.count_log(&["app deployed", "app=aaa"]), 0);
}
