//! Paging through every key of a bucket with `list_keys`, for two bucket
//! sizes. Each page is one range read of its own keys, so the time per key
//! stays the same as the bucket grows (with offset cursors it grew with the
//! bucket: paging was quadratic). Another tenant's keys sort right after
//! the bucket's, and are never read.
//!
//! `cargo bench -p meshd-keyvalue --bench list_keys`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use meshd_keyvalue::{BucketRef, KvLimits, KvStore, MAX_BATCH_KEYS};

const SIZES: [usize; 2] = [100_000, 1_000_000];

const BUCKET: BucketRef<'static> = BucketRef {
    tenant: "bench",
    bucket: "b",
};

/// A tenant whose rows come right after the bucket's in the store.
const NEIGHBOUR: BucketRef<'static> = BucketRef {
    tenant: "bench0",
    bucket: "b",
};

async fn fill(kv: &KvStore, b: BucketRef<'_>, n: usize) {
    let keys: Vec<String> = (0..n).map(|i| format!("key{i:08}")).collect();
    for chunk in keys.chunks(MAX_BATCH_KEYS) {
        let entries = chunk.iter().map(|k| (k.clone(), b"v".to_vec())).collect();
        kv.set_many(b, entries).await.expect("fill the bucket");
    }
}

async fn page_through(kv: &KvStore) -> usize {
    let mut seen = 0;
    let mut cursor = None;
    loop {
        let page = kv.list_keys(BUCKET, cursor).await.expect("a page");
        seen += page.keys.len();
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => return seen,
        }
    }
}

fn list_keys(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let mut group = c.benchmark_group("list_keys_all_pages");
    group.sample_size(10);
    for n in SIZES {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let limits = KvLimits {
            quota: u64::MAX,
            ..KvLimits::default()
        };
        let kv = KvStore::open_redb(&dir.path().join("kv.redb"), limits).expect("open");
        rt.block_on(async {
            fill(&kv, BUCKET, n).await;
            fill(&kv, NEIGHBOUR, n).await;
            assert_eq!(page_through(&kv).await, n);
        });
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.to_async(&rt).iter(|| page_through(&kv));
        });
    }
    group.finish();
}

criterion_group!(benches, list_keys);
criterion_main!(benches);
