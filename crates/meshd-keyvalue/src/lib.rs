//! Per-tenant key-value storage behind meshd's `wasi:keyvalue`.
//!
//! Every entry is addressed by (tenant, bucket, key): a tenant can open any
//! bucket name, and only ever sees its own. Two backends:
//!
//! - [`KvStore::open_redb`]: an embedded, crash-safe database file (redb).
//!   Every write is a durable transaction: once acknowledged it survives a
//!   crash or `kill -9`.
//! - [`KvStore::connect_nats`]: a NATS JetStream key-value bucket, so
//!   several meshd nodes share tenant state through the engine the mesh
//!   uses for its desired state (see `nats_store`).
//! - [`KvStore::connect_redis`]: a Redis server, the other way for several
//!   meshd nodes to share tenant state.
//!
//! All enforce the same limits: key size, value size and a per-tenant quota
//! on the bytes stored, each entry charged its key, value, bucket name and
//! app name plus [`ENTRY_OVERHEAD`] (see [`charged_size`]). Increments are
//! atomic.
#![deny(missing_docs)]

mod cursor;
mod nats_store;
mod redb_store;
mod redis_store;

use std::path::Path;
use std::sync::Arc;

pub use nats_store::{NatsOptions, MAX_CAS_ATTEMPTS};
pub use redis_store::RedisTls;

/// Size limits and the per-tenant quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    /// Longest key, in bytes.
    pub max_key: usize,
    /// Largest value, in bytes.
    pub max_value: usize,
    /// Most bytes one tenant may store, all buckets together, as
    /// [`charged_size`] counts them.
    pub quota: u64,
}

impl Default for KvLimits {
    fn default() -> Self {
        KvLimits {
            max_key: 1024,
            max_value: 1 << 20,
            quota: 64 << 20,
        }
    }
}

/// Why an operation failed. The message is what the guest sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key is longer than the limit.
    #[error("key is {len} bytes; the limit is {limit}")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The value is larger than the limit.
    #[error("value is {len} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// A batch names too many keys or would return too many bytes.
    #[error("batch too large: {0}")]
    BatchTooLarge(String),
    /// The write would take the tenant over its quota.
    #[error("quota exceeded: the app may store {quota} bytes")]
    QuotaExceeded {
        /// The quota.
        quota: u64,
    },
    /// `increment` on a value that is not a decimal u64.
    #[error("value of {key:?} is not a decimal number")]
    NotANumber {
        /// The key.
        key: String,
    },
    /// `increment` would overflow a u64.
    #[error("increment of {key:?} overflows")]
    Overflow {
        /// The key.
        key: String,
    },
    /// A write to a shared backend lost its compare-and-swap to other
    /// writers of the same key this many times in a row.
    #[error("{key:?} was changed by other writers {attempts} times in a row; try again")]
    Contended {
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A `list_keys` cursor that this meshd did not issue for this bucket,
    /// or that expired (see [`CURSOR_TTL`]).
    #[error("unknown or expired cursor: list the keys again from the start")]
    UnknownCursor,
    /// The storage itself failed.
    #[error("storage error: {0}")]
    Backend(String),
}

pub use cursor::TTL as CURSOR_TTL;

/// One page of a key listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys of this page.
    pub keys: Vec<String>,
    /// Where the next page starts; `None` at the end.
    pub cursor: Option<u64>,
}

/// Most keys returned by one `list_keys` call.
pub const PAGE_SIZE: usize = 1000;

/// Most keys in one batch operation.
pub const MAX_BATCH_KEYS: usize = 1000;

/// Most bytes one `get_many` may return: the host holds them all before
/// copying them into the guest, so this bounds meshd's memory per call.
pub const MAX_BATCH_BYTES: usize = 16 << 20;

/// Bytes every entry is charged on top of its contents: what a backend
/// spends to keep one entry (redb's B-tree slot and length fields, Redis's
/// key object), rounded up. Without it, empty entries would be free, and a
/// tenant could fill the disk (or Redis's memory) with them under any quota.
pub const ENTRY_OVERHEAD: u64 = 64;

