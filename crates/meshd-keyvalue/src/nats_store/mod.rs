//! The shared backend on NATS JetStream: one KV bucket holds every tenant's
//! entries and each tenant's usage counter (see `keys.rs` for the layout),
//! so several meshd nodes see one store per tenant through the engine the
//! mesh already uses for its desired state.
//!
//! - **Reads go through the stream leader.** The bucket's stream is created
//!   with `allow_direct: false`, so `get` is a `STREAM.MSG.GET` answered by
//!   the leader, which has applied every acknowledged write: a node reads
//!   its own writes and every write another node had acknowledged. (Direct
//!   gets may be answered by a replica that has not applied the write yet.)
//! - **Every write is a compare-and-swap** on the key's last revision
//!   (`Nats-Expected-Last-Subject-Sequence`), retried on conflict at most
//!   [`MAX_CAS_ATTEMPTS`] times with a short random backoff: increments are
//!   exact across nodes, and a key fought over too long fails with
//!   [`KvError::Contended`]. Writers of one key on one node take turns
//!   (`Turns`), so the compare-and-swap settles only between nodes: fifty
//!   requests hammering one counter on a node are one writer, not fifty.
//! - **Quota.** A tenant's usage is a counter entry updated by CAS too: it
//!   goes up before an entry grows and down after one shrinks or goes away,
//!   so it never counts less than the tenant stores. A crash (or a lost
//!   connection) between the two writes leaves it counting more: the
//!   difference is at most the growth of the writes in flight, and it does
//!   not go away by itself.
//! - **Deletes remove the entry's message** (by its revision, so a newer
//!   write is never removed) instead of writing a KV delete marker: markers
//!   would pile up uncharged, one per key ever deleted.
//! - **Connection.** The client connects in the background and reconnects
//!   forever: meshd starts while NATS is down, apps that do not use
//!   key-value serve, and key-value calls fail at once with "not connected
//!   to NATS at …" until the connection is back.

mod keys;

use crate::{charged_size, parse_counter, BucketRef, KvError, PAGE_SIZE};
use async_nats::connection::State;
use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{ConnectOptions, ServerAddr};
use bytes::Bytes;
use futures::StreamExt as _;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How meshd reaches NATS for key-value, and how the bucket is replicated.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// One or more server URLs, comma-separated:
    /// `nats://host:port[,nats://host2:port2]` (`tls://` for TLS).
    pub url: String,
    /// A NATS credentials file (JWT and NKey seed), for servers that ask
    /// for one.
    pub credentials_file: Option<PathBuf>,
    /// A PEM CA to trust for the servers' certificates; turns TLS on.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for servers that verify clients; needs
    /// `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Copies JetStream keeps of the bucket (1 to 5; 3 in a three-server
    /// cluster survives one server's loss). 0 means 1.
    pub replicas: usize,
}

/// Most attempts of one compare-and-swap write before it fails with
/// [`KvError::Contended`].
pub const MAX_CAS_ATTEMPTS: u32 = 64;

/// Room left for a message's headers within the NATS server's
/// `max_payload` and the stream's message size limit.
const HEADER_ROOM: usize = 1024;

/// Longest wait for the next key of a listing page.
const LIST_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct NatsStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// `host:port` of each server, for errors (URLs may hold passwords).
    servers: String,
    replicas: usize,
    max_value: usize,
    /// Opened on first use once connected (NATS may be down at start).
    bucket: tokio::sync::OnceCell<kv::Store>,
    /// Turns of this node's writers of each entry.
    entry_turns: Turns,
    /// Turns of this node's writers of each usage counter. Taken after an
    /// entry's turn, never before one: no two writers wait on each other.
    usage_turns: Turns,
}

/// Writers of the same key on this node take turns: one lock per stripe of
/// keys (by hash), so memory stays fixed whatever the number of keys, and
/// keys of different stripes are written in parallel.
struct Turns {
    stripes: Vec<tokio::sync::Mutex<()>>,
}

