//! Lazy start and idle unload (issue #17): with a warm compile cache, apps
//! that passed their check before start unloaded and load on first use;
//! with `--idle-unload`, code unused for that long is dropped and loaded
//! back by the next request, which never fails for it.

use crate::support::{cache_entries, guest, metric_sample as sample, AppsDir, Client, Meshd};
use std::path::Path;
use std::time::{Duration, Instant};

const HELLO: &str = "Hello from Steelmesh!\n";

/// The metrics text of `meshd`.
async fn metrics(meshd: &Meshd) -> String {
    Client::http1().get(&meshd.metrics_url()).await.text()
}

/// Loaded versions, loads and unloads so far.
async fn code_counts(meshd: &Meshd) -> (f64, f64, f64) {
    let text = metrics(meshd).await;
    (
        sample(&text, "meshd_code_loaded_versions", &[]),
        sample(&text, "meshd_code_loads_total", &[]),
        sample(&text, "meshd_code_unloads_total", &[]),
    )
}

/// Waits (at most 20 s) until `unloads` unloads have happened and no
/// version is loaded.
async fn wait_for_unloads(meshd: &Meshd, unloads: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (loaded, _, done) = code_counts(meshd).await;
        if done >= unloads && loaded == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "still {loaded} versions loaded and {done} unloads, waiting for {unloads}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start(apps: &AppsDir, cache: &Path, extra: &[&str]) -> Meshd {
    let mut args = vec!["--metrics-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Meshd::builder(apps.path())
        .cache_dir(cache)
        .args(&args)
        .start()
}

#[tokio::test]
async fn idle_code_is_unloaded_and_one_reload_serves_many_first_requests_without_failures() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    let meshd = start(&apps, cache.path(), &["--idle-unload", "300ms"]);
    let url = meshd.url("/hello");
    let client = Client::http1();
    assert_eq!(client.get(&url).await.text(), HELLO);

    // A client that keeps asking at gaps around the idle period, so that
    // some requests land just before, at and just after an unload.
    let racer = {
        let url = url.clone();
        tokio::spawn(async move {
            let client = Client::http1_no_retries();
            let mut statuses = Vec::new();
            for gap in [250u64, 290, 300, 310, 350, 280, 320, 400, 305, 295] {
                tokio::time::sleep(Duration::from_millis(gap)).await;
                statuses.push(client.get(&url).await.status);
            }
            statuses
        })
    };
    let statuses = racer.await.unwrap();
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");

    // Three rounds: wait for the unload, then 32 requests at once. Each
    // round reloads the code once, whatever the number of first requests.
    for round in 1..=3 {
        let (_, _, unloads_before) = code_counts(&meshd).await;
        wait_for_unloads(&meshd, unloads_before + 1.0).await;
        let (_, loads_before, _) = code_counts(&meshd).await;
        let requests: Vec<_> = (0..32)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Client::http1_no_retries().get(&url).await })
            })
            .collect();
        for request in requests {
            let reply = request.await.unwrap();
            assert_eq!(reply.status, 200, "round {round}: {}", reply.text());
            assert_eq!(reply.text(), HELLO);
        }
        let (loaded, loads, _) = code_counts(&meshd).await;
        assert_eq!(loaded, 1.0, "round {round}");
        assert_eq!(loads, loads_before + 1.0, "round {round}: one reload");
    }
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=hit",
    ]);
}

#[tokio::test]
async fn a_reload_without_its_cache_entry_compiles_the_kept_bytes_and_a_failed_reload_answers_503_then_retries(
) {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let meshd = Meshd::builder(apps.path())
        .cache_dir(cache.path())
        .data_dir(data.path())
        .args(&[
            "--metrics-listen",
            "127.0.0.1:0",
            "--idle-unload",
            "200ms",
            "--no-watch",
        ])
        .start();
    let url = meshd.url("/hello");
    let client = Client::http1();
    assert_eq!(client.get(&url).await.text(), HELLO);

    // The cache entry is gone: the reload compiles the version's bytes.
    wait_for_unloads(&meshd, 1.0).await;
    for entry in cache_entries(cache.path()) {
        std::fs::remove_file(entry).unwrap();
    }
    assert_eq!(client.get(&url).await.text(), HELLO);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=miss",
    ]);

    // Now the entry is gone, the kept copy too, and hello.wasm holds other
    // code (meshd does not watch the directory): the reload fails with 503
    // and an error naming the app, and the next request tries again.
    wait_for_unloads(&meshd, 2.0).await;
    for entry in cache_entries(cache.path()) {
        std::fs::remove_file(entry).unwrap();
    }
    let artifacts = data.path().join("artifacts");
    if artifacts.exists() {
        std::fs::remove_dir_all(&artifacts).unwrap();
    }
    let hello = std::fs::read(guest("hello")).unwrap();
    apps.write("hello.wasm", std::fs::read(guest("echo")).unwrap());
    let reply = client.get(&url).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(reply.text().contains("app hello"), "{}", reply.text());
    let line = meshd.wait_for_log(&["cannot load the app's code", "app=hello"]);
    assert!(line.contains("not the one deployed"), "{line}");

    apps.write("hello.wasm", &hello);
    assert_eq!(client.get(&url).await.text(), HELLO);
    assert_eq!(code_counts(&meshd).await.0, 1.0);
}