/// What one entry counts against its tenant's quota: its key, its value,
/// the bucket and app names stored with it, and [`ENTRY_OVERHEAD`].
pub fn charged_size(b: BucketRef<'_>, key: &str, value_len: usize) -> u64 {
    let contents = b.tenant.len() + b.bucket.len() + key.len() + value_len;
    ENTRY_OVERHEAD + contents as u64
}

/// The key-value store shared by all tenants of a meshd.
#[derive(Clone)]
pub struct KvStore {
    backend: Backend,
    limits: KvLimits,
    /// Where each open listing stopped (see `cursor.rs`).
    cursors: Arc<cursor::Cursors>,
}

#[derive(Clone)]
enum Backend {
    Redb(redb_store::RedbStore),
    Redis(redis_store::RedisStore),
    Nats(nats_store::NatsStore),
}

/// Identifies one bucket of one tenant.
#[derive(Debug, Clone, Copy)]
pub struct BucketRef<'a> {
    /// The app.
    pub tenant: &'a str,
    /// The bucket name the app opened.
    pub bucket: &'a str,
}

impl KvStore {
    /// Opens (creating if needed) the database file at `path`.
    pub fn open_redb(path: &Path, limits: KvLimits) -> anyhow::Result<Self> {
        Ok(KvStore {
            backend: Backend::Redb(redb_store::RedbStore::open(path)?),
            limits,
            cursors: Arc::default(),
        })
    }

    /// Opens the database file at `path` once the previous meshd process
    /// has released it (a graceful restart: redb lets one process at a time
    /// open the file). Calls made before then wait for it, each at most
    /// `wait`, then fail. Must be called inside the tokio runtime.
    pub fn open_redb_when_free(path: &Path, limits: KvLimits, wait: std::time::Duration) -> Self {
        KvStore {
            backend: Backend::Redb(redb_store::RedbStore::open_when_free(path, wait)),
            limits,
            cursors: Arc::default(),
        }
    }

    /// Hands the store on to the next meshd process (a graceful restart):
    /// with redb, waits for the calls in progress (at most `timeout`) and
    /// closes the file; every later call of this process fails. Redis and
    /// NATS are shared by design: nothing to do. Returns whether the store
    /// was closed in time.
    pub async fn release(&self, timeout: std::time::Duration) -> bool {
        match &self.backend {
            Backend::Redb(s) => s.release(timeout).await,
            Backend::Redis(_) | Backend::Nats(_) => true,
        }
    }

    /// Connects to the Redis server at `url` (e.g. `redis://127.0.0.1/`, or
    /// `rediss://` for TLS, with `tls` for a private CA or a client
    /// certificate).
    pub async fn connect_redis(
        url: &str,
        tls: &RedisTls,
        limits: KvLimits,
    ) -> anyhow::Result<Self> {
        Ok(KvStore {
            backend: Backend::Redis(redis_store::RedisStore::connect(url, tls).await?),
            limits,
            cursors: Arc::default(),
        })
    }

    /// Sets up a NATS client for `options.url` and the JetStream bucket
    /// every tenant's entries live in. The client connects in the
    /// background and reconnects forever: this fails only on bad settings
    /// (an invalid URL, unreadable files), never because NATS is down;
    /// until it is up, calls fail with "not connected to NATS at …".
    pub async fn connect_nats(options: &NatsOptions, limits: KvLimits) -> anyhow::Result<Self> {
        Ok(KvStore {
            backend: Backend::Nats(
                nats_store::NatsStore::connect(options, limits.max_value).await?,
            ),
            limits,
            cursors: Arc::default(),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> KvLimits {
        self.limits
    }

    /// Which backend is in use, for logs: `redb`, `redis` or `nats`.
    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Redb(_) => "redb",
            Backend::Redis(_) => "redis",
            Backend::Nats(_) => "nats",
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.len() > self.limits.max_key {
            return Err(KvError::KeyTooLarge {
                len: key.len(),
                limit: self.limits.max_key,
            });
        }
        Ok(())
    }

    fn check_entry(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        if value.len() > self.limits.max_value {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                limit: self.limits.max_value,
            });
        }
        Ok(())
    }

