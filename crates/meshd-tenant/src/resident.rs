//! Which versions have their compiled code in memory (issue #17): a version's
//! code (its mapped `.cwasm` and pre-instance) is loaded on first use when the
//! version started unloaded, and dropped again after `--idle-unload` without
//! a request, or when more than `--max-loaded` versions are loaded (the least
//! recently used go first). The next request loads it back from the compile
//! cache (by digest), or compiles it from the `.wasm` its [`WasmSource`]
//! gives when the cache entry is gone.
//!
//! The request path pays one atomic load (`ArcSwapOption::load`) to find the
//! loaded code and, only with `--idle-unload` or `--max-loaded`, a clock read
//! and a relaxed store of the time when the millisecond changed; only a
//! request that finds the code unloaded takes the version's load lock.

use crate::cache::CacheOutcome;
use crate::engine::{Runtime, SharedCode};
use crate::heap::release_free_heap;
use crate::host::Host;
use crate::version::IdleInstance;
use arc_swap::ArcSwapOption;
use meshd_artifacts::Digest;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Gives a version's `.wasm` bytes again, for a reload whose compile-cache
/// entry is gone (the artifact store, or the file it was read from). The
/// bytes are checked against the version's digest before they are compiled.
pub type WasmSource = Arc<dyn Fn() -> anyhow::Result<Vec<u8>> + Send + Sync>;

/// A version's code in memory: the pre-instance, and the compiled component
/// it was made from (shared by every loaded version of the same bytes).
pub(crate) struct Loaded {
    pub(crate) pre: ProxyPre<Host>,
    /// Keeps the compiled code registered as shared while it is loaded.
    pub(crate) _code: Arc<SharedCode>,
}

/// The code half of one version: loaded or not, when it was last used, and
/// how to load it again.
pub(crate) struct VersionCode {
    app: Arc<str>,
    id: String,
    /// BLAKE3 of the `.wasm`: the compile cache's key.
    digest: Digest,
    source: Option<WasmSource>,
    loaded: ArcSwapOption<Loaded>,
    /// When a request last used the code, in ms of [`Resident::now_ms`].
    last_used: AtomicU64,
    /// Taken by a request that must load the code; holds the failure of the
    /// last attempt, so requests that waited for it fail with it rather than
    /// each trying again.
    load_lock: tokio::sync::Mutex<Option<String>>,
    /// Load attempts finished, to tell whether one ended while a request
    /// waited for the lock.
    attempts: AtomicU64,
    /// Instances that served a request and may serve another (`reuse`);
    /// dropped with the code when it is unloaded.
    pub(crate) idle: Mutex<Vec<IdleInstance>>,
    resident: Arc<Resident>,
}

impl VersionCode {
    /// The code of a version, loaded (`Some`) or to be loaded on first use,
    /// registered with the runtime's sweeper.
    pub(crate) fn new(
        runtime: &Runtime,
        app: Arc<str>,
        id: String,
        digest: Digest,
        source: Option<WasmSource>,
        loaded: Option<Arc<Loaded>>,
    ) -> Arc<Self> {
        let resident = runtime.resident.clone();
        if loaded.is_some() {
            resident.loaded.fetch_add(1, Ordering::Relaxed);
        }
        let code = Arc::new(VersionCode {
            app,
            id,
            digest,
            source,
            loaded: ArcSwapOption::new(loaded),
            last_used: AtomicU64::new(resident.now_ms()),
            load_lock: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
            idle: Mutex::new(Vec::new()),
            resident: resident.clone(),
        });
        let mut versions = resident
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Forget dropped versions now and then, so redeploys without a
        // sweeper do not grow the list for ever.
        if versions.len() % 1024 == 1023 {
            versions.retain(|v| v.strong_count() > 0);
        }
        versions.push(Arc::downgrade(&code));
        drop(versions);
        code
    }

    /// The same code for another version of it (a manifest-only change):
    /// loaded if this one is, with no idle instances of its own yet.
    pub(crate) fn sibling(&self, runtime: &Runtime, id: String) -> Arc<Self> {
        VersionCode::new(
            runtime,
            self.app.clone(),
            id,
            self.digest,
            self.source.clone(),
            self.loaded.load_full(),
        )
    }

