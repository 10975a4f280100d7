//! The compiled-code cache: reused across restarts; a corrupt entry is
//! detected, recompiled and replaced.

use crate::support::{cache_entries, AppsDir, Client, Meshd};
use std::path::Path;

/// Starts meshd on `cache` and checks that hello's code came from the
/// cache as `outcome` says: at its deploy on a cold cache, or (a warm cache,
/// where hello passed its check before and starts unloaded) on its first
/// request.
async fn start_and_check(apps: &AppsDir, cache: &Path, outcome: &str) -> Meshd {
    let meshd = Meshd::builder(apps.path()).cache_dir(cache).start();
    let cache_outcome = format!("cache={outcome}");
    let first_start = outcome == "miss";
    if first_start {
        meshd.wait_for_log(&["app deployed", "app=hello", &cache_outcome]);
    } else {
        meshd.wait_for_log(&["app deployed", "app=hello", "cache=unloaded"]);
    }
    let reply = Client::http1().get(&meshd.url("/hello")).await;
    assert_eq!(reply.text(), "Hello from Steelmesh!\n");
    if !first_start {
        meshd.wait_for_log(&[
            "loaded the app's code on first use",
            "app=hello",
            &cache_outcome,
        ]);
    }
    meshd
}

#[tokio::test]
async fn restart_reuses_the_compiled_artifact() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    drop(start_and_check(&apps, cache.path(), "miss").await);
    assert_eq!(cache_entries(cache.path()).len(), 1);
    drop(start_and_check(&apps, cache.path(), "hit").await);
}

#[tokio::test]
async fn corrupt_truncated_or_foreign_entries_are_recompiled_and_replaced() {
    let apps = AppsDir::with(&["hello"]);
    let cache = tempfile::tempdir().unwrap();
    drop(start_and_check(&apps, cache.path(), "miss").await);
    let entry = cache_entries(cache.path()).pop().unwrap();
    let good = std::fs::read(&entry).unwrap();

    // A flipped bit in the code, a truncated file, a foreign file.
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let truncated = good[..good.len() / 3].to_vec();
    let foreign = b"not an artifact".to_vec();

    for bad in [flipped, truncated, foreign] {
        std::fs::write(&entry, &bad).unwrap();
        let meshd = start_and_check(&apps, cache.path(), "replaced").await;
        meshd.wait_for_log(&["discarded an unusable cache entry", "app=hello"]);
        drop(meshd);
        // The entry was rewritten and is trusted again.
        assert_eq!(std::fs::read(&entry).unwrap(), good);
        drop(start_and_check(&apps, cache.path(), "hit").await);
    }
}

#[tokio::test]
async fn apps_with_identical_bytes_share_compiled_code() {
    let apps = AppsDir::new();
    apps.deploy("one", "hello");
    apps.deploy("two", "hello");
    let meshd = Meshd::start(apps.path());
    // One of them compiles (or loads from the cache), the other shares it.
    meshd.wait_for_log(&["app deployed", "cache=shared"]);
    assert_eq!(meshd.count_log(&["app deployed", "cache=miss"]), 1);
    let client = Client::http1();
    assert_eq!(client.get(&meshd.url("/one")).await.status, 200);
    assert_eq!(client.get(&meshd.url("/two")).await.status, 200);
}
