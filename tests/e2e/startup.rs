//! Start-up with many apps: the log says how far loading has got and how
//! (from the cache, compiled, shared), ending with every app decided.

use crate::support::{AppsDir, Client, Meshd};

/// The number after `key=` in a text log line.
fn field(line: &str, key: &str) -> u64 {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(&prefix))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[tokio::test]
async fn loading_many_apps_reports_progress_and_how_each_was_loaded() {
    let apps = AppsDir::new();
    for i in 0..23 {
        apps.deploy(&format!("app{i:02}"), "hello");
    }
    apps.write("broken.wasm", b"\0asm but not really");
    let cache = tempfile::tempdir().expect("temp dir");

    let meshd = Meshd::builder(apps.path()).cache_dir(cache.path()).start();
    meshd.wait_for_log(&["loading apps", "total=24"]);
    let done = meshd.wait_for_log(&["24 of 24 apps loaded"]);
    assert_eq!(field(&done, "decided"), 24, "{done}");
    assert_eq!(field(&done, "refused"), 1, "{done}");
    let loaded = field(&done, "cache_hits") + field(&done, "compiled") + field(&done, "shared");
    assert_eq!(loaded, 23, "{done}");
    // Nothing was cached yet: identical bytes compile once (or a few times,
    // when loads start together) and the rest share that code.
    assert_eq!(field(&done, "cache_hits"), 0, "{done}");
    assert!(field(&done, "compiled") >= 1, "{done}");
    assert_eq!(Client::http1().get(&meshd.url("/app07/")).await.status, 200);
    drop(meshd);

    // A second start finds the code in the cache, checked before: every
    // app starts unloaded (lazy start) and loads on its first request.
    let meshd = Meshd::builder(apps.path()).cache_dir(cache.path()).start();
    let done = meshd.wait_for_log(&["24 of 24 apps loaded"]);
    assert_eq!(field(&done, "compiled"), 0, "{done}");
    assert_eq!(field(&done, "unloaded"), 23, "{done}");
    assert_eq!(Client::http1().get(&meshd.url("/app07/")).await.status, 200);
    meshd.wait_for_log(&[
        "loaded the app's code on first use",
        "app=app07",
        "cache=hit",
    ]);
}

#[tokio::test]
async fn a_few_apps_load_without_progress_lines() {
    let apps = AppsDir::with(&["hello", "echo"]);
    let meshd = Meshd::start(apps.path());
    assert_eq!(meshd.count_log(&["apps loaded"]), 0);
    assert_eq!(meshd.count_log(&["loading apps"]), 0);
}