impl Turns {
    /// Stripes per kind of key.
    const STRIPES: usize = 256;

    fn new() -> Turns {
        Turns {
            stripes: (0..Self::STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
        }
    }

    /// Waits for this node's turn to write `kv_key`.
    async fn take(&self, kv_key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash as _, Hasher as _};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        kv_key.hash(&mut hasher);
        let stripe = (hasher.finish() % Self::STRIPES as u64) as usize;
        self.stripes[stripe].lock().await
    }
}

impl NatsStore {
    /// Sets up the client (which connects in the background) and opens
    /// the bucket as soon as it is connected, logging the outcome.
    pub(crate) async fn connect(options: &NatsOptions, max_value: usize) -> anyhow::Result<Self> {
        let addrs = parse_urls(&options.url)?;
        let servers = addrs
            .iter()
            .map(|a| format!("{}:{}", a.host(), a.port()))
            .collect::<Vec<_>>()
            .join(",");
        if options.replicas > 5 {
            anyhow::bail!(
                "[keyvalue] replicas is {}; JetStream keeps 1 to 5",
                options.replicas
            );
        }
        let client = connect_options(options, servers.clone())
            .await?
            .connect(addrs)
            .await
            .map_err(|e| anyhow::anyhow!("cannot set up the NATS client for {servers}: {e}"))?;
        let store = NatsStore {
            inner: Arc::new(Inner {
                jetstream: jetstream::new(client.clone()),
                client,
                servers,
                replicas: options.replicas.max(1),
                max_value,
                bucket: tokio::sync::OnceCell::new(),
                entry_turns: Turns::new(),
                usage_turns: Turns::new(),
            }),
        };
        tokio::spawn(store.clone().open_when_connected());
        Ok(store)
    }

