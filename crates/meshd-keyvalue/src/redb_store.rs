//! The embedded backend: one redb file, every write a durable transaction.

use crate::{charged_size, parse_counter, BucketRef, KvError, PAGE_SIZE};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// (tenant, bucket, key) → value.
const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
/// tenant → bytes stored, as [`charged_size`] counts them.
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
/// Facts about the file itself: `usage-formula` → which way USAGE counts.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The way USAGE counts now: 2 = [`charged_size`]. Files written before it
/// (no META table) counted keys and values only, and are recounted on open.
const USAGE_FORMULA: u64 = 2;

/// The redb backend. The file is open in one process at a time (redb
/// locks it), so across a graceful restart of meshd the store moves from
/// the old process to the new one: the old [`RedbStore::release`]s it once
/// its last request has finished, and the new one, started with
/// [`RedbStore::open_when_free`], opens it as soon as the lock is free.
/// Calls made meanwhile wait for it, each at most its `wait`.
#[derive(Clone)]
pub(crate) struct RedbStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    state: watch::Sender<DbState>,
    /// How long a call waits for a store that is not open yet.
    wait: Duration,
}

/// Where the database file is, for this process.
#[derive(Clone)]
enum DbState {
    /// Still held by the previous meshd process (graceful restart).
    Waiting,
    Open(Arc<Database>),
    /// Handed on to the next meshd process.
    Released,
}

/// How often a new process tries again to open a file the previous one
/// still holds.
const REOPEN_INTERVAL: Duration = Duration::from_millis(10);

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// Bytes `tenant` stores now, from the usage table.
fn used_bytes(usage: &impl ReadableTable<&'static str, u64>, tenant: &str) -> Result<u64, KvError> {
    Ok(usage.get(tenant).map_err(backend)?.map_or(0, |v| v.value()))
}

fn entry_size(tenant: &str, bucket: &str, key: &str, value_len: usize) -> u64 {
    charged_size(BucketRef { tenant, bucket }, key, value_len)
}

/// Recounts every tenant's usage from its entries, if the file's usage was
/// counted another way (a file from an older meshd). Returns how many
/// tenants were recounted, or `None` if nothing needed it.
fn recount_usage_if_needed(txn: &WriteTransaction) -> Result<Option<usize>, redb::Error> {
    let mut meta = txn.open_table(META)?;
    if meta.get("usage-formula")?.map(|v| v.value()) == Some(USAGE_FORMULA) {
        return Ok(None);
    }
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let entries = txn.open_table(ENTRIES)?;
    for entry in entries.iter()? {
        let (id, value) = entry?;
        let (tenant, bucket, key) = id.value();
        *totals.entry(tenant.to_owned()).or_default() +=
            entry_size(tenant, bucket, key, value.value().len());
    }
    let mut usage = txn.open_table(USAGE)?;
    usage.retain(|_, _| false)?;
    for (tenant, bytes) in &totals {
        usage.insert(tenant.as_str(), bytes)?;
    }
    meta.insert("usage-formula", USAGE_FORMULA)?;
    Ok(Some(totals.len()))
}

/// Creates the data directory and opens (or creates) the file, failing at
/// once if another process holds it.
fn open_database(path: &Path) -> anyhow::Result<Database> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create data directory {}: {e}", dir.display()))?;
    }
    let db = Database::create(path)
        .map_err(|e| anyhow::anyhow!("cannot open key-value database {}: {e}", path.display()))?;
    // Create the tables up front so readers never meet a missing table.
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(USAGE)?;
    // A new, empty file is "recounted" too (to record the formula);
    // only a file with data is worth a line.
    if let Some(tenants @ 1..) = recount_usage_if_needed(&txn)? {
        tracing::info!(
            path = %path.display(),
            tenants,
            "key-value usage counted (each entry: key, value, bucket and app names, plus 64 bytes)"
        );
    }
    txn.commit()?;
    Ok(db)
}

/// Whether opening failed only because another process holds the file.
fn held_elsewhere(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<redb::DatabaseError>(),
            Some(redb::DatabaseError::DatabaseAlreadyOpen)
        )
    }) || e.to_string().contains("already open")
}

