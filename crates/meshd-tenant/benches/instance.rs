//! The per-request cost of a tenant instance, without sockets:
//!
//! - `instantiate`: a fresh Store with the app's host state, instantiate the
//!   pre-instantiated hello component, tear it all down.
//! - `handle`: a whole GET through `AppVersion::handle` (Store, instance,
//!   guest runs, response body read).
//!
//! The group `wasmtime_alone` is the baseline in the same run: the same two
//! steps done the way `wasmtime serve --wasm timeout=..` does them, on an
//! engine of wasmtime's defaults (pooling allocator when the address space
//! allows it, epoch interruption on) with a Store holding only what WASI
//! and wasi:http need. Wall time per iteration depends on the machine (this
//! bench's figures moved 3-4x between days on one VM); the ratio of the two
//! groups does much less.
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
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

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

    let alone = WasmtimeAlone::new(&hello_wasm());
    let mut group = c.benchmark_group("wasmtime_alone");
    group.bench_function("instantiate", |b| {
        b.to_async(&rt).iter(|| alone.instantiate())
    });
    group.bench_function("handle", |b| b.to_async(&rt).iter(|| alone.handle()));
    group.finish();
}

/// The baseline: the hello component on an engine of wasmtime's defaults,
/// served the way `wasmtime serve` serves a request (a Store per request,
/// `ProxyPre::instantiate_async`, `call_handle`).
struct WasmtimeAlone {
    engine: Engine,
    pre: ProxyPre<BareHost>,
}

/// A Store's data with nothing but the WASI and wasi:http contexts.
struct BareHost {
    table: ResourceTable,
    wasi: WasiCtx,
    http: WasiHttpCtx,
}

impl WasiView for BareHost {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for BareHost {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

impl WasmtimeAlone {
    fn new(wasm: &[u8]) -> Self {
        let engine = Self::engine();
        let component = Component::new(&engine, wasm).expect("hello compiles");
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).expect("WASI links");
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .expect("wasi:http links");
        let pre = linker.instantiate_pre(&component).expect("hello links");
        let pre = ProxyPre::new(pre).expect("hello is a wasi:http proxy");
        WasmtimeAlone { engine, pre }
    }

    /// wasmtime's default engine with epoch interruption, as `serve` makes
    /// it when a timeout is set: pooled if the address space allows it
    /// (`serve` probes for the same).
    fn engine() -> Engine {
        let mut config = Config::new();
        config.epoch_interruption(true);
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(
            PoolingAllocationConfig::default(),
        ));
        Engine::new(&pooled)
            .or_else(|_| Engine::new(&config))
            .expect("wasmtime engine")
    }

    fn store(&self) -> Store<BareHost> {
        let host = BareHost {
            table: ResourceTable::new(),
            wasi: WasiCtx::builder().build(),
            http: WasiHttpCtx::new(),
        };
        let mut store = Store::new(&self.engine, host);
        // Nothing advances this engine's epoch: the deadline is never met,
        // but the compiled code checks it as meshd's does.
        store.set_epoch_deadline(1);
        store
    }

    async fn instantiate(&self) {
        let mut store = self.store();
        self.pre
            .instantiate_async(&mut store)
            .await
            .expect("instantiates");
    }

    async fn handle(&self) {
        let mut store = self.store();
        let req = http::Request::get("http://localhost/")
            .body(Empty::<Bytes>::new().map_err(|never| -> BodyError { match never {} }))
            .expect("request");
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let view = &mut store.data_mut().http();
        let req = view
            .new_incoming_request(Scheme::Http, req)
            .expect("incoming request");
        let out = view
            .new_response_outparam(sender)
            .expect("response outparam");
        let call = async {
            let proxy = self.pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, req, out)
                .await
        };
        let read = async {
            let resp = receiver.await.expect("a response").expect("not an error");
            resp.into_body().collect().await.expect("body");
        };
        let (called, ()) = tokio::join!(call, read);
        called.expect("handled");
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