    /// Opens the bucket once the client is connected, so a bad bucket
    /// setting (replicas on a single server, say) shows in the log at start.
    async fn open_when_connected(self) {
        while self.inner.client.connection_state() != State::Connected {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match self.bucket().await {
            Ok(_) => tracing::info!(
                servers = %self.inner.servers,
                bucket = keys::BUCKET,
                replicas = self.inner.replicas,
                "key-value bucket ready in NATS JetStream"
            ),
            Err(e) => tracing::warn!("key-value bucket not ready: {e}"),
        }
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> KvError {
        KvError::Backend(format!("NATS at {}: {what}: {e}", self.inner.servers))
    }

    /// The bucket, opened (and created or updated) on first use.
    async fn bucket(&self) -> Result<&kv::Store, KvError> {
        if self.inner.client.connection_state() != State::Connected {
            return Err(KvError::Backend(format!(
                "not connected to NATS at {}; meshd keeps reconnecting",
                self.inner.servers
            )));
        }
        self.inner
            .bucket
            .get_or_try_init(|| self.open_bucket())
            .await
    }

    /// What the bucket's stream must be: the settings of a JetStream KV
    /// bucket with one value per key, except that reads go through the
    /// leader (`allow_direct: false`) and messages may be deleted.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: format!("KV_{}", keys::BUCKET),
            description: Some("meshd: every tenant's wasi:keyvalue entries and usage".into()),
            subjects: vec![format!("$KV.{}.>", keys::BUCKET)],
            max_messages_per_subject: 1,
            max_message_size: i32::try_from(self.inner.max_value + HEADER_ROOM).unwrap_or(i32::MAX),
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: false,
            allow_direct: false,
            num_replicas: self.inner.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    async fn open_bucket(&self) -> Result<kv::Store, KvError> {
        let version = self.inner.client.server_info().version;
        if self.inner.replicas > 1 && !replicated_cas_is_atomic(&version) {
            return Err(self.fail(
                "cannot use the key-value bucket",
                format!(
                    "replicas = {} needs nats-server 2.9.21 or newer, where compare-and-swap on a \
                     replicated stream is atomic (nats-server issue #4320: before it, two nodes' \
                     increments can both succeed from the same value); this server is {version}: \
                     set replicas = 1 or upgrade the servers",
                    self.inner.replicas
                ),
            ));
        }
        let wanted = self.stream_config();
        let js = &self.inner.jetstream;
        match js.get_stream(&wanted.name).await {
            Ok(stream) => {
                let current = &stream.cached_info().config;
                if differs(current, &wanted) {
                    js.update_stream(&wanted).await.map_err(|e| {
                        self.fail(
                            &format!(
                                "cannot update stream {} to meshd.toml's settings",
                                wanted.name
                            ),
                            e,
                        )
                    })?;
                    tracing::info!(
                        stream = %wanted.name,
                        replicas = wanted.num_replicas,
                        max_message_size = wanted.max_message_size,
                        "key-value stream updated to meshd.toml's settings"
                    );
                }
            }
            Err(e) if is_not_found(&e) => {
                js.create_stream(wanted.clone())
                    .await
                    .map_err(|e| self.fail(&format!("cannot create stream {}", wanted.name), e))?;
            }
            Err(e) => return Err(self.fail(&format!("cannot look up stream {}", wanted.name), e)),
        }
        js.get_key_value(keys::BUCKET)
            .await
            .map_err(|e| self.fail(&format!("cannot open key-value bucket {}", keys::BUCKET), e))
    }

    /// Values must fit one NATS message with its headers.
    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        let max_payload = self.inner.client.server_info().max_payload;
        let limit = max_payload.saturating_sub(HEADER_ROOM);
        if value.len() > limit {
            return Err(KvError::ValueTooLarge {
                len: value.len(),
                limit,
            });
        }
        Ok(())
    }

    /// The revision and value of a KV key: (0, None) if it never existed,
    /// (revision, None) for a delete marker (left by other tools).
    async fn read(&self, store: &kv::Store, kv_key: &str) -> Result<(u64, Option<Bytes>), KvError> {
        match store.entry(kv_key).await {
            Ok(None) => Ok((0, None)),
            Ok(Some(entry)) => match entry.operation {
                kv::Operation::Put => Ok((entry.revision, Some(entry.value))),
                kv::Operation::Delete | kv::Operation::Purge => Ok((entry.revision, None)),
            },
            Err(e) => Err(self.fail("read failed", e)),
        }
    }

    pub(crate) async fn get(
        &self,
        b: BucketRef<'_>,
        key: &str,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let kv_key = keys::entry_checked(b, key)?;
        let store = self.bucket().await?;
        let (_, value) = self.read(store, &kv_key).await?;
        Ok(value.map(|v| v.to_vec()))
    }

    pub(crate) async fn set(
        &self,
        b: BucketRef<'_>,
        key: &str,
        value: &[u8],
        quota: u64,
    ) -> Result<(), KvError> {
        self.write(b, key, quota, |_| Ok(value.to_vec())).await?;
        Ok(())
    }

    pub(crate) async fn increment(
        &self,
        b: BucketRef<'_>,
        key: &str,
        delta: u64,
        quota: u64,
    ) -> Result<u64, KvError> {
        let mut sum = 0;
        self.write(b, key, quota, |old| {
            let current = old.map(|v| parse_counter(key, v)).transpose()?;
            sum = current
                .unwrap_or(0)
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow {
                    key: key.to_owned(),
                })?;
            Ok(sum.to_string().into_bytes())
        })
        .await?;
        Ok(sum)
    }