    /// The value of `key`, if any.
    pub async fn get(&self, b: BucketRef<'_>, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Redb(s) => s.get(b, key).await,
            Backend::Redis(s) => s.get(b, key).await,
            Backend::Nats(s) => s.get(b, key).await,
        }
    }

    /// Sets `key` to `value`.
    pub async fn set(&self, b: BucketRef<'_>, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_entry(key, value)?;
        let quota = self.limits.quota;
        match &self.backend {
            Backend::Redb(s) => {
                s.set_many(b, vec![(key.to_owned(), value.to_vec())], quota)
                    .await
            }
            Backend::Redis(s) => s.set(b, key, value, quota).await,
            Backend::Nats(s) => s.set(b, key, value, quota).await,
        }
    }

    /// Removes `key` (no error if absent).
    pub async fn delete(&self, b: BucketRef<'_>, key: &str) -> Result<(), KvError> {
        self.check_key(key)?;
        match &self.backend {
            Backend::Redb(s) => s.delete_many(b, vec![key.to_owned()]).await,
            Backend::Redis(s) => s.delete(b, key).await,
            Backend::Nats(s) => s.delete(b, key).await,
        }
    }

    /// Whether `key` exists.
    pub async fn exists(&self, b: BucketRef<'_>, key: &str) -> Result<bool, KvError> {
        Ok(self.get(b, key).await?.is_some())
    }

    /// One page of the bucket's keys (at most [`PAGE_SIZE`]), starting after
    /// where `cursor` stopped. Each page reads only its own keys and the one
    /// after them, in the caller's bucket. redb and Redis list in byte
    /// order; NATS in the order the keys were last written (a key written
    /// again during a listing may come again on a later page; none is
    /// skipped).
    pub async fn list_keys(
        &self,
        b: BucketRef<'_>,
        cursor: Option<u64>,
    ) -> Result<KeyPage, KvError> {
        let after = cursor
            .map(|token| self.cursors.resume(b, token))
            .transpose()?;
        let after = after.as_deref();
        // Where the next page resumes: the last key (in byte order), or the
        // last stream sequence (NATS).
        let (keys, next) = match &self.backend {
            Backend::Redb(s) => after_last_key(s.list_keys(b, after).await?),
            Backend::Redis(s) => after_last_key(s.list_keys(b, after).await?),
            Backend::Nats(s) => s.list_keys(b, after).await?,
        };
        let cursor = next.map(|position| self.cursors.issue(b, position));
        Ok(KeyPage { keys, cursor })
    }

    /// Atomically adds `delta` to the decimal number stored at `key` (absent
    /// counts as 0) and returns the new value.
    pub async fn increment(&self, b: BucketRef<'_>, key: &str, delta: u64) -> Result<u64, KvError> {
        self.check_key(key)?;
        let quota = self.limits.quota;
        match &self.backend {
            Backend::Redb(s) => s.increment(b, key, delta, quota).await,
            Backend::Redis(s) => s.increment(b, key, delta, quota).await,
            Backend::Nats(s) => s.increment(b, key, delta, quota).await,
        }
    }

    /// The values of `keys`, in order.
    pub async fn get_many(
        &self,
        b: BucketRef<'_>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>, KvError> {
        check_batch(keys.len())?;
        let mut out = Vec::with_capacity(keys.len());
        let mut bytes = 0;
        for key in keys {
            let value = self.get(b, &key).await?;
            bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            if bytes > MAX_BATCH_BYTES {
                return Err(KvError::BatchTooLarge(format!(
                    "the values would exceed {MAX_BATCH_BYTES} bytes"
                )));
            }
            out.push(value.map(|v| (key, v)));
        }
        Ok(out)
    }

    /// Sets every pair. With redb all of them in one transaction.
    pub async fn set_many(
        &self,
        b: BucketRef<'_>,
        entries: Vec<(String, Vec<u8>)>,
    ) -> Result<(), KvError> {
        // One redb transaction holds the writer that every tenant shares.
        check_batch(entries.len())?;
        for (key, value) in &entries {
            self.check_entry(key, value)?;
        }
        let quota = self.limits.quota;
        match &self.backend {
            Backend::Redb(s) => s.set_many(b, entries, quota).await,
            Backend::Redis(s) => {
                for (key, value) in entries {
                    s.set(b, &key, &value, quota).await?;
                }
                Ok(())
            }
            Backend::Nats(s) => {
                for (key, value) in entries {
                    s.set(b, &key, &value, quota).await?;
                }
                Ok(())
            }
        }
    }

    /// Removes every key.
    pub async fn delete_many(&self, b: BucketRef<'_>, keys: Vec<String>) -> Result<(), KvError> {
        check_batch(keys.len())?;
        for key in &keys {
            self.check_key(key)?;
        }
        match &self.backend {
            Backend::Redb(s) => s.delete_many(b, keys).await,
            Backend::Redis(s) => {
                for key in keys {
                    s.delete(b, &key).await?;
                }
                Ok(())
            }
            Backend::Nats(s) => {
                for key in keys {
                    s.delete(b, &key).await?;
                }
                Ok(())
            }
        }
    }
}

