//! The NATS backend as several meshd nodes use it: each test opens two
//! `KvStore`s (two nodes, each with its own connection) on real
//! nats-servers, one or a three-server cluster, and checks what one node
//! sees of the other's writes.

use meshd_keyvalue::{BucketRef, KvError, KvLimits, KvStore, NatsOptions, ENTRY_OVERHEAD};
use meshd_testkit::{NatsCluster, NatsServer};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn bucket<'a>(tenant: &'a str, bucket: &'a str) -> BucketRef<'a> {
    BucketRef { tenant, bucket }
}

fn options(url: &str, replicas: usize) -> NatsOptions {
    NatsOptions {
        url: url.to_owned(),
        replicas,
        ..NatsOptions::default()
    }
}

/// Polls `kv` until a read succeeds, returning the last error on timeout.
async fn wait_ready(kv: &KvStore) -> Result<(), KvError> {
    let started = Instant::now();
    loop {
        match kv.get(bucket("-", ""), "-").await {
            Ok(_) => return Ok(()),
            Err(e) if started.elapsed() > READY_TIMEOUT => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The first answer of `kv` other than "not connected" (the client
/// connects in the background).
async fn first_answer(kv: &KvStore) -> Result<(), KvError> {
    let started = Instant::now();
    loop {
        match kv.get(bucket("-", ""), "-").await {
            Err(e) if e.to_string().contains("not connected") => {
                assert!(started.elapsed() < READY_TIMEOUT, "never connected");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other.map(|_| ()),
        }
    }
}

/// A node's store on `url`, once connected with its bucket open.
async fn node(url: &str, replicas: usize, limits: KvLimits) -> KvStore {
    let kv = KvStore::connect_nats(&options(url, replicas), limits)
        .await
        .expect("valid settings");
    wait_ready(&kv).await.expect("the store gets ready");
    kv
}

/// Each node reads what the other wrote right after the write returned,
/// and its own writes: no retries, no sleeps, 200 rounds.
async fn check_each_node_reads_every_acknowledged_write(a: &KvStore, b: &KvStore) {
    let shared = bucket("shop", "cart");
    for round in 0..200u32 {
        let (writer, reader) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let value = format!("v{round}");
        writer.set(shared, "k", value.as_bytes()).await.unwrap();
        assert_eq!(
            writer.get(shared, "k").await.unwrap().as_deref(),
            Some(value.as_bytes()),
            "round {round}: the writer reads its own write"
        );
        assert_eq!(
            reader.get(shared, "k").await.unwrap().as_deref(),
            Some(value.as_bytes()),
            "round {round}: the other node reads the acknowledged write"
        );
        let counted = writer.increment(shared, "n", 1).await.unwrap();
        assert_eq!(counted, u64::from(round) + 1);
        assert_eq!(
            reader.get(shared, "n").await.unwrap().as_deref(),
            Some(counted.to_string().as_bytes()),
            "round {round}: the other node reads the increment"
        );
    }
    a.delete(shared, "k").await.unwrap();
    assert_eq!(
        b.get(shared, "k").await.unwrap(),
        None,
        "the delete is seen"
    );
    assert!(!b.exists(shared, "k").await.unwrap());
    // A deleted key can be written again, from either node.
    b.set(shared, "k", b"again").await.unwrap();
    assert_eq!(
        a.get(shared, "k").await.unwrap().as_deref(),
        Some(&b"again"[..])
    );
    a.delete(shared, "n").await.unwrap();
    assert_eq!(b.increment(shared, "n", 5).await.unwrap(), 5);
}

/// `tasks` tasks on each node add 1 to the same key `per_task` times; every
/// increment returns a distinct value and the total is exact.
async fn check_increments_from_two_nodes_are_exact(
    a: &KvStore,
    b: &KvStore,
    tasks: usize,
    per_task: usize,
) {
    let mut running = tokio::task::JoinSet::new();
    for kv in [a, b] {
        for _ in 0..tasks {
            let kv = kv.clone();
            running.spawn(async move {
                let mut seen = Vec::with_capacity(per_task);
                for _ in 0..per_task {
                    seen.push(kv.increment(bucket("shop", ""), "hits", 1).await.unwrap());
                }
                seen
            });
        }
    }
    let mut all = BTreeSet::new();
    while let Some(seen) = running.join_next().await {
        for value in seen.unwrap() {
            assert!(all.insert(value), "{value} was returned twice");
        }
    }
    let total = (2 * tasks * per_task) as u64;
    assert_eq!(all, (1..=total).collect::<BTreeSet<u64>>());
    for kv in [a, b] {
        assert_eq!(
            kv.get(bucket("shop", ""), "hits").await.unwrap().as_deref(),
            Some(total.to_string().as_bytes())
        );
    }
}

#[tokio::test]
async fn two_nodes_read_each_others_writes_at_once() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), 1, KvLimits::default()).await;
    let b = node(&nats.url(), 1, KvLimits::default()).await;
    check_each_node_reads_every_acknowledged_write(&a, &b).await;
}

#[tokio::test]
async fn increments_from_two_nodes_are_exact() {
    let nats = NatsServer::start();
    let a = node(&nats.url(), 1, KvLimits::default()).await;
    let b = node(&nats.url(), 1, KvLimits::default()).await;
    check_increments_from_two_nodes_are_exact(&a, &b, 10, 50).await;
}

/// The same on a three-server cluster, each node connected to a different
/// server: reads go through the stream leader wherever a node is
/// connected, and a single replica's compare-and-swap is atomic on every
/// server version.
#[tokio::test]
async fn on_a_three_server_cluster_with_one_replica() {
    let cluster = NatsCluster::start();
    let a = node(&cluster.servers[0].url(), 1, KvLimits::default()).await;
    let b = node(&cluster.servers[2].url(), 1, KvLimits::default()).await;
    check_each_node_reads_every_acknowledged_write(&a, &b).await;
    check_increments_from_two_nodes_are_exact(&a, &b, 10, 50).await;
}

/// With three replicas, on a server from 2.9.21 on (a current release):
/// the same, and the bucket really has three replicas and serves reads
/// through its leader only.
#[tokio::test]
async fn on_a_current_three_server_cluster_with_three_replicas_too() {
    let cluster = NatsCluster::start_current();
    let a = node(&cluster.servers[0].url(), 3, KvLimits::default()).await;
    let b = node(&cluster.servers[2].url(), 3, KvLimits::default()).await;
    check_each_node_reads_every_acknowledged_write(&a, &b).await;
    check_increments_from_two_nodes_are_exact(&a, &b, 10, 50).await;
    let client = async_nats::connect(cluster.servers[1].url()).await.unwrap();
    let mut stream = async_nats::jetstream::new(client)
        .get_stream("KV_meshd_tenant_kv")
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.config.num_replicas, 3);
    assert!(!info.config.allow_direct);
    let cluster_info = info.cluster.as_ref().expect("clustered");
    assert_eq!(cluster_info.replicas.len(), 2, "{cluster_info:?}");
}

/// Older servers (Debian bookworm's 2.9.10) can accept two compare-and-swaps
/// from the same revision of a replicated stream (measured: a value returned
/// twice within 1000 increments, every run): meshd refuses to use such a
/// bucket, with the reason.
#[tokio::test]
async fn three_replicas_on_debian_2_9_10_are_refused_with_the_reason() {
    let cluster = NatsCluster::start();
    let kv = KvStore::connect_nats(&options(&cluster.servers[0].url(), 3), KvLimits::default())
        .await
        .unwrap();
    let e = first_answer(&kv).await.unwrap_err().to_string();
    assert!(
        e.contains("replicas = 3 needs nats-server 2.9.21 or newer"),
        "{e}"
    );
}

/// Two nodes writing for one app at once never take it over its quota,
/// and what one node frees the other can use.
#[tokio::test]
async fn the_quota_holds_across_two_nodes() {
    let nats = NatsServer::start();
    // Entries of app "q", bucket "", keys "a00".."b99", 10-byte values:
    // 64 + 1 + 3 + 10 = 78 bytes each; 20 of them fit.
    let limits = KvLimits {
        quota: 20 * (ENTRY_OVERHEAD + 14),
        ..KvLimits::default()
    };
    let a = node(&nats.url(), 1, limits).await;
    let b = node(&nats.url(), 1, limits).await;
    let mut running = tokio::task::JoinSet::new();
    for (name, kv) in [("a", &a), ("b", &b)] {
        for task in 0..5 {
            let kv = kv.clone();
            running.spawn(async move {
                let (mut stored, mut refused) = (0, 0);
                for i in 0..10 {
                    let key = format!("{name}{task}{i}");
                    match kv.set(bucket("q", ""), &key, b"0123456789").await {
                        Ok(()) => stored += 1,
                        Err(KvError::QuotaExceeded { .. }) => refused += 1,
                        Err(e) => panic!("{key}: {e}"),
                    }
                }
                (stored, refused)
            });
        }
    }
    let (mut stored, mut refused) = (0, 0);
    while let Some(counts) = running.join_next().await {
        let (s, r) = counts.unwrap();
        stored += s;
        refused += r;
    }
    assert_eq!((stored, refused), (20, 80), "100 writes, room for 20");
    let listed = a.list_keys(bucket("q", ""), None).await.unwrap().keys;
    assert_eq!(listed.len(), 20, "{listed:?}");
    // Room freed on one node is room on the other.
    assert!(matches!(
        b.set(bucket("q", ""), "zz0", b"0123456789").await,
        Err(KvError::QuotaExceeded { .. })
    ));
    a.delete(bucket("q", ""), &listed[0]).await.unwrap();
    b.set(bucket("q", ""), "zz0", b"0123456789").await.unwrap();
    assert!(matches!(
        a.set(bucket("q", ""), "zz1", b"0123456789").await,
        Err(KvError::QuotaExceeded { .. })
    ));
}

/// While NATS is down, calls fail at once with an error that says so; once
/// it is back, the same store works again and the data is still there.
#[tokio::test]
async fn calls_fail_clearly_while_nats_is_down_and_work_after() {
    let mut nats = NatsServer::start();
    let kv = node(&nats.url(), 1, KvLimits::default()).await;
    let b = bucket("shop", "");
    kv.set(b, "kept", b"yes").await.unwrap();
    nats.stop();
    // The client notices the closed connection at once; a call racing it
    // may fail with the request's own error instead.
    let started = Instant::now();
    let err = loop {
        match kv.get(b, "kept").await {
            Err(e) if e.to_string().contains("not connected") => break e,
            Err(_) | Ok(_) if started.elapsed() < READY_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("still answering with NATS down: {other:?}"),
        }
    };
    let expected = format!(
        "storage error: not connected to NATS at 127.0.0.1:{}; meshd keeps reconnecting",
        nats.port()
    );
    assert_eq!(err.to_string(), expected);
    let failed_at = Instant::now();
    assert_eq!(
        kv.increment(b, "n", 1).await.unwrap_err().to_string(),
        expected
    );
    assert!(
        failed_at.elapsed() < Duration::from_secs(1),
        "a call fails at once, not after a timeout"
    );
    nats.resume();
    wait_ready(&kv)
        .await
        .expect("works again after NATS is back");
    assert_eq!(
        kv.get(b, "kept").await.unwrap().as_deref(),
        Some(&b"yes"[..])
    );
    assert_eq!(kv.increment(b, "n", 1).await.unwrap(), 1);
}

/// A node started while NATS is down starts (setting up the store does
/// not wait for NATS) and works once NATS is up.
#[tokio::test]
async fn a_store_set_up_while_nats_is_down_works_once_it_is_up() {
    let mut nats = NatsServer::start();
    nats.stop();
    let kv = KvStore::connect_nats(&options(&nats.url(), 1), KvLimits::default())
        .await
        .expect("set up without NATS");
    let err = kv.get(bucket("a", ""), "k").await.unwrap_err();
    assert!(err.to_string().contains("not connected to NATS"), "{err}");
    nats.resume();
    wait_ready(&kv).await.expect("works once NATS is up");
    kv.set(bucket("a", ""), "k", b"v").await.unwrap();
}

/// Bad settings fail at set-up, naming the setting; a bucket the server
/// cannot hold fails every call with the server's reason.
#[tokio::test]
async fn bad_settings_are_named() {
    let nats = NatsServer::start();
    let err = |options: NatsOptions| async move {
        KvStore::connect_nats(&options, KvLimits::default())
            .await
            .err()
            .expect("refused")
            .to_string()
    };
    let e = err(options("", 1)).await;
    assert!(e.contains("needs a url"), "{e}");
    let e = err(options(&nats.url(), 6)).await;
    assert!(e.contains("replicas is 6"), "{e}");
    let missing = NatsOptions {
        ca_file: Some("/nonexistent/ca.pem".into()),
        ..options(&nats.url(), 1)
    };
    let e = err(missing).await;
    assert!(
        e.contains("cannot read /nonexistent/ca.pem ([keyvalue] ca_file)"),
        "{e}"
    );
    // Three replicas on a single server: set up, then every call says why.
    let kv = KvStore::connect_nats(&options(&nats.url(), 3), KvLimits::default())
        .await
        .unwrap();
    let e = first_answer(&kv).await.unwrap_err().to_string();
    // (The server on PATH is Debian's 2.9.10: the version check answers
    // before the stream is tried.)
    assert!(e.contains("replicas = 3 needs nats-server 2.9.21"), "{e}");
}