    /// Replaces the entry's value with what `next` makes of the current
    /// one, by compare-and-swap on its revision, charging the tenant before
    /// the entry grows and refunding after it shrinks.
    async fn write(
        &self,
        b: BucketRef<'_>,
        key: &str,
        quota: u64,
        mut next: impl FnMut(Option<&[u8]>) -> Result<Vec<u8>, KvError>,
    ) -> Result<(), KvError> {
        let kv_key = keys::entry_checked(b, key)?;
        let store = self.bucket().await?;
        let _turn = self.inner.entry_turns.take(&kv_key).await;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (revision, old) = self.read(store, &kv_key).await?;
            let value = next(old.as_deref())?;
            self.check_value(&value)?;
            let old_charge = old.map_or(0, |v| charged_size(b, key, v.len()));
            let new_charge = charged_size(b, key, value.len());
            let growth = new_charge.saturating_sub(old_charge);
            if growth > 0 {
                self.change_usage(store, b.tenant, Change::Charge(growth, quota))
                    .await?;
            }
            match store.update(&kv_key, Bytes::from(value), revision).await {
                Ok(_) => {
                    if old_charge > new_charge {
                        self.refund(store, b.tenant, old_charge - new_charge).await;
                    }
                    return Ok(());
                }
                Err(e) if is_conflict(&e) => {
                    if growth > 0 {
                        self.refund(store, b.tenant, growth).await;
                    }
                    backoff(attempt).await;
                }
                // The write may or may not have happened (a timeout): the
                // charge stays, so usage never counts less than is stored.
                Err(e) => return Err(self.fail("write failed", e)),
            }
        }
        Err(KvError::Contended {
            key: key.to_owned(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    pub(crate) async fn delete(&self, b: BucketRef<'_>, key: &str) -> Result<(), KvError> {
        let kv_key = keys::entry_checked(b, key)?;
        let store = self.bucket().await?;
        let _turn = self.inner.entry_turns.take(&kv_key).await;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (revision, old) = self.read(store, &kv_key).await?;
            let Some(old) = old else {
                return Ok(());
            };
            // Removing the message by its sequence removes this value only:
            // if another node wrote the key meanwhile, this fails, and the
            // newer value is read again.
            let removed = store.stream.delete_message(revision).await;
            match removed {
                Ok(true) => {
                    self.refund(store, b.tenant, charged_size(b, key, old.len()))
                        .await;
                    return Ok(());
                }
                Ok(false) => {}
                Err(e) if !matches!(e.kind(), stream::DeleteMessageErrorKind::JetStream(_)) => {
                    return Err(self.fail("delete failed", e));
                }
                Err(e) => {
                    let (now, _) = self.read(store, &kv_key).await?;
                    if now == revision {
                        return Err(self.fail("delete failed", e));
                    }
                }
            }
            backoff(attempt).await;
        }
        Err(KvError::Contended {
            key: key.to_owned(),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Gives back `bytes` of the tenant's usage. A failure is logged, not
    /// returned: the write it follows happened, and usage then counts more
    /// than is stored (never less).
    async fn refund(&self, store: &kv::Store, tenant: &str, bytes: u64) {
        if let Err(e) = self
            .change_usage(store, tenant, Change::Refund(bytes))
            .await
        {
            tracing::warn!(
                app = tenant,
                bytes,
                "key-value usage not lowered after a write; the app is charged for more than it stores: {e}"
            );
        }
    }

    /// Updates the tenant's usage counter by compare-and-swap.
    async fn change_usage(
        &self,
        store: &kv::Store,
        tenant: &str,
        change: Change,
    ) -> Result<(), KvError> {
        let kv_key = keys::usage(tenant);
        let _turn = self.inner.usage_turns.take(&kv_key).await;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (revision, current) = self.read(store, &kv_key).await?;
            let used = current
                .map(|v| parse_counter("usage", &v))
                .transpose()?
                .unwrap_or(0);
            let new = match change {
                Change::Charge(bytes, quota) => {
                    let new = used.saturating_add(bytes);
                    if new > quota {
                        return Err(KvError::QuotaExceeded { quota });
                    }
                    new
                }
                Change::Refund(bytes) => used.saturating_sub(bytes),
            };
            match store
                .update(&kv_key, Bytes::from(new.to_string()), revision)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if is_conflict(&e) => backoff(attempt).await,
                Err(e) => return Err(self.fail("usage update failed", e)),
            }
        }
        Err(KvError::Contended {
            key: format!("usage of {tenant}"),
            attempts: MAX_CAS_ATTEMPTS,
        })
    }

    /// Up to [`PAGE_SIZE`] keys of the bucket written after the stream
    /// sequence `after` (from the start without one), in the order they
    /// were last written, and the sequence the next page starts after.
    ///
    /// One ordered consumer per page, filtered on the bucket's subjects and
    /// delivering headers only: the page reads only the bucket's own keys,
    /// and only as many as it returns. The stream keeps one message per
    /// key, so each key comes once, unless it is written again while the
    /// listing goes on: it then comes again on a later page.
    pub(crate) async fn list_keys(
        &self,
        b: BucketRef<'_>,
        after: Option<&str>,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        let start = match after {
            Some(sequence) => {
                sequence
                    .parse::<u64>()
                    .map_err(|_| KvError::UnknownCursor)?
                    + 1
            }
            None => 1,
        };
        let store = self.bucket().await?;
        let consumer = store
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.inner.client.new_inbox(),
                description: Some("meshd list-keys page".into()),
                filter_subject: keys::bucket_filter(b),
                headers_only: true,
                replay_policy: consumer::ReplayPolicy::Instant,
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| self.fail("cannot list keys", e))?;
        let name = consumer.cached_info().name.clone();
        let page = if consumer.cached_info().num_pending == 0 {
            Ok((Vec::new(), None))
        } else {
            self.read_page(consumer).await
        };
        // The server would drop the consumer after 30 s of inactivity.
        if let Err(e) = store.stream.delete_consumer(&name).await {
            tracing::debug!(consumer = %name, "listing consumer not deleted: {e}");
        }
        page
    }

    async fn read_page(
        &self,
        consumer: consumer::Consumer<consumer::push::OrderedConfig>,
    ) -> Result<(Vec<String>, Option<String>), KvError> {
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| self.fail("cannot list keys", e))?;
        let mut keys = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let message = tokio::time::timeout(LIST_WAIT, messages.next())
                .await
                .map_err(|_| self.fail("cannot list keys", "timed out"))?
                .ok_or_else(|| self.fail("cannot list keys", "the listing ended early"))?
                .map_err(|e| self.fail("cannot list keys", e))?;
            let info = message
                .info()
                .map_err(|e| self.fail("cannot list keys", e))?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            // Skip delete markers (written by other tools, not by meshd).
            let is_put = message
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .is_none_or(|op| op.as_str() == "PUT");
            if is_put {
                if let Some(key) = keys::key_of_subject(message.subject.as_str()) {
                    if seen.insert(key.clone()) {
                        keys.push(key);
                    }
                }
            }
            if pending == 0 {
                return Ok((keys, None));
            }
            if keys.len() == PAGE_SIZE {
                return Ok((keys, Some(sequence.to_string())));
            }
        }
    }
}