impl RedbStore {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let db = open_database(path)?;
        Ok(Self::with_state(
            path,
            DbState::Open(Arc::new(db)),
            Duration::ZERO,
        ))
    }

    fn with_state(path: &Path, state: DbState, wait: Duration) -> Self {
        RedbStore {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                state: watch::Sender::new(state),
                wait,
            }),
        }
    }

    /// A store whose file the previous meshd process still holds: it is
    /// opened in the background as soon as that process releases it (or
    /// exits). Until then each call waits, at most `wait`. Must be called
    /// inside the tokio runtime.
    pub(crate) fn open_when_free(path: &Path, wait: Duration) -> Self {
        let store = Self::with_state(path, DbState::Waiting, wait);
        let shared = store.shared.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut reported = false;
            loop {
                let path = shared.path.clone();
                let opened = tokio::task::spawn_blocking(move || open_database(&path))
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|opened| opened);
                match opened {
                    Ok(db) => {
                        tracing::info!(
                            path = %shared.path.display(),
                            waited = ?started.elapsed(),
                            "key-value store opened (released by the previous meshd process)"
                        );
                        shared.state.send_replace(DbState::Open(Arc::new(db)));
                        return;
                    }
                    Err(e) if held_elsewhere(&e) => {}
                    Err(e) if !reported => {
                        reported = true;
                        tracing::error!(
                            error = format!("{e:#}"),
                            "cannot open the key-value store after a graceful restart; trying again"
                        );
                    }
                    Err(_) => {}
                }
                tokio::time::sleep(REOPEN_INTERVAL).await;
            }
        });
        store
    }

    /// Closes the file so that the next meshd process can open it: waits
    /// for the calls in progress (at most `timeout`), then drops the
    /// database. Every later call fails. Returns whether the file closed.
    pub(crate) async fn release(&self, timeout: Duration) -> bool {
        let DbState::Open(db) = self.shared.state.send_replace(DbState::Released) else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        // Each call in progress holds a clone until its transaction ends.
        while Arc::strong_count(&db) > 1 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(db);
        true
    }

    /// The open database, waiting for it while the previous process still
    /// holds the file.
    async fn database(&self) -> Result<Arc<Database>, KvError> {
        if let DbState::Open(db) = &*self.shared.state.borrow() {
            return Ok(db.clone());
        }
        let mut state = self.shared.state.subscribe();
        let ready = state.wait_for(|state| !matches!(state, DbState::Waiting));
        let state = match tokio::time::timeout(self.shared.wait, ready).await {
            Ok(Ok(state)) => state.clone(),
            Ok(Err(_)) | Err(_) => DbState::Waiting,
        };
        match state {
            DbState::Open(db) => Ok(db),
            DbState::Waiting => Err(KvError::Backend(format!(
                "the key-value store is still held by the previous meshd process (graceful restart) after {:?}; try again",
                self.shared.wait
            ))),
            DbState::Released => Err(KvError::Backend(
                "the key-value store has moved to the new meshd process (graceful restart); try again".to_owned(),
            )),
        }
    }

    /// Runs blocking database work off the async worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = self.database().await?;
        tokio::task::spawn_blocking(move || work(&db))
            .await
            .map_err(backend)?
    }

    pub(crate) async fn get(
        &self,
        b: BucketRef<'_>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let (tenant, bucket, key) = (b.tenant.to_owned(), b.bucket.to_owned(), key.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let value = table
                .get((tenant.as_str(), bucket.as_str(), key.as_str()))
                .map_err(backend)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
        .await
    }

    pub(crate) async fn set_many(
        &self,
        b: BucketRef<'_>,
        entries: Vec<(String, Vec<u8>)>,
        quota: u64,
    ) -> Result<(), KvError> {
        let (tenant, bucket) = (b.tenant.to_owned(), b.bucket.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                let mut usage = txn.open_table(USAGE).map_err(backend)?;
                let mut used = used_bytes(&usage, &tenant)?;
                let size = |key: &str, len: usize| entry_size(&tenant, &bucket, key, len);
                for (key, value) in &entries {
                    let id = (tenant.as_str(), bucket.as_str(), key.as_str());
                    let old = table
                        .get(id)
                        .map_err(backend)?
                        .map_or(0, |v| size(key, v.value().len()));
                    used = used - old.min(used) + size(key, value.len());
                    if used > quota {
                        // Dropping the transaction aborts it: nothing is written.
                        return Err(KvError::QuotaExceeded { quota });
                    }
                    table.insert(id, value.as_slice()).map_err(backend)?;
                }
                usage.insert(tenant.as_str(), used).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    pub(crate) async fn delete_many(
        &self,
        b: BucketRef<'_>,
        keys: Vec<String>,
    ) -> Result<(), KvError> {
        let (tenant, bucket) = (b.tenant.to_owned(), b.bucket.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                let mut usage = txn.open_table(USAGE).map_err(backend)?;
                let mut used = used_bytes(&usage, &tenant)?;
                for key in &keys {
                    let removed = table
                        .remove((tenant.as_str(), bucket.as_str(), key.as_str()))
                        .map_err(backend)?
                        .map_or(0, |v| entry_size(&tenant, &bucket, key, v.value().len()));
                    used -= removed.min(used);
                }
                usage.insert(tenant.as_str(), used).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    /// Up to [`PAGE_SIZE`] keys of the bucket after `after` (from its
    /// first key without one), and whether more follow. The range read
    /// starts at the bucket's first key (or right after `after`) and stops
    /// at the first row that is not the bucket's: it never walks another
    /// bucket's or tenant's rows beyond that one.
    pub(crate) async fn list_keys(
        &self,
        b: BucketRef<'_>,
        after: Option<&str>,
    ) -> Result<(Vec<String>, bool), KvError> {
        let (tenant, bucket) = (b.tenant.to_owned(), b.bucket.to_owned());
        let after = after.map(str::to_owned);
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let start = match &after {
                Some(key) => Bound::Excluded((tenant.as_str(), bucket.as_str(), key.as_str())),
                None => Bound::Included((tenant.as_str(), bucket.as_str(), "")),
            };
            let range = table
                .range::<(&str, &str, &str)>((start, Bound::Unbounded))
                .map_err(backend)?;
            let mut keys = Vec::new();
            let mut more = false;
            for entry in range {
                let (id, _) = entry.map_err(backend)?;
                let (t, bk, key) = id.value();
                if t != tenant || bk != bucket {
                    break;
                }
                if keys.len() == PAGE_SIZE {
                    more = true;
                    break;
                }
                keys.push(key.to_owned());
            }
            Ok((keys, more))
        })
        .await
    }

    pub(crate) async fn increment(
        &self,
        b: BucketRef<'_>,
        key: &str,
        delta: u64,
        quota: u64,
    ) -> Result<u64, KvError> {
        let (tenant, bucket, key) = (b.tenant.to_owned(), b.bucket.to_owned(), key.to_owned());
        // redb serialises write transactions, so read-modify-write inside one
        // is atomic: concurrent increments never lose an update.
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(backend)?;
            let new;
            {
                let mut table = txn.open_table(ENTRIES).map_err(backend)?;
                let mut usage = txn.open_table(USAGE).map_err(backend)?;
                let id = (tenant.as_str(), bucket.as_str(), key.as_str());
                let (old, old_size) = match table.get(id).map_err(backend)? {
                    Some(v) => (
                        parse_counter(&key, v.value())?,
                        entry_size(&tenant, &bucket, &key, v.value().len()),
                    ),
                    None => (0, 0),
                };
                new = old
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Overflow { key: key.clone() })?;
                let text = new.to_string();
                let used = used_bytes(&usage, &tenant)?;
                let used =
                    used - old_size.min(used) + entry_size(&tenant, &bucket, &key, text.len());
                if used > quota {
                    return Err(KvError::QuotaExceeded { quota });
                }
                table.insert(id, text.as_bytes()).map_err(backend)?;
                usage.insert(tenant.as_str(), used).map_err(backend)?;
            }
            txn.commit().map_err(backend)?;
            Ok(new)
        })
        .await
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a database as meshd wrote it before META: entries, and usage
    /// counting keys and values only.
    pub(crate) fn write_old_format(path: &Path, tenant: &str, entries: &[(&str, &str, &[u8])]) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(ENTRIES).unwrap();
            let mut usage = txn.open_table(USAGE).unwrap();
            let mut used = 0;
            for (bucket, key, value) in entries {
                table.insert((tenant, *bucket, *key), *value).unwrap();
                used += (key.len() + value.len()) as u64;
            }
            usage.insert(tenant, used).unwrap();
        }
        txn.commit().unwrap();
    }

    /// Opens the database as meshd does and reads `tenant`'s usage.
    pub(crate) fn usage_after_open(path: &Path, tenant: &str) -> u64 {
        let db = open_database(path).unwrap();
        let txn = db.begin_read().unwrap();
        let usage = txn.open_table(USAGE).unwrap();
        used_bytes(&usage, tenant).unwrap()
    }
}
