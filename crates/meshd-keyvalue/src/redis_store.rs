//! The shared backend: a Redis server, so several meshd nodes see the same
//! tenant state. Multi-step operations run as Lua scripts, which Redis
//! executes atomically.

use crate::{charged_size, BucketRef, KvError, PAGE_SIZE};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, IntoConnectionInfo, Script};
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

/// TLS settings for Redis beyond what a `rediss://` URL does alone (which
/// verifies the server against the system's trusted roots and shows no
/// client certificate).
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    /// A PEM CA to trust for the server's certificate, instead of the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for servers that ask for one
    /// (`tls-auth-clients`); needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl RedisTls {
    /// The files' contents for the redis client, or `None` if none is set.
    fn certificates(&self) -> anyhow::Result<Option<redis::TlsCertificates>> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("cannot read {} ([keyvalue] {what}): {e}", path.display())
            })
        };
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert, "client_cert_file")?,
                client_key: read(key, "client_key_file")?,
            }),
            _ => anyhow::bail!(
                "[keyvalue] client_cert_file and client_key_file go together: set both or neither"
            ),
        };
        let root_cert = self
            .ca_file
            .as_ref()
            .map(|path| read(path, "ca_file"))
            .transpose()?;
        if client_tls.is_none() && root_cert.is_none() {
            return Ok(None);
        }
        Ok(Some(redis::TlsCertificates {
            client_tls,
            root_cert,
        }))
    }
}

#[derive(Clone)]
pub(crate) struct RedisStore {
    conn: ConnectionManager,
    _client: Arc<redis::Client>,
}

// Listing: every bucket has an index, a sorted set of its keys (all with
// score 0, so Redis orders them by their bytes), kept by the scripts below
// in the same atomic step as the entry. A page is one ZRANGEBYLEX after the
// key the previous page ended at: it touches only the caller's bucket. (SCAN
// walked the whole keyspace, every tenant's keys, a page at a time.)
//
// Quota accounting: an entry is charged `charged_size` (lib.rs). The scripts
// get the part that does not depend on the value (overhead, names, key) as
// `fixed`, and add the value's length. Usage never goes below 0: counts left
// by an older meshd (keys and values only) would otherwise underflow when
// such an entry is removed.

/// SET with quota accounting. KEYS: entry, usage, index. ARGV: value,
/// fixed, quota, key. Returns -1 when over quota.
static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local fixed = tonumber(ARGV[2])
        local old = 0
        if redis.call('EXISTS', KEYS[1]) == 1 then
            old = fixed + redis.call('STRLEN', KEYS[1])
        end
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        local new_used = math.max(0, used - old) + fixed + string.len(ARGV[1])
        if new_used > tonumber(ARGV[3]) then return -1 end
        redis.call('SET', KEYS[1], ARGV[1])
        redis.call('SET', KEYS[2], new_used)
        redis.call('ZADD', KEYS[3], 0, ARGV[4])
        return new_used
        ",
    )
});

/// DEL with quota accounting. KEYS: entry, usage, index. ARGV: fixed, key.
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then
            local size = tonumber(ARGV[1]) + redis.call('STRLEN', KEYS[1])
            redis.call('DEL', KEYS[1])
            local used = tonumber(redis.call('GET', KEYS[2]) or '0')
            redis.call('SET', KEYS[2], math.max(0, used - size))
        end
        redis.call('ZREM', KEYS[3], ARGV[2])
        return 0
        ",
    )
});