/// A change of a tenant's usage.
#[derive(Clone, Copy)]
enum Change {
    /// Adds bytes, refusing to go over the quota.
    Charge(u64, u64),
    /// Removes bytes (never below 0).
    Refund(u64),
}

/// Waits a random while, longer after each conflict, so that writers of
/// the same key on several nodes do not keep colliding in step.
async fn backoff(attempt: u32) {
    let ceiling_us = 250u64 << attempt.min(7);
    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..=ceiling_us))).await;
}

/// `nats://a:4222,nats://b:4222` as server addresses.
fn parse_urls(urls: &str) -> anyhow::Result<Vec<ServerAddr>> {
    let addrs = urls
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| {
            url.parse::<ServerAddr>().map_err(|e| {
                // The URL may hold a password: name the error only.
                anyhow::anyhow!("invalid NATS URL in [keyvalue] url: {e}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if addrs.is_empty() {
        anyhow::bail!("[keyvalue] backend = \"nats\" needs a url (nats://HOST:PORT[,…])");
    }
    Ok(addrs)
}

/// The client's settings: in the background, reconnecting forever, with
/// the credentials and TLS files (checked readable now, since the client
/// reads them only when it connects).
async fn connect_options(options: &NatsOptions, servers: String) -> anyhow::Result<ConnectOptions> {
    let readable = |path: &PathBuf, what: &str| {
        std::fs::metadata(path)
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("cannot read {} ([keyvalue] {what}): {e}", path.display()))
    };
    let mut connect = ConnectOptions::new()
        .name("meshd keyvalue")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let servers = servers.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tracing::info!(%servers, "key-value store connected to NATS")
                    }
                    async_nats::Event::Disconnected => tracing::warn!(
                        %servers,
                        "key-value store disconnected from NATS; reconnecting"
                    ),
                    other => tracing::warn!(%servers, "key-value store NATS connection: {other}"),
                }
            }
        });
    if let Some(path) = &options.credentials_file {
        readable(path, "credentials_file")?;
        connect = connect.credentials_file(path).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot read {} ([keyvalue] credentials_file): {e}",
                path.display()
            )
        })?;
    }
    if let Some(path) = &options.ca_file {
        readable(path, "ca_file")?;
        connect = connect
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    match (&options.client_cert_file, &options.client_key_file) {
        (None, None) => {}
        (Some(cert), Some(key)) => {
            readable(cert, "client_cert_file")?;
            readable(key, "client_key_file")?;
            connect = connect
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        _ => anyhow::bail!(
            "[keyvalue] client_cert_file and client_key_file go together: set both or neither"
        ),
    }
    Ok(connect)
}

/// Whether a server of this version (`2.9.10`, `2.10.0-beta.1`) checks a
/// replicated stream's expected last subject sequence atomically: fixed
/// in 2.9.21 (nats-server#4319).
fn replicated_cas_is_atomic(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|part| part.parse::<u64>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next()) >= (2, 9, 21)
}

