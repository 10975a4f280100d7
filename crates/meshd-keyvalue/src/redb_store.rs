//! The embedded backend: one redb file, every write a durable transaction.

use crate::{parse_counter, BucketRef, KeyPage, KvError, PAGE_SIZE};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// (tenant, bucket, key) → value.
const ENTRIES: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("entries");
/// tenant → bytes stored (keys plus values).
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");

#[derive(Clone)]
pub(crate) struct RedbStore {
    db: Arc<Database>,
}

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// Bytes `tenant` stores now, from the usage table.
fn used_bytes(usage: &impl ReadableTable<&'static str, u64>, tenant: &str) -> Result<u64, KvError> {
    Ok(usage.get(tenant).map_err(backend)?.map_or(0, |v| v.value()))
}

fn entry_size(key: &str, value_len: usize) -> u64 {
    (key.len() + value_len) as u64
}

impl RedbStore {
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create data directory {}: {e}", dir.display())
            })?;
        }
        let db = Database::create(path).map_err(|e| {
            anyhow::anyhow!("cannot open key-value database {}: {e}", path.display())
        })?;
        // Create the tables up front so readers never meet a missing table.
        let txn = db.begin_write()?;
        txn.open_table(ENTRIES)?;
        txn.open_table(USAGE)?;
        txn.commit()?;
        Ok(RedbStore { db: Arc::new(db) })
    }

    /// Runs blocking database work off the async worker threads.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let db = self.db.clone();
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
                for (key, value) in &entries {
                    let id = (tenant.as_str(), bucket.as_str(), key.as_str());
                    let old = table
                        .get(id)
                        .map_err(backend)?
                        .map_or(0, |v| entry_size(key, v.value().len()));
                    used = used - old.min(used) + entry_size(key, value.len());
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
                        .map_or(0, |v| entry_size(key, v.value().len()));
                    used -= removed.min(used);
                }
                usage.insert(tenant.as_str(), used).map_err(backend)?;
            }
            txn.commit().map_err(backend)
        })
        .await
    }

    pub(crate) async fn list_keys(
        &self,
        b: BucketRef<'_>,
        cursor: u64,
    ) -> Result<KeyPage, KvError> {
        let (tenant, bucket) = (b.tenant.to_owned(), b.bucket.to_owned());
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(backend)?;
            let table = txn.open_table(ENTRIES).map_err(backend)?;
            let start = (tenant.as_str(), bucket.as_str(), "");
            let mut keys = Vec::new();
            let mut more = false;
            for entry in table.range(start..).map_err(backend)?.skip(cursor as usize) {
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
            let cursor = more.then(|| cursor + keys.len() as u64);
            Ok(KeyPage { keys, cursor })
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
                        entry_size(&key, v.value().len()),
                    ),
                    None => (0, 0),
                };
                new = old
                    .checked_add(delta)
                    .ok_or_else(|| KvError::Overflow { key: key.clone() })?;
                let text = new.to_string();
                let used = used_bytes(&usage, &tenant)?;
                let used = used - old_size.min(used) + entry_size(&key, text.len());
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