/// Increment of a decimal counter with quota accounting. KEYS: entry, usage,
/// index. ARGV: delta, fixed, quota, key. Errors: 'nan', 'overflow', 'quota'.
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local fixed = tonumber(ARGV[2])
        local current = redis.call('GET', KEYS[1])
        local old = 0
        local value = 0
        if current then
            if not string.match(current, '^%d+$') then return redis.error_reply('nan') end
            value = tonumber(current)
            old = fixed + string.len(current)
        end
        local new = value + tonumber(ARGV[1])
        if new >= 9007199254740992 then return redis.error_reply('overflow') end
        local text = string.format('%d', new)
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        local new_used = math.max(0, used - old) + fixed + string.len(text)
        if new_used > tonumber(ARGV[3]) then return redis.error_reply('quota') end
        redis.call('SET', KEYS[1], text)
        redis.call('SET', KEYS[2], new_used)
        redis.call('ZADD', KEYS[3], 0, ARGV[4])
        return text
        ",
    )
});

/// Adds an entry written by an older meshd (before the indexes) to its
/// bucket's index, if it still exists. KEYS: entry, index. ARGV: key.
static INDEX_EXISTING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('EXISTS', KEYS[1]) == 1 then
            redis.call('ZADD', KEYS[2], 0, ARGV[1])
        end
        return 0
        ",
    )
});

/// Set once every entry is in its bucket's index.
const INDEXED_MARKER: &str = "meshd-meta:listing-index";

fn backend(e: impl std::fmt::Display) -> KvError {
    KvError::Backend(e.to_string())
}

/// `meshd:{tenant}:{bucket length}:{bucket}:` — the length keeps bucket and
/// key apart whatever characters they hold.
fn prefix(b: BucketRef<'_>) -> String {
    format!("meshd:{}:{}:{}:", b.tenant, b.bucket.len(), b.bucket)
}

/// The sorted set of the bucket's keys.
fn index_key(b: BucketRef<'_>) -> String {
    format!("meshd-index:{}:{}:{}", b.tenant, b.bucket.len(), b.bucket)
}

/// The bucket and key of an entry's Redis key (the inverse of [`prefix`]).
fn parse_entry_key(full: &str) -> Option<(BucketRef<'_>, &str)> {
    let rest = full.strip_prefix("meshd:")?;
    let (tenant, rest) = rest.split_once(':')?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let bucket = rest.get(..len)?;
    let key = rest.get(len..)?.strip_prefix(':')?;
    Some((BucketRef { tenant, bucket }, key))
}

fn usage_key(tenant: &str) -> String {
    format!("meshd-usage:{tenant}")
}