/// Whether a compare-and-swap lost to another write of the key: the
/// revision moved on (10071), or (servers from 2.9.21 on, in a cluster)
/// another write of the key was still in flight (10164), which async-nats
/// reports as a generic error.
fn is_conflict(e: &kv::UpdateError) -> bool {
    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        if let Some(js) = cause.downcast_ref::<jetstream::Error>() {
            return [
                jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE,
                jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT,
            ]
            .contains(&js.error_code());
        }
        source = cause.source();
    }
    false
}

/// Whether the stream's settings differ from what meshd needs.
fn differs(current: &stream::Config, wanted: &stream::Config) -> bool {
    current.allow_direct != wanted.allow_direct
        || current.deny_delete != wanted.deny_delete
        || current.max_message_size != wanted.max_message_size
        || current.max_messages_per_subject != wanted.max_messages_per_subject
        || current.num_replicas != wanted.num_replicas
        || current.subjects != wanted.subjects
}

fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicated_compare_and_swap_needs_2_9_21() {
        for old in ["2.9.10", "2.9.20", "2.8.4", "1.4.1", "", "garbage"] {
            assert!(!replicated_cas_is_atomic(old), "{old}");
        }
        for new in ["2.9.21", "2.9.25", "2.10.0-beta.1", "2.15.1", "3.0.0"] {
            assert!(replicated_cas_is_atomic(new), "{new}");
        }
    }

    #[test]
    fn several_urls_parse_and_bad_ones_are_named() {
        let addrs = parse_urls("nats://a:4222, nats://b:4223,").unwrap();
        assert_eq!(addrs.len(), 2);
        assert_eq!((addrs[1].host(), addrs[1].port()), ("b", 4223));
        let e = parse_urls("nats://user:secret@a:notaport").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("invalid NATS URL in [keyvalue] url"),
            "{e}"
        );
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