#[tokio::test]
async fn with_a_warm_cache_checked_apps_start_unloaded_and_load_on_first_use() {
    let apps = AppsDir::with(&["hello", "echo"]);
    // echo has a health check: it is loaded and checked at every start.
    apps.write("echo.toml", "health = \"/\"\n");
    let cache = tempfile::tempdir().unwrap();
    // A cold start compiles and checks both (and notes hello's check).
    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=miss"]);
    assert_eq!(code_counts(&meshd).await.0, 2.0);
    drop(meshd);

    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    meshd.wait_for_log(&["app deployed", "app=echo", "cache=hit"]);
    assert_eq!(code_counts(&meshd).await, (1.0, 0.0, 0.0));

    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=hit",
    ]);
    assert_eq!(code_counts(&meshd).await, (2.0, 1.0, 0.0));
    let reply = client.post(&meshd.url("/echo/x"), "hi").await;
    assert_eq!(reply.json()["body_length"], 2);
}

#[tokio::test]
async fn a_corrupt_cache_entry_of_an_unloaded_app_is_recompiled_on_first_use() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    drop(start(&apps, cache.path(), &[]));
    let entry = cache_entries(cache.path()).pop().unwrap();
    let good = std::fs::read(&entry).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&entry, &flipped).unwrap();

    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    meshd.wait_for_log(&["discarded an unusable cache entry", "app=hello"]);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=replaced",
    ]);
    // The entry was rewritten and is trusted again.
    assert_eq!(std::fs::read(&entry).unwrap(), good);
}

/// Cache entries left by a meshd from before 2026-11-30, named by the
/// BLAKE3 of the `.wasm`, are renamed to the SHA-256 name (the version id's)
/// on the first start after the upgrade, not compiled again: with their
/// checked marker the app still starts unloaded; without it, it is loaded
/// from the renamed entry and checked.
#[tokio::test]
async fn cache_entries_of_the_old_name_are_renamed_not_compiled_again() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=miss"]);
    drop(meshd);
    let sha256 = crate::support::admin::sha256_file(&guest("hello"));
    let entry = cache_entries(cache.path()).pop().unwrap();
    let entry_name = entry.file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        entry_name.starts_with(&sha256),
        "entries are named by the SHA-256 of the .wasm: {entry_name}"
    );
    let old = blake3::hash(&std::fs::read(guest("hello")).unwrap())
        .to_hex()
        .to_string();
    // Gives the entry, its checksum and (with `marker`) its checked marker
    // the old name, as the old meshd left them.
    let make_old = |marker: bool| {
        for file in std::fs::read_dir(cache.path()).unwrap() {
            let name = file.unwrap().file_name().into_string().unwrap();
            let Some(rest) = name.strip_prefix(&sha256) else {
                continue;
            };
            // Lock files are not part of an entry; markers only if asked.
            let keep = !rest.ends_with(".lock") && (marker || !rest.contains(".checked-"));
            let target = keep.then(|| cache.path().join(format!("{old}{rest}")));
            match target {
                Some(target) => std::fs::rename(cache.path().join(&name), target).unwrap(),
                None => std::fs::remove_file(cache.path().join(&name)).unwrap(),
            }
        }
        assert!(
            !entry.exists()
                && cache
                    .path()
                    .join(entry_name.replace(&sha256, &old))
                    .exists()
        );
    };
    let client = Client::http1();

    make_old(true);
    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=hello",
        "cache=hit",
    ]);
    assert!(entry.exists(), "renamed to the SHA-256 name");
    drop(meshd);

    make_old(false);
    let meshd = start(&apps, cache.path(), &[]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=hit"]);
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    assert!(entry.exists(), "renamed to the SHA-256 name");
    assert!(
        !meshd.log().iter().any(|line| line.contains("cache=miss")),
        "compiled again"
    );
}