/// A page in byte order resumes after its last key, if more follow.
fn after_last_key((keys, more): (Vec<String>, bool)) -> (Vec<String>, Option<String>) {
    let next = if more { keys.last().cloned() } else { None };
    (keys, next)
}

fn check_batch(len: usize) -> Result<(), KvError> {
    if len > MAX_BATCH_KEYS {
        return Err(KvError::BatchTooLarge(format!(
            "{len} keys; the limit is {MAX_BATCH_KEYS}"
        )));
    }
    Ok(())
}

/// Parses a stored counter.
fn parse_counter(key: &str, bytes: &[u8]) -> Result<u64, KvError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| KvError::NotANumber {
            key: key.to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir, limits: KvLimits) -> KvStore {
        KvStore::open_redb(&dir.path().join("kv.redb"), limits).unwrap()
    }

    fn bucket<'a>(tenant: &'a str, bucket: &'a str) -> BucketRef<'a> {
        BucketRef { tenant, bucket }
    }

    /// The backends the shared checks run on.
    #[derive(Clone, Copy, PartialEq)]
    enum Kind {
        Redb,
        Redis,
        Nats,
    }

    /// What keeps a test's store alive: its file, or its server.
    #[allow(dead_code)] // held for Drop only
    enum Guard {
        Dir(tempfile::TempDir),
        Redis(tests_redis::Redis),
        Nats(meshd_testkit::NatsServer),
    }

    /// A fresh, empty store of `kind` (with its own server), ready to use.
    async fn open(kind: Kind, limits: KvLimits) -> (KvStore, Guard) {
        match kind {
            Kind::Redb => {
                let dir = tempfile::tempdir().unwrap();
                (store(&dir, limits), Guard::Dir(dir))
            }
            Kind::Redis => {
                let redis = tests_redis::Redis::start();
                let kv = KvStore::connect_redis(&redis.url(), &RedisTls::default(), limits)
                    .await
                    .unwrap();
                (kv, Guard::Redis(redis))
            }
            Kind::Nats => {
                let nats = meshd_testkit::NatsServer::start();
                let kv = connect_nats(&nats.url(), limits).await;
                (kv, Guard::Nats(nats))
            }
        }
    }

    /// A NATS store, once it has connected and opened its bucket.
    pub(crate) async fn connect_nats(url: &str, limits: KvLimits) -> KvStore {
        let options = NatsOptions {
            url: url.to_owned(),
            ..NatsOptions::default()
        };
        let kv = KvStore::connect_nats(&options, limits).await.unwrap();
        let started = std::time::Instant::now();
        while let Err(e) = kv.get(bucket("-", ""), "-").await {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "NATS store not ready: {e}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        kv
    }

    /// Runs each named check (an `async fn(Kind)`) on every backend, as the
    /// tests `check::redb`, `check::redis` and `check::nats`.
    macro_rules! on_every_backend {
        ($($check:ident),* $(,)?) => {$(
            mod $check {
                #[tokio::test]
                async fn redb() {
                    super::$check(super::Kind::Redb).await
                }
                #[tokio::test]
                async fn redis() {
                    super::$check(super::Kind::Redis).await
                }
                #[tokio::test]
                async fn nats() {
                    super::$check(super::Kind::Nats).await
                }
            }
        )*};
    }

    on_every_backend!(
        tenants_and_buckets_are_separate,
        limits_and_quota_are_enforced_with_clear_errors,
        empty_entries_are_charged_so_their_number_is_bounded,
        concurrent_increments_are_exact,
        batches_are_bounded,
        listing_pages_through_every_key_of_the_bucket_only,
    );

    async fn tenants_and_buckets_are_separate(kind: Kind) {
        let (kv, _guard) = open(kind, KvLimits::default()).await;
        kv.set(bucket("a", ""), "k", b"a's").await.unwrap();
        kv.set(bucket("a", "other"), "k", b"a's other")
            .await
            .unwrap();
        assert_eq!(kv.get(bucket("b", ""), "k").await.unwrap(), None);
        assert_eq!(kv.get(bucket("a", ""), "k").await.unwrap().unwrap(), b"a's");
        let page = kv.list_keys(bucket("a", "other"), None).await.unwrap();
        assert_eq!(page.keys, ["k"]);
        assert!(kv
            .list_keys(bucket("b", "other"), None)
            .await
            .unwrap()
            .keys
            .is_empty());
    }

    #[tokio::test]
    async fn data_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        store(&dir, KvLimits::default())
            .set(bucket("a", ""), "k", b"v")
            .await
            .unwrap();
        let kv = store(&dir, KvLimits::default());
        assert_eq!(kv.get(bucket("a", ""), "k").await.unwrap().unwrap(), b"v");
    }

    #[tokio::test]
    async fn a_store_released_by_one_owner_is_opened_by_the_next_with_every_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let old = KvStore::open_redb(&path, KvLimits::default()).unwrap();
        let b = bucket("a", "");
        old.increment(b, "n", 5).await.unwrap();
        // The next owner starts while the old one still holds the file: its
        // calls wait instead of failing.
        let new = KvStore::open_redb_when_free(
            &path,
            KvLimits::default(),
            std::time::Duration::from_secs(20),
        );
        let waiting = tokio::spawn({
            let new = new.clone();
            async move { new.increment(bucket("a", ""), "n", 1).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the new owner waited for the file");
        old.increment(b, "n", 1).await.unwrap();
        assert!(old.release(std::time::Duration::from_secs(5)).await);
        let err = old.increment(b, "n", 1).await.unwrap_err();
        assert!(
            err.to_string().contains("moved to the new meshd process"),
            "{err}"
        );
        assert_eq!(waiting.await.unwrap().unwrap(), 7);
        assert_eq!(new.get(b, "n").await.unwrap().unwrap(), b"7");
    }

    #[tokio::test]
    async fn a_store_never_released_fails_calls_after_their_wait() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let _old = KvStore::open_redb(&path, KvLimits::default()).unwrap();
        let new = KvStore::open_redb_when_free(
            &path,
            KvLimits::default(),
            std::time::Duration::from_millis(100),
        );
        let err = new.get(bucket("a", ""), "n").await.unwrap_err();
        assert!(
            err.to_string()
                .contains("still held by the previous meshd process"),
            "{err}"
        );
    }

    async fn limits_and_quota_are_enforced_with_clear_errors(kind: Kind) {
        let limits = KvLimits {
            max_key: 4,
            max_value: 8,
            quota: 2 * ENTRY_OVERHEAD + 20,
        };
        let (kv, _guard) = open(kind, limits).await;
        // Each entry below is charged 64 + 1 (app "a") + 0 (bucket "") + its
        // key and value: k1 = 12345678 is 75 bytes.
        let b = bucket("a", "");
        assert!(matches!(
            kv.set(b, "toolong", b"v").await,
            Err(KvError::KeyTooLarge { .. })
        ));
        assert!(matches!(
            kv.set(b, "k", b"123456789").await,
            Err(KvError::ValueTooLarge { .. })
        ));
        kv.set(b, "k1", b"123456").await.unwrap(); // 73 bytes
        kv.set(b, "k2", b"123456").await.unwrap(); // 146 of 148
        let err = kv.set(b, "k3", b"").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "quota exceeded: the app may store 148 bytes"
        );
        // Overwriting with something smaller, or deleting, frees room.
        kv.set(b, "k1", b"1").await.unwrap(); // 141
        kv.delete(b, "k2").await.unwrap(); // 68
        kv.set(b, "k3", b"12345").await.unwrap(); // 140
                                                  // Empty entries are not free: this one would be 65 bytes.
        assert!(matches!(
            kv.set(b, "", b"").await,
            Err(KvError::QuotaExceeded { .. })
        ));
        // Other tenants have their own quota.
        kv.set(bucket("b", ""), "k1", b"12345678").await.unwrap();
    }

    async fn empty_entries_are_charged_so_their_number_is_bounded(kind: Kind) {
        let quota = 10 * (ENTRY_OVERHEAD + 4);
        let limits = KvLimits {
            quota,
            ..KvLimits::default()
        };
        let (kv, _guard) = open(kind, limits).await;
        // App "a", bucket "bb", one-character keys, empty values: 68 bytes
        // each, so ten fit and the eleventh does not.
        let b = bucket("a", "bb");
        for key in "0123456789".chars() {
            kv.set(b, &key.to_string(), b"").await.unwrap();
        }
        assert!(matches!(
            kv.set(b, "x", b"").await,
            Err(KvError::QuotaExceeded { .. })
        ));
    }

    #[test]
    fn a_database_counted_by_the_old_formula_is_recounted_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        redb_store::tests::write_old_format(&path, "a", &[("b", "k", b"v".as_slice())]);
        let usage = redb_store::tests::usage_after_open(&path, "a");
        assert_eq!(usage, charged_size(bucket("a", "b"), "k", 1));
    }

    async fn concurrent_increments_are_exact(kind: Kind) {
        let (kv, _guard) = open(kind, KvLimits::default()).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let kv = kv.clone();
            tasks.spawn(async move {
                for _ in 0..10 {
                    kv.increment(bucket("a", ""), "n", 1).await.unwrap();
                }
            });
        }
        while tasks.join_next().await.is_some() {}
        assert_eq!(kv.get(bucket("a", ""), "n").await.unwrap().unwrap(), b"200");
        kv.set(bucket("a", ""), "text", b"abc").await.unwrap();
        assert!(matches!(
            kv.increment(bucket("a", ""), "text", 1).await,
            Err(KvError::NotANumber { .. })
        ));
    }

    async fn batches_are_bounded(kind: Kind) {
        let (kv, _guard) = open(kind, KvLimits::default()).await;
        let b = bucket("a", "");
        let many = vec!["k".to_string(); MAX_BATCH_KEYS + 1];
        assert!(matches!(
            kv.get_many(b, many.clone()).await,
            Err(KvError::BatchTooLarge(_))
        ));
        assert!(matches!(
            kv.delete_many(b, many.clone()).await,
            Err(KvError::BatchTooLarge(_))
        ));
        let pairs = many.into_iter().map(|k| (k, b"v".to_vec())).collect();
        assert!(matches!(
            kv.set_many(b, pairs).await,
            Err(KvError::BatchTooLarge(_))
        ));
        // The same large value asked for again and again (512 KiB: a NATS
        // server takes at most 1 MiB per message by default).
        let big = 512 << 10;
        kv.set(b, "big", &vec![b'x'; big]).await.unwrap();
        let repeated = vec!["big".to_string(); MAX_BATCH_BYTES / big + 1];
        let err = kv.get_many(b, repeated).await.unwrap_err();
        assert!(err.to_string().contains("would exceed"), "{err}");
    }

    /// Pages through `b` to the end, returning every key in order.
    async fn list_all(kv: &KvStore, b: BucketRef<'_>) -> Vec<String> {
        let mut all = Vec::new();
        let mut cursor = None;
        loop {
            let page = kv.list_keys(b, cursor).await.unwrap();
            assert!(page.keys.len() <= PAGE_SIZE);
            all.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return all,
            }
        }
    }

    async fn fill(kv: &KvStore, b: BucketRef<'_>, keys: &[String]) {
        for chunk in keys.chunks(MAX_BATCH_KEYS) {
            let entries = chunk.iter().map(|k| (k.clone(), b"v".to_vec())).collect();
            kv.set_many(b, entries).await.unwrap();
        }
    }

    /// Neighbours of tenant "a", bucket "b" in every direction the store
    /// orders by: another bucket of the same tenant before and after it,
    /// tenants whose names sort right before and after "a".
    const NEIGHBOURS: [(&str, &str); 5] =
        [("a", ""), ("a", "c"), ("a", "b\0"), ("", "b"), ("a0", "b")];

    /// Checks that paging through bucket ("a", "b") yields exactly its keys,
    /// each once and in order (byte order, or NATS's write order), with
    /// neighbours full of keys all around.
    async fn listing_pages_through_every_key_of_the_bucket_only(kind: Kind) {
        let (kv, _guard) = open(kind, KvLimits::default()).await;
        let kv = &kv;
        let b = bucket("a", "b");
        // Enough for three pages, the last one partial, with keys that sort
        // around page boundaries ("key01000" vs "key01000x").
        let mut keys: Vec<String> = (0..2500).map(|i| format!("key{i:05}")).collect();
        keys.push("key01000x".into());
        keys.push("".into());
        fill(kv, b, &keys).await;
        for (tenant, name) in NEIGHBOURS {
            let theirs: Vec<String> = (0..1500).map(|i| format!("key{i:05}y")).collect();
            fill(kv, bucket(tenant, name), &theirs).await;
        }
        if kind != Kind::Nats {
            keys.sort();
        }
        assert_eq!(list_all(kv, b).await, keys);
        // A cursor of one bucket is no good in another.
        let page = kv.list_keys(b, None).await.unwrap();
        let cursor = page.cursor.expect("more than one page");
        for (tenant, name) in NEIGHBOURS {
            assert_eq!(
                kv.list_keys(bucket(tenant, name), Some(cursor)).await,
                Err(KvError::UnknownCursor)
            );
        }
        assert_eq!(
            kv.list_keys(b, Some(cursor + 1_000_000)).await,
            Err(KvError::UnknownCursor)
        );
        // Keys deleted or added between pages: the next page goes on after
        // the last key seen, neither repeating nor skipping what is left.
        let next = kv.list_keys(b, Some(cursor)).await.unwrap();
        kv.delete(b, &next.keys[0]).await.unwrap();
        kv.set(b, "zzz-added", b"v").await.unwrap();
        let again = kv.list_keys(b, Some(cursor)).await.unwrap();
        assert_eq!(again.keys[..next.keys.len() - 1], next.keys[1..]);
        let rest = list_all(kv, b).await;
        assert_eq!(rest.last().map(String::as_str), Some("zzz-added"));
        assert_eq!(rest.len(), keys.len());
    }

    #[tokio::test]
    async fn redis_entries_written_before_the_index_are_listed() {
        let redis = tests_redis::Redis::start();
        // What an older meshd left: entries, no indexes.
        let client = redis::Client::open(redis.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        for key in ["k1", "k2"] {
            let _: () = redis::AsyncCommands::set(&mut conn, format!("meshd:a:1:b:{key}"), "v")
                .await
                .unwrap();
        }
        let kv = KvStore::connect_redis(&redis.url(), &RedisTls::default(), KvLimits::default())
            .await
            .unwrap();
        assert_eq!(list_all(&kv, bucket("a", "b")).await, ["k1", "k2"]);
    }
}

/// A redis-server of a test's own, on a free loopback port.
#[cfg(test)]
mod tests_redis {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    pub(crate) struct Redis {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Redis {
        pub(crate) fn start() -> Redis {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let dir = tempfile::tempdir().expect("a temporary directory");
            let child = Command::new("redis-server")
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
                .spawn()
                .expect("redis-server is installed (.ci/run installs it)");
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    started.elapsed() < Duration::from_secs(20),
                    "redis-server did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            Redis {
                child,
                port,
                _dir: dir,
            }
        }

        pub(crate) fn url(&self) -> String {
            format!("redis://127.0.0.1:{}/", self.port)
        }
    }

    impl Drop for Redis {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