impl RedisStore {
    pub(crate) async fn connect(url: &str, tls: &RedisTls) -> anyhow::Result<Self> {
        // The URL may hold a password: errors name only its address.
        let info = url
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("invalid Redis URL in [keyvalue] url: {e}"))?;
        let addr = info.addr().to_string();
        let client = match tls.certificates()? {
            None => redis::Client::open(info),
            Some(certificates) => {
                if !url.starts_with("rediss://") {
                    anyhow::bail!(
                        "[keyvalue] ca_file, client_cert_file and client_key_file need a rediss:// url (TLS); the url is not one"
                    );
                }
                redis::Client::build_with_tls(info, certificates)
            }
        }
        .map_err(|e| anyhow::anyhow!("cannot set up the Redis client for {addr}: {e}"))?;
        let conn = client
            .get_connection_manager()
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to Redis at {addr}: {e}"))?;
        let store = RedisStore {
            conn,
            _client: Arc::new(client),
        };
        store
            .index_existing_entries()
            .await
            .map_err(|e| anyhow::anyhow!("cannot index the keys stored in Redis at {addr}: {e}"))?;
        Ok(store)
    }

    /// Puts the entries an older meshd wrote (without indexes) into their
    /// buckets' indexes, once per Redis database: a single SCAN, at start.
    async fn index_existing_entries(&self) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let done: Option<String> = conn.get(INDEXED_MARKER).await.map_err(backend)?;
        if done.is_some() {
            return Ok(());
        }
        let mut cursor = 0u64;
        let mut indexed = 0usize;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("meshd:*")
                .arg("COUNT")
                .arg(PAGE_SIZE)
                .query_async(&mut conn)
                .await
                .map_err(backend)?;
            for full in &keys {
                if let Some((b, key)) = parse_entry_key(full) {
                    let _: i64 = INDEX_EXISTING
                        .key(full)
                        .key(index_key(b))
                        .arg(key)
                        .invoke_async(&mut conn)
                        .await
                        .map_err(backend)?;
                    indexed += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        let _: () = conn.set(INDEXED_MARKER, "1").await.map_err(backend)?;
        if indexed > 0 {
            tracing::info!(entries = indexed, "key-value entries indexed for listing");
        }
        Ok(())
    }

    pub(crate) async fn get(
        &self,
        b: BucketRef<'_>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let mut conn = self.conn.clone();
        conn.get(format!("{}{key}", prefix(b)))
            .await
            .map_err(backend)
    }

    pub(crate) async fn set(
        &self,
        b: BucketRef<'_>,
        key: &str,
        value: &[u8],
        quota: u64,
    ) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let used: i64 = SET
            .key(format!("{}{key}", prefix(b)))
            .key(usage_key(b.tenant))
            .key(index_key(b))
            .arg(value)
            .arg(charged_size(b, key, 0))
            .arg(quota)
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        if used < 0 {
            return Err(KvError::QuotaExceeded { quota });
        }
        Ok(())
    }

    pub(crate) async fn delete(&self, b: BucketRef<'_>, key: &str) -> Result<(), KvError> {
        let mut conn = self.conn.clone();
        let _: i64 = DELETE
            .key(format!("{}{key}", prefix(b)))
            .key(usage_key(b.tenant))
            .key(index_key(b))
            .arg(charged_size(b, key, 0))
            .arg(key)
            .invoke_async(&mut conn)
            .await
            .map_err(backend)?;
        Ok(())
    }

    pub(crate) async fn increment(
        &self,
        b: BucketRef<'_>,
        key: &str,
        delta: u64,
        quota: u64,
    ) -> Result<u64, KvError> {
        let mut conn = self.conn.clone();
        let result: Result<String, _> = INCREMENT
            .key(format!("{}{key}", prefix(b)))
            .key(usage_key(b.tenant))
            .key(index_key(b))
            .arg(delta)
            .arg(charged_size(b, key, 0))
            .arg(quota)
            .arg(key)
            .invoke_async(&mut conn)
            .await;
        match result {
            Ok(text) => text.parse().map_err(backend),
            Err(e) => Err(match e.to_string() {
                m if m.contains("nan") => KvError::NotANumber {
                    key: key.to_owned(),
                },
                m if m.contains("overflow") => KvError::Overflow {
                    key: key.to_owned(),
                },
                m if m.contains("quota") => KvError::QuotaExceeded { quota },
                _ => backend(e),
            }),
        }
    }

    /// Up to [`PAGE_SIZE`] keys of the bucket after `after` (from its
    /// first key without one), in byte order, and whether more follow: one
    /// ZRANGEBYLEX on the bucket's own index.
    pub(crate) async fn list_keys(
        &self,
        b: BucketRef<'_>,
        after: Option<&str>,
    ) -> Result<(Vec<String>, bool), KvError> {
        let mut conn = self.conn.clone();
        let min = match after {
            Some(key) => format!("({key}"),
            None => "-".to_owned(),
        };
        let mut keys: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(index_key(b))
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(PAGE_SIZE + 1)
            .query_async(&mut conn)
            .await
            .map_err(backend)?;
        let more = keys.len() > PAGE_SIZE;
        keys.truncate(PAGE_SIZE);
        Ok((keys, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_parse_back_into_bucket_and_key() {
        let b = BucketRef {
            tenant: "shop",
            bucket: "a:b",
        };
        let full = format!("{}k:1", prefix(b));
        let (parsed, key) = parse_entry_key(&full).expect("parses");
        assert_eq!((parsed.tenant, parsed.bucket, key), ("shop", "a:b", "k:1"));
        assert!(parse_entry_key("meshd-usage:shop").is_none());
        assert!(parse_entry_key("meshd:shop:9:ab:k").is_none());
    }
}
