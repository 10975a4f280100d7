//! The mesh's buckets, artifacts and desired-state changes against real
//! nats-servers: Debian's 2.9.10 (the oldest meshd supports) and a current
//! release, the same scenario on both.

use async_nats::jetstream::object_store::ObjectMetadata;
use meshd_artifacts::{ArtifactStore, Digest};
use meshd_mesh::artifacts::{self, FetchError};
use meshd_mesh::buckets::Buckets;
use meshd_mesh::status::{NodeApp, NodeRefusal, NodeStatus};
use meshd_mesh::{MeshConfig, PublishError, Publisher, WaitOutcome};
use meshd_testkit::NatsServer;
use std::time::Duration;

async fn buckets(server: &NatsServer) -> Buckets {
    let client = async_nats::connect(server.url()).await.unwrap();
    Buckets::open(&async_nats::jetstream::new(client), 1)
        .await
        .unwrap()
}

async fn publisher(server: &NatsServer) -> Publisher {
    Publisher::connect(&MeshConfig::from_list(&server.url(), "test"), "tester")
        .await
        .unwrap()
}

/// Publishing, canary, promote, abort, rollback and removal change the
/// desired state as documented, on an empty mesh to begin with.
async fn desired_state_changes(server: &NatsServer) {
    let mesh = publisher(server).await;
    let view = mesh.view().await.unwrap();
    assert!(view.desired.is_empty() && view.nodes.is_empty());

    let v1 = mesh
        .publish("app", b"one", Some("route = \"/a\"".into()))
        .await
        .unwrap();
    assert_eq!(v1.app.live.wasm, Digest::of(b"one"));
    assert_eq!(v1.app.live.size, 3);
    assert_eq!(v1.app.by, "tester");
    let v2 = mesh.publish("app", b"two", None).await.unwrap();
    assert!(v2.revision > v1.revision);

    let canary = mesh
        .canary("app", b"three", None, 25, Some("x-user".into()))
        .await
        .unwrap();
    let split = canary.app.canary.as_ref().unwrap();
    assert_eq!((split.code.wasm, split.percent), (Digest::of(b"three"), 25));
    assert_eq!(
        canary.app.live.wasm,
        Digest::of(b"two"),
        "a canary leaves the live version"
    );
    let promoted = mesh.promote("app").await.unwrap();
    assert_eq!(promoted.app.live.wasm, Digest::of(b"three"));
    assert!(promoted.app.canary.is_none());
    assert!(matches!(
        mesh.abort("app").await,
        Err(PublishError::BadRequest(_))
    ));
    assert!(matches!(
        mesh.promote("nope").await,
        Err(PublishError::NotFound(_))
    ));
    assert!(matches!(
        mesh.canary("app", b"x", None, 100, None).await,
        Err(PublishError::BadRequest(_))
    ));

    // The one before the live version, then one named by its id.
    let back = mesh.rollback("app", None).await.unwrap();
    assert_eq!(back.app.live.wasm, Digest::of(b"two"));
    assert_eq!(back.app.live.manifest, None);
    let first = Digest::of(b"one").short();
    let back = mesh.rollback("app", Some(&first)).await.unwrap();
    assert_eq!(back.app.live.wasm, Digest::of(b"one"));
    assert_eq!(back.app.live.manifest.as_deref(), Some("route = \"/a\""));
    assert!(matches!(
        mesh.rollback("app", Some("0123456789ab")).await,
        Err(PublishError::BadRequest(_))
    ));

    let view = mesh.view().await.unwrap();
    assert_eq!(view.desired["app"].app.live.wasm, Digest::of(b"one"));
    mesh.remove("app").await.unwrap();
    assert!(mesh.view().await.unwrap().desired.is_empty());
    assert!(matches!(
        mesh.remove("app").await,
        Err(PublishError::NotFound(_))
    ));
    // A removed name can be published again.
    mesh.publish("app", b"four", None).await.unwrap();
}