/// The apps directory's index in the data directory: a restart reads only
/// the `.wasm` files whose stamps changed, and an app known by its stamp
/// still starts unloaded and serves. A file rewritten in place with the
/// same size and its old modified time is read again (its changed time
/// moved), never taken for the code it held.
#[tokio::test]
async fn a_restart_reads_only_the_files_that_changed() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let (cache, data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let start_in = |apps_dir: &Path| {
        Meshd::builder(apps_dir)
            .cache_dir(cache.path())
            .data_dir(data.path())
            .start()
    };
    let start = || start_in(apps.path());
    // The index keeps only files left alone for 2 s before they were read.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let meshd = start();
    meshd.wait_for_log(&["apps directory:", "unread=0", "read=2"]);
    let index = data.path().join("apps-dir-index.json");
    wait_until(|| std::fs::read_to_string(&index).is_ok_and(|t| t.matches("sha256").count() == 2));
    drop(meshd);

    // The same directory by another path (a symbolic link): the index
    // names files by name, and their inodes pin them.
    let link = tempfile::tempdir().unwrap();
    let linked_apps = link.path().join("apps");
    std::os::unix::fs::symlink(apps.path(), &linked_apps).unwrap();
    let meshd = start_in(&linked_apps);
    meshd.wait_for_log(&["apps directory:", "unread=2", "read=0"]);
    meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
    let reply = client.post(&meshd.url("/echo/x"), "hi").await;
    assert_eq!(reply.json()["body_length"], 2);
    drop(meshd);

    // hello.wasm overwritten in place by as many other bytes, its modified
    // time set back: size, inode and mtime are the indexed ones.
    let path = apps.path().join("hello.wasm");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.reverse();
    std::fs::write(&path, &bytes).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);

    let meshd = start();
    meshd.wait_for_log(&["apps directory:", "unread=1", "read=1"]);
    meshd.wait_for_log(&["app=hello", "not a WebAssembly file"]);
    assert_eq!(client.get(&meshd.url("/hello")).await.status, 404);
    let reply = client.post(&meshd.url("/echo/x"), "hi").await;
    assert_eq!(reply.json()["body_length"], 2);
}

#[tokio::test]
async fn max_loaded_keeps_the_most_recently_used_code_and_reloads_the_rest_on_use() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let cache = tempfile::tempdir().unwrap();
    let meshd = start(&apps, cache.path(), &["--max-loaded", "1"]);
    // Both were compiled and loaded at start: one is unloaded at once.
    wait_for_loaded(&meshd, 1.0).await;
    let client = Client::http1();
    for round in 1..=3 {
        let (_, loads_before, unloads_before) = code_counts(&meshd).await;
        assert_eq!(client.get(&meshd.url("/hello")).await.text(), HELLO);
        let reply = client.post(&meshd.url("/echo/x"), "hi").await;
        assert_eq!(reply.json()["body_length"], 2, "round {round}");
        wait_for_loaded(&meshd, 1.0).await;
        let (_, loads, unloads) = code_counts(&meshd).await;
        // hello was the one unloaded before the round, or was unloaded for
        // echo in it: each round loads at least once and unloads as often.
        assert!(loads > loads_before, "round {round}: no reload");
        assert!(unloads > unloads_before, "round {round}: nothing unloaded");
    }
    // The most recently used (echo) is the one kept.
    let (_, loads_before, _) = code_counts(&meshd).await;
    let reply = client.post(&meshd.url("/echo/x"), "hi").await;
    assert_eq!(reply.json()["body_length"], 2);
    let (loaded, loads, _) = code_counts(&meshd).await;
    assert_eq!((loaded, loads), (1.0, loads_before));
}

/// Waits (at most 10 s) until exactly `loaded` versions have their code
/// loaded.
async fn wait_for_loaded(meshd: &Meshd, loaded: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, _, _) = code_counts(meshd).await;
        if now == loaded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} versions loaded, waiting for {loaded}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `done` every 20 ms for at most 10 s.
fn wait_until(done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "condition not met within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
