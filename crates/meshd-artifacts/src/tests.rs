use super::*;
use std::time::{Duration, UNIX_EPOCH};

fn store(keep: usize) -> (tempfile::TempDir, ArtifactStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path(), keep)
        .unwrap()
        .with_garbage_grace(Duration::ZERO);
    (dir, store)
}

fn version(store: &ArtifactStore, wasm: &[u8], manifest: Option<&str>) -> StoredVersion {
    StoredVersion {
        wasm: store.put(wasm).unwrap(),
        manifest: manifest.map(|m| store.put(m.as_bytes()).unwrap()),
        deployed_at: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        origin: "api".into(),
    }
}

#[test]
fn digests_print_and_parse_as_hex() {
    let digest = Digest::of(b"abc");
    let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    assert_eq!(digest.to_string(), hex);
    assert_eq!(digest.short(), &hex[..12]);
    assert_eq!(hex.parse::<Digest>().unwrap(), digest);
    assert_eq!(format!("sha256:{hex}").parse::<Digest>().unwrap(), digest);
    assert!("abc".parse::<Digest>().is_err());
    assert!(hex.replace('b', "g").parse::<Digest>().is_err());
}

#[test]
fn stored_bytes_come_back_by_digest() {
    let (_dir, store) = store(5);
    let digest = store.put(b"wasm bytes").unwrap();
    assert_eq!(digest, Digest::of(b"wasm bytes"));
    assert_eq!(store.get(&digest).unwrap(), b"wasm bytes");
    // Storing the same bytes again is a no-op with the same name.
    assert_eq!(store.put(b"wasm bytes").unwrap(), digest);
    assert!(matches!(
        store.get(&Digest::of(b"other")),
        Err(StoreError::Missing(_))
    ));
}

#[test]
fn a_reader_over_the_limit_or_with_the_wrong_digest_stores_nothing() {
    let (dir, store) = store(5);
    let err = store.put_reader(&[0u8; 100][..], 99, None).unwrap_err();
    assert!(matches!(err, StoreError::TooLarge { limit: 99 }), "{err}");
    let wrong = Digest::of(b"something else");
    let err = store
        .put_reader(&b"payload"[..], 1000, Some(&wrong))
        .unwrap_err();
    assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
    assert!(!store.contains(&Digest::of(b"payload")));
    let leftovers = fs::read_dir(dir.path().join("tmp")).unwrap().count();
    assert_eq!(leftovers, 0, "no temporary file is left behind");
    // Exactly at the limit is fine.
    let digest = store
        .put_reader(&b"payload"[..], 7, Some(&Digest::of(b"payload")))
        .unwrap();
    assert_eq!(store.get(&digest).unwrap(), b"payload");
}

#[test]
fn a_blob_changed_on_disk_is_reported_corrupt() {
    let (dir, store) = store(5);
    let digest = store.put(b"original").unwrap();
    fs::write(
        dir.path().join("blobs/sha256").join(digest.to_hex()),
        b"tampered",
    )
    .unwrap();
    assert!(matches!(
        store.get(&digest),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn versions_are_kept_newest_last_up_to_the_keep_count() {
    let (_dir, store) = store(3);
    let mut versions = Vec::new();
    for i in 0..5 {
        let v = version(&store, format!("v{i}").as_bytes(), None);
        store.record("shop", v.clone()).unwrap();
        versions.push(v);
    }
    let kept = store.versions("shop").unwrap();
    assert_eq!(kept, versions[2..].to_vec());
    // The forgotten versions' blobs are gone; the kept ones are there.
    assert!(!store.contains(&versions[0].wasm));
    assert!(!store.contains(&versions[1].wasm));
    assert!(store.contains(&versions[4].wasm));
}

#[test]
fn redeploying_a_kept_version_moves_it_to_the_end() {
    let (_dir, store) = store(5);
    let a = version(&store, b"a", Some("route = \"/a\""));
    let b = version(&store, b"b", None);
    store.record("app", a.clone()).unwrap();
    store.record("app", b.clone()).unwrap();
    let kept = store.record("app", a.clone()).unwrap();
    assert_eq!(kept, vec![b, a]);
}

#[test]
fn the_same_wasm_with_another_manifest_is_another_version() {
    let (_dir, store) = store(5);
    let a = version(&store, b"code", Some("route = \"/a\""));
    let b = version(&store, b"code", Some("route = \"/b\""));
    store.record("app", a.clone()).unwrap();
    assert_eq!(store.record("app", b.clone()).unwrap(), vec![a, b]);
}

#[test]
fn blobs_shared_by_two_apps_survive_one_forgetting_them() {
    let (_dir, store) = store(1);
    let shared = version(&store, b"shared code", None);
    store.record("one", shared.clone()).unwrap();
    store.record("two", shared.clone()).unwrap();
    store.forget("one").unwrap();
    assert!(store.contains(&shared.wasm));
    assert_eq!(store.apps().unwrap(), vec!["two".to_string()]);
    store.forget("two").unwrap();
    assert!(!store.contains(&shared.wasm));
    // Forgetting an unknown app is not an error.
    store.forget("never-deployed").unwrap();
}

#[test]
fn fresh_unrecorded_blobs_survive_garbage_collection() {
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path(), 1).unwrap();
    // Stored for a deploy still being checked: no version list names it yet.
    let pending = store.put(b"being compiled").unwrap();
    let a = version(&store, b"a", None);
    let b = version(&store, b"b", None);
    store.record("other", a).unwrap();
    store.record("other", b).unwrap(); // forgets a: a collection runs
    assert!(store.contains(&pending));
}

#[test]
fn recording_needs_the_blobs_first() {
    let (_dir, store) = store(5);
    let missing = StoredVersion {
        wasm: Digest::of(b"not stored"),
        manifest: None,
        deployed_at: SystemTime::now(),
        origin: "dir".into(),
    };
    assert!(matches!(
        store.record("app", missing),
        Err(StoreError::Missing(_))
    ));
}

#[test]
fn names_that_are_not_app_names_are_refused() {
    let (_dir, store) = store(5);
    for name in ["", "../etc", "a/b", ".hidden", "a b"] {
        assert!(
            matches!(store.versions(name), Err(StoreError::BadName(_))),
            "{name:?}"
        );
    }
}

#[test]
fn versions_survive_reopening_and_partial_files_are_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let v = {
        let store = ArtifactStore::open(dir.path(), 5).unwrap();
        let v = version(&store, b"persisted", Some("[env]\nA = \"1\""));
        store.record("app", v.clone()).unwrap();
        v
    };
    fs::write(dir.path().join("tmp/123-0"), b"half a wasm").unwrap();
    let store = ArtifactStore::open(dir.path(), 5).unwrap();
    assert_eq!(store.versions("app").unwrap(), vec![v.clone()]);
    assert_eq!(store.get(&v.wasm).unwrap(), b"persisted");
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn an_unreadable_version_list_is_an_error_naming_the_file() {
    let (dir, store) = store(5);
    fs::write(dir.path().join("apps/app.json"), b"{ not json").unwrap();
    let err = store.versions("app").unwrap_err();
    assert!(err.to_string().contains("app.json"), "{err}");
}
