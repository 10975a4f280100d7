//! One client's latency per operation on each backend, for
//! docs/mesh.md's comparison of NATS and Redis: every operation waits for
//! the previous one (no concurrency), on loopback servers of its own.
//!
//! `cargo run -p meshd-keyvalue --example latency [OPS]` (needs
//! `redis-server` and `nats-server` on PATH; OPS defaults to 2000).

use meshd_keyvalue::{BucketRef, KvLimits, KvStore, NatsOptions, RedisTls};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUCKET: BucketRef<'static> = BucketRef {
    tenant: "bench",
    bucket: "b",
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ops: usize = std::env::args()
        .nth(1)
        .map_or(Ok(2000), |n| n.parse())
        .map_err(|e| anyhow::anyhow!("OPS must be a number: {e}"))?;
    let limits = KvLimits {
        quota: 1 << 30,
        ..KvLimits::default()
    };

    let dir = tempfile::tempdir()?;
    let redb = KvStore::open_redb(&dir.path().join("kv.redb"), limits)?;
    measure("redb", &redb, ops).await?;

    let port = meshd_testkit::free_port();
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .spawn()?;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = format!("redis://127.0.0.1:{port}/");
    let kv = KvStore::connect_redis(&url, &RedisTls::default(), limits).await?;
    measure("redis", &kv, ops).await?;
    let _ = redis.kill();

    let nats = meshd_testkit::NatsServer::start();
    let options = NatsOptions {
        url: nats.url(),
        ..NatsOptions::default()
    };
    let kv = KvStore::connect_nats(&options, limits).await?;
    while kv.get(BUCKET, "-").await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    measure("nats", &kv, ops).await?;
    Ok(())
}

/// Times `ops` of each operation and prints the median and 99th percentile.
async fn measure(backend: &str, kv: &KvStore, ops: usize) -> anyhow::Result<()> {
    let value = vec![b'x'; 100];
    let mut times = Vec::with_capacity(ops);
    let report = |what: &str, times: &mut Vec<Duration>| {
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        println!(
            "{backend:6} {what:28} p50 {:>8.1?} p99 {:>8.1?}",
            at(0.5),
            at(0.99)
        );
        times.clear();
    };
    for i in 0..ops {
        let started = Instant::now();
        kv.set(BUCKET, &format!("new{i}"), &value).await?;
        times.push(started.elapsed());
    }
    report("set (new key, 100 B)", &mut times);
    for i in 0..ops {
        let started = Instant::now();
        kv.set(BUCKET, &format!("new{i}"), &value).await?;
        times.push(started.elapsed());
    }
    report("set (same size again)", &mut times);
    for i in 0..ops {
        let started = Instant::now();
        kv.get(BUCKET, &format!("new{i}")).await?;
        times.push(started.elapsed());
    }
    report("get", &mut times);
    for _ in 0..ops {
        let started = Instant::now();
        kv.increment(BUCKET, "counter", 1).await?;
        times.push(started.elapsed());
    }
    report("increment", &mut times);
    for i in 0..ops {
        let started = Instant::now();
        kv.delete(BUCKET, &format!("new{i}")).await?;
        times.push(started.elapsed());
    }
    report("delete", &mut times);
    Ok(())
}