/// Ten publishers changing one app at once all succeed, one after another
/// (compare-and-swap), and the last value is one of theirs.
async fn concurrent_publishes_all_land(server: &NatsServer) {
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let url = server.url();
        tasks.push(tokio::spawn(async move {
            let mesh = Publisher::connect(&MeshConfig::from_list(&url, "test"), "racer")
                .await
                .unwrap();
            mesh.publish("raced", &[i], None).await.unwrap().revision
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 10, "every publish got its own revision");
}

/// An artifact is fetched into the local store only with its digest; a
/// missing one and a corrupt one are told apart, and nothing is kept.
async fn artifacts_are_verified(server: &NatsServer) {
    let buckets = buckets(server).await;
    let dir = tempfile::tempdir().unwrap();
    let store = ArtifactStore::open(dir.path(), 5).unwrap();
    let digest = artifacts::upload(&buckets.artifacts, b"good bytes")
        .await
        .unwrap();
    let bytes = artifacts::fetch(&buckets.artifacts, &store, &digest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(bytes, b"good bytes");
    assert!(store.contains(&digest));

    let missing = Digest::of(b"never stored");
    assert!(matches!(
        artifacts::fetch(&buckets.artifacts, &store, &missing, 1 << 20).await,
        Err(FetchError::Missing(_))
    ));

    // Other bytes under the name of a digest.
    let claimed = Digest::of(b"what the state names");
    let meta = ObjectMetadata {
        name: claimed.to_hex(),
        ..Default::default()
    };
    buckets
        .artifacts
        .put(meta, &mut &b"something else"[..])
        .await
        .unwrap();
    let error = artifacts::fetch(&buckets.artifacts, &store, &claimed, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(error, FetchError::Corrupt { .. }), "{error}");
    assert!(!store.contains(&claimed));

    let big = artifacts::upload(&buckets.artifacts, &[7u8; 4096])
        .await
        .unwrap();
    assert!(matches!(
        artifacts::fetch(&buckets.artifacts, &store, &big, 1024).await,
        Err(FetchError::TooLarge { .. })
    ));
}

/// `wait` sees nodes' statuses: all live, or one refusing with its reason
/// (a refusal the node retries by itself is waited out).
async fn wait_reads_node_status(server: &NatsServer) {
    let buckets = buckets(server).await;
    let mesh = publisher(server).await;
    let digest = Digest::of(b"waited");
    let status = |node: &str, live: Option<&Digest>, refused: Option<Retry>| NodeStatus {
        node: node.to_owned(),
        synced: true,
        apps: [(
            "w".to_owned(),
            NodeApp {
                live: live.map(Digest::to_hex),
                refused: refused.map(|retry| NodeRefusal {
                    wasm: digest.to_hex(),
                    kind: "over_ceiling".to_owned(),
                    message: "too much memory".to_owned(),
                    at: String::new(),
                    retrying: retry == Retry::Yes,
                }),
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    buckets
        .nodes
        .put("a", status("a", Some(&digest), None).encode())
        .await
        .unwrap();
    buckets
        .nodes
        .put("b", status("b", None, None).encode())
        .await
        .unwrap();
    let outcome = mesh
        .wait("w", &digest, false, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(outcome, WaitOutcome::TimedOut(vec!["b".to_owned()]));
    buckets
        .nodes
        .put("b", status("b", None, Some(Retry::Yes)).encode())
        .await
        .unwrap();
    let outcome = mesh
        .wait("w", &digest, false, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(outcome, WaitOutcome::TimedOut(vec!["b".to_owned()]));
    buckets
        .nodes
        .put("b", status("b", None, Some(Retry::No)).encode())
        .await
        .unwrap();
    let outcome = mesh
        .wait("w", &digest, false, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, WaitOutcome::Refused { node, kind, .. } if node == "b" && kind == "over_ceiling"),
        "{outcome:?}"
    );
    buckets
        .nodes
        .put("b", status("b", Some(&digest), None).encode())
        .await
        .unwrap();
    let outcome = mesh
        .wait("w", &digest, false, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        outcome,
        WaitOutcome::Live(vec!["a".to_owned(), "b".to_owned()])
    );
}

/// Whether a node retries a refusal by itself.
#[derive(Clone, Copy, PartialEq)]
enum Retry {
    Yes,
    No,
}

async fn everything(server: NatsServer) {
    desired_state_changes(&server).await;
    concurrent_publishes_all_land(&server).await;
    artifacts_are_verified(&server).await;
    wait_reads_node_status(&server).await;
}

#[tokio::test]
async fn the_mesh_works_with_debian_nats_server_2_9() {
    everything(NatsServer::start()).await;
}

#[tokio::test]
async fn the_mesh_works_with_a_current_nats_server() {
    everything(NatsServer::start_current()).await;
}
