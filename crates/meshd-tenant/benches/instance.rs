//! The per-request cost of a tenant instance, without sockets:
//!
//! - `instantiate`: a fresh Store with the app's host state, instantiate the
//!   pre-instantiated hello component, tear it all down.
//! - `handle`: a whole GET through `AppVersion::handle` (Store, instance,
//!   guest runs, response body read).
//!
//! Needs the example guests: `cargo xtask apps` (or any `cargo xtask` task)
//! builds them. Run with `cargo bench -p meshd-tenant`.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt as _, Empty};
use meshd_keyvalue::{KvLimits, KvStore};
use meshd_tenant::{
    load_version, AppLedger, BodyError, DescriptorLimits, OutboundLimits, ResolverSettings,
    Runtime, RuntimeConfig, TenantSettings,
};
use std::sync::Arc;
use std::time::Duration;

fn hello_wasm() -> Vec<u8> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/guests/wasm32-wasip2/release/hello.wasm"
    );
    std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}; run `cargo xtask apps` first"))
}

fn settings() -> TenantSettings {
    TenantSettings {
        memory: 128 << 20,
        timeout: Duration::from_secs(30),
        max_concurrency: 1000,
        max_body: 1 << 20,
        cpu: Some(1000),
        cpu_weight: 1000,
        env: Vec::new(),
        files: None,
        outbound: Vec::new(),
        config: Vec::new(),
        reuse: 1,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = KvStore::open_redb(&dir.path().join("kv.redb"), KvLimits::default()).expect("kv");
    let runtime = Runtime::new(
        RuntimeConfig {
            cache_dir: dir.path().join("cache"),
            max_instances: 1000,
            max_total_memory: u64::MAX,
            guest_log_rate: 0,
            outbound_ca_files: Vec::new(),
            descriptors: DescriptorLimits::default(),
            outbound: OutboundLimits::default(),
            resolver: ResolverSettings::default(),
            files_quota: None,
            load_parallelism: 1,
            max_compile_time: std::time::Duration::from_secs(600),
            memory_reset: None,
            idle_unload: None,
            max_loaded: None,
        },
        kv,
    )
    .expect("runtime");
    let version = Arc::new(
        load_version(
            &runtime,
            &AppLedger::new(&runtime, "hello"),
            "hello",
            &hello_wasm(),
            settings(),
        )
        .expect("hello loads"),
    );

    let mut group = c.benchmark_group("per_request");
    group.bench_function("instantiate", |b| {
        b.to_async(&rt)
            .iter(|| async { version.instantiate_once().await.expect("instantiates") })
    });
    group.bench_function("handle", |b| {
        b.to_async(&rt).iter(|| async {
            let req = http::Request::get("http://localhost/")
                .body(Empty::<Bytes>::new().map_err(|never| -> BodyError { match never {} }))
                .expect("request");
            let resp = version.handle(req).await.expect("handled");
            resp.into_body().collect().await.expect("body");
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