    /// BLAKE3 of the `.wasm`.
    pub(crate) fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Whether the code is in memory now.
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded.load().is_some()
    }

    /// The pre-instance to serve a request with, loading the code first if
    /// it is not in memory. Notes the use, which keeps the code loaded.
    pub(crate) async fn pre(&self, runtime: &Arc<Runtime>) -> Result<ProxyPre<Host>, String> {
        self.touch();
        if let Some(loaded) = &*self.loaded.load() {
            return Ok(loaded.pre.clone());
        }
        self.load(runtime).await
    }

    /// Notes the use for the idle sweep. Every request passes here: with no
    /// sweep it does nothing, and it writes the shared time only when the
    /// millisecond changed, so requests on other cores do not fight over it.
    fn touch(&self) {
        if !self.resident.tracks_use {
            return;
        }
        let now = self.resident.now_ms();
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    /// Loads the code, once for all the requests that wait for it. Loading
    /// (reading the cache entry, or compiling) blocks, so it runs on a
    /// blocking thread.
    async fn load(&self, runtime: &Arc<Runtime>) -> Result<ProxyPre<Host>, String> {
        let attempts_before = self.attempts.load(Ordering::Acquire);
        let mut last_failure = self.load_lock.lock().await;
        if let Some(loaded) = &*self.loaded.load() {
            return Ok(loaded.pre.clone());
        }
        if self.attempts.load(Ordering::Acquire) != attempts_before {
            if let Some(failure) = &*last_failure {
                return Err(failure.clone());
            }
        }
        let started = Instant::now();
        let (runtime_for_load, digest, source) =
            (runtime.clone(), self.digest, self.source.clone());
        let outcome = tokio::task::spawn_blocking(move || {
            load_code(&runtime_for_load, &digest, source.as_ref())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the load panicked: {e}")));
        self.attempts.fetch_add(1, Ordering::Release);
        match outcome {
            Ok((loaded, cache)) => {
                let pre = loaded.pre.clone();
                self.touch();
                if self.loaded.swap(Some(Arc::new(loaded))).is_none() {
                    self.resident.loaded.fetch_add(1, Ordering::Relaxed);
                }
                self.resident.sweep_if_over_capacity();
                self.resident.loads.fetch_add(1, Ordering::Relaxed);
                *last_failure = None;
                if let CacheOutcome::Replaced(reason) = &cache {
                    tracing::warn!(app = %self.app, version = %self.id, reason = %reason, "discarded an unusable cache entry and recompiled");
                }
                tracing::info!(
                    app = %self.app, version = %self.id, cache = %cache.as_str(),
                    took_ms = started.elapsed().as_millis() as u64,
                    "loaded the app's code on first use"
                );
                Ok(pre)
            }
            Err(cause) => {
                let message = format!(
                    "cannot load the code of app {} version {}: {cause}",
                    self.app, self.id
                );
                tracing::error!(app = %self.app, version = %self.id, error = %cause, "cannot load the app's code; its requests get 503 until a load succeeds");
                *last_failure = Some(message.clone());
                Err(message)
            }
        }
    }

    /// Drops the code (and idle instances) if unused since `cutoff_ms`.
    /// Requests already running keep what they hold. Returns whether it did.
    fn unload_if_idle(&self, cutoff_ms: u64) -> bool {
        if self.last_used.load(Ordering::Relaxed) > cutoff_ms || !self.is_loaded() {
            return false;
        }
        let Ok(_load) = self.load_lock.try_lock() else {
            // A request is loading it right now: it is in use.
            return false;
        };
        let dropped = self.loaded.swap(None);
        let idle: Vec<IdleInstance> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
        if dropped.is_some() {
            self.resident.loaded.fetch_sub(1, Ordering::Relaxed);
            self.resident.unloads.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(app = %self.app, version = %self.id, "unloaded the app's idle code");
        }
        dropped.is_some()
    }
}

impl Drop for VersionCode {
    fn drop(&mut self) {
        if self.loaded.load().is_some() {
            self.resident.loaded.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Reads (or compiles) a version's code and pre-instantiates it. Blocking.
pub(crate) fn load_code(
    runtime: &Runtime,
    digest: &Digest,
    source: Option<&WasmSource>,
) -> Result<(Loaded, CacheOutcome), String> {
    let wasm = || -> Result<Vec<u8>, crate::compile::CompileError> {
        let source = source.ok_or_else(|| {
            crate::compile::CompileError::Invalid(
                "its compile-cache entry is gone and meshd kept no copy of its .wasm".into(),
            )
        })?;
        let bytes = source().map_err(|e| {
            crate::compile::CompileError::Invalid(format!(
                "its compile-cache entry is gone and its .wasm cannot be read again: {e:#}"
            ))
        })?;
        if Digest::of(&bytes) != *digest {
            return Err(crate::compile::CompileError::Invalid(
                "its compile-cache entry is gone and the .wasm read again is not the one deployed (changed since)".into(),
            ));
        }
        Ok(bytes)
    };
    let (code, cache) = runtime
        .component_by_digest(digest, wasm)
        .map_err(|e| e.to_string())?;
    let pre = pre_instantiate(runtime, &code).map_err(|e| e.to_string())?;
    Ok((Loaded { pre, _code: code }, cache))
}

/// Pre-instantiates compiled code against meshd's linker.
pub(crate) fn pre_instantiate(
    runtime: &Runtime,
    code: &SharedCode,
) -> Result<ProxyPre<Host>, crate::load::LoadError> {
    let instance_pre = runtime
        .linker
        .instantiate_pre(&code.0)
        .map_err(|e| crate::load::LoadError::Link(format!("{e:#}")))?;
    ProxyPre::new(instance_pre).map_err(|e| crate::load::LoadError::NotHttp(format!("{e:#}")))
}

/// When code is unloaded: the operator's `--idle-unload` and `--max-loaded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct UnloadPolicy {
    /// Unload a version's code once it has had no request for this long.
    pub(crate) idle: Option<Duration>,
    /// Most versions with their code loaded at once; past it the least
    /// recently used are unloaded.
    pub(crate) max_loaded: Option<usize>,
}

impl UnloadPolicy {
    /// Whether code is ever unloaded.
    fn unloads(&self) -> bool {
        self.idle.is_some() || self.max_loaded.is_some()
    }

    /// How often the sweeper looks: four times per idle period, so code goes
    /// within 1.25x of it; at most once a second, at least every 10 ms. A
    /// load past `max_loaded` wakes it at once.
    fn sweep_every(&self) -> Duration {
        match self.idle {
            Some(idle) => (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)),
            None => Duration::from_secs(1),
        }
    }
}

/// The runtime's view of every version's code: how many are loaded, and the
/// sweeper that unloads idle ones and keeps the count under `max_loaded`.
pub(crate) struct Resident {
    /// Whether code is ever unloaded: only then do requests note when they
    /// last used it.
    tracks_use: bool,
    policy: UnloadPolicy,
    /// The sweeper thread, unparked when a load goes past `max_loaded`.
    sweeper: OnceLock<std::thread::Thread>,
    clock: Instant,
    versions: Mutex<Vec<Weak<VersionCode>>>,
    loaded: AtomicUsize,
    loads: AtomicU64,
    unloads: AtomicU64,
}

/// Counts of versions' code in memory, for the metrics endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentStats {
    /// Versions whose code is loaded now.
    pub loaded: usize,
    /// Versions alive (loaded or not).
    pub versions: usize,
    /// Loads on first use (or after an unload) since start.
    pub loads: u64,
    /// Unloads of idle code since start.
    pub unloads: u64,
}

impl Resident {
    /// The registry, and its sweeper thread when `policy` ever unloads (the
    /// thread ends soon after the registry is dropped). Otherwise code stays
    /// loaded as long as its version lives.
    pub(crate) fn start(policy: UnloadPolicy) -> std::io::Result<Arc<Self>> {
        let resident = Arc::new(Resident {
            tracks_use: policy.unloads(),
            policy,
            sweeper: OnceLock::new(),
            clock: Instant::now(),
            versions: Mutex::new(Vec::new()),
            loaded: AtomicUsize::new(0),
            loads: AtomicU64::new(0),
            unloads: AtomicU64::new(0),
        });
        if policy.unloads() {
            let every = policy.sweep_every();
            let weak = Arc::downgrade(&resident);
            let sweeper = std::thread::Builder::new()
                .name("meshd-unload".into())
                .spawn(move || loop {
                    std::thread::park_timeout(every);
                    match weak.upgrade() {
                        Some(resident) => resident.sweep(),
                        None => break,
                    }
                })?;
            let _ = resident.sweeper.set(sweeper.thread().clone());
        }
        Ok(resident)
    }

    /// Whether more versions are loaded than `max_loaded`.
    fn over_capacity(&self) -> bool {
        self.policy
            .max_loaded
            .is_some_and(|max| self.loaded.load(Ordering::Relaxed) > max)
    }

    /// Wakes the sweeper if more versions are loaded than `max_loaded`.
    fn sweep_if_over_capacity(&self) {
        if self.over_capacity() {
            if let Some(sweeper) = self.sweeper.get() {
                sweeper.unpark();
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Unloads the code of every version unused for the idle period, then
    /// the least recently used ones while more than `max_loaded` are loaded.
    fn sweep(&self) {
        // With only a bound, a sweep under it has nothing to do: skip the
        // walk over every version.
        if self.policy.idle.is_none() && !self.over_capacity() {
            return;
        }
        let live: Vec<Arc<VersionCode>> = {
            let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            versions.retain(|v| v.strong_count() > 0);
            versions.iter().filter_map(Weak::upgrade).collect()
        };
        // Unmapping happens here, outside the registry's lock.
        let mut unloaded = 0;
        let idle_cutoff = self.policy.idle.and_then(|idle| {
            self.now_ms()
                .checked_sub(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
        });
        if let Some(cutoff) = idle_cutoff {
            for code in &live {
                unloaded += usize::from(code.unload_if_idle(cutoff));
            }
        }
        if let Some(max) = self.policy.max_loaded {
            unloaded += self.unload_least_recently_used(&live, max);
        }
        drop(live);
        if unloaded > 0 {
            release_free_heap();
        }
    }

    /// Unloads loaded versions, least recently used first, until at most
    /// `max` are loaded. A version used again since the sweep looked is
    /// skipped (it is no longer the least recently used). Returns how many
    /// it unloaded.
    fn unload_least_recently_used(&self, live: &[Arc<VersionCode>], max: usize) -> usize {
        let mut excess = self.loaded.load(Ordering::Relaxed).saturating_sub(max);
        if excess == 0 {
            return 0;
        }
        let mut loaded: Vec<(u64, &Arc<VersionCode>)> = live
            .iter()
            .filter(|code| code.is_loaded())
            .map(|code| (code.last_used.load(Ordering::Relaxed), code))
            .collect();
        loaded.sort_unstable_by_key(|(last_used, _)| *last_used);
        let mut unloaded = 0;
        for (last_used, code) in loaded {
            if excess == 0 {
                break;
            }
            if code.unload_if_idle(last_used) {
                unloaded += 1;
                excess -= 1;
            }
        }
        if unloaded > 0 {
            tracing::debug!(
                unloaded,
                max_loaded = max,
                "unloaded the least recently used apps' code"
            );
        }
        unloaded
    }

    pub(crate) fn stats(&self) -> ResidentStats {
        let versions = {
            let versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
            versions.iter().filter(|v| v.strong_count() > 0).count()
        };
        ResidentStats {
            loaded: self.loaded.load(Ordering::Relaxed),
            versions,
            loads: self.loads.load(Ordering::Relaxed),
            unloads: self.unloads.load(Ordering::Relaxed),
        }
    }
}
