//! The one wasmtime `Engine` every tenant shares, its `Linker`, and the epoch
//! ticker (`epoch.rs`) that lets meshd interrupt guests.

use crate::cache::{ArtifactCache, CacheOutcome};
use crate::compile::{CompileError, Compiler, SharedByKey};
use crate::descriptors::DescriptorLimits;
use crate::epoch::EpochTicker;
use crate::host::Host;
use crate::in_flight::InFlight;
use crate::limiter::MemoryCeiling;
use crate::log_ring::LogRings;
use crate::outbound::{OutboundLimits, Resolver, ResolverSettings};
use crate::scheduler::Scheduler;
use anyhow::{Context as _, Result};
use meshd_artifacts::Digest;
use meshd_keyvalue::KvStore;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::Component;
use wasmtime::component::Linker;
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How much of a freed linear memory may stay resident to be reused by the
/// next instance in that slot. With PAGEMAP_SCAN only the pages a request
/// dirtied are reset, so this bounds the resident memory kept per slot, not
/// the work per request.
const KEEP_RESIDENT_MEMORY: usize = 16 << 20;

/// How a freed instance slot is made fresh for the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryReset {
    /// Pages a request dirtied are found with PAGEMAP_SCAN and reset in
    /// place (up to [`KEEP_RESIDENT_MEMORY`]); the rest is given back to the
    /// kernel.
    DirtyPagesInPlace,
    /// Every page is given back to the kernel (`madvise(DONTNEED)`) and
    /// faulted in again by the next instance: slower, but it never relies on
    /// pages being resident. Chosen when swap is on: wasmtime 48's scan only
    /// resets *present* dirty pages, so a dirty page the kernel swapped out
    /// would keep one request's data for the next instance in that slot.
    GiveBackEverything,
}

impl MemoryReset {
    /// The reset that is safe on this host: in place unless swap is on.
    pub fn for_this_host() -> Self {
        if swap_is_on() {
            MemoryReset::GiveBackEverything
        } else {
            MemoryReset::DirtyPagesInPlace
        }
    }
}

/// Whether the kernel has any swap area (disk, file or zram) enabled:
/// `/proc/swaps` lists one per line after its header. Unreadable (not
/// Linux, no /proc) counts as on, the safe answer.
fn swap_is_on() -> bool {
    std::fs::read_to_string("/proc/swaps").map_or(true, |swaps| lists_a_swap_area(&swaps))
}

/// Whether the text of `/proc/swaps` lists any swap area.
fn lists_a_swap_area(swaps: &str) -> bool {
    swaps.lines().skip(1).any(|line| !line.trim().is_empty())
}

/// Daemon-wide settings of the tenant runtime.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are cached.
    pub cache_dir: PathBuf,
    /// Most instances alive at once, across all tenants (pool size). A
    /// request arriving when all are busy gets 503.
    pub max_instances: u32,
    /// Most bytes of linear memory all live instances may hold together
    /// (`--max-total-memory`): past it new instances are refused (503) and
    /// growing memory fails.
    pub max_total_memory: u64,
    /// Lines a second one app may add to meshd's log (stdout, stderr and
    /// wasi:logging together); 0 means no limit.
    pub guest_log_rate: u32,
    /// PEM files of certificate authorities outbound HTTPS trusts besides
    /// Mozilla's roots.
    pub outbound_ca_files: Vec<PathBuf>,
    /// Most descriptors (open files, connections) per request, per app and
    /// for all guests together.
    pub descriptors: DescriptorLimits,
    /// Most outbound requests and name lookups one app may have in flight.
    pub outbound: OutboundLimits,
    /// Where outbound HTTP looks names up.
    pub resolver: ResolverSettings,
    /// Most bytes an app's writable `[files]` directory may hold before its
    /// guests can no longer write files; `None`: no quota.
    pub files_quota: Option<u64>,
    /// Most apps compiled at once (`--load-parallelism`), counting compiles
    /// past their time limit that are still running.
    pub load_parallelism: usize,
    /// How long a version's code may go unused before it is unloaded
    /// (`--idle-unload`); `None`: never.
    pub idle_unload: Option<Duration>,
    /// Most versions with their code loaded at once (`--max-loaded`); past
    /// it the least recently used are unloaded. `None`: no bound.
    pub max_loaded: Option<usize>,
    /// Longest one app's compile may take (`--max-compile-time`).
    pub max_compile_time: Duration,
    /// How freed instance memory is reset (`--memory-reset`); `None`: by
    /// whether this host has swap on ([`MemoryReset::for_this_host`]).
    pub memory_reset: Option<MemoryReset>,
}

/// The shared engine, linker and compiled-artifact cache.
pub struct Runtime {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<Host>,
    pub(crate) cache: ArtifactCache,
    /// Compiled code shared by every version with the same `.wasm` bytes,
    /// so identical apps hold one copy in memory.
    pub(crate) shared_code: SharedByKey<Digest, SharedCode>,
    /// Runs compiles, in parallel and within `max_compile_time`.
    compiler: Compiler,
    pub(crate) kv: KvStore,
    /// TLS settings of every outbound HTTPS connection.
    pub(crate) outbound_tls: Arc<rustls::ClientConfig>,
    /// Looks up the names of outbound HTTP, asynchronously.
    pub(crate) resolver: Arc<Resolver>,
    /// Descriptors all guests hold, capped at `descriptors.all_guests`.
    pub(crate) guest_descriptors: Arc<InFlight>,
    pub(crate) config: RuntimeConfig,
    /// Instances serving a request, capped at `max_instances` daemon-wide.
    pub(crate) instance_slots: Arc<InFlight>,
    /// Idle instances kept for reuse, a separate budget (also
    /// `max_instances`) so idle instances never take the slots of active ones.
    pub(crate) idle_slots: Arc<InFlight>,
    /// The linear memory of every live instance, capped at
    /// `max_total_memory`.
    pub(crate) memory: Arc<MemoryCeiling>,
    /// Every app's recent log lines, for the admin API.
    pub(crate) log_rings: Arc<LogRings>,
    /// Short requests before long ones, across all apps.
    pub(crate) scheduler: Scheduler,
    /// Which versions' code is loaded, and the idle-unload sweeper.
    pub(crate) resident: Arc<crate::resident::Resident>,
    pooling: bool,
    memory_reset: MemoryReset,
    /// Advances the engine's epoch while guests run.
    pub(crate) epoch: EpochTicker,
}

impl Runtime {
    /// Builds the engine (pooling allocator when the address space allows it,
    /// on-demand allocation otherwise), the linker and the cache.
    pub fn new(config: RuntimeConfig, kv: KvStore) -> Result<Arc<Self>> {
        let memory_reset = config
            .memory_reset
            .unwrap_or_else(MemoryReset::for_this_host);
        if memory_reset == MemoryReset::DirtyPagesInPlace && swap_is_on() {
            tracing::warn!(
                "--memory-reset in-place with swap on: a dirty page of a guest's memory that the kernel swaps out is not reset, and the next request in that slot could read it; use --memory-reset auto or give-back unless meshd's cgroup cannot swap (memory.swap.max = 0)"
            );
        }
        let (engine, pooling) = match Engine::new(&engine_config(&config, Some(memory_reset))) {
            Ok(engine) => (engine, true),
            Err(e) => {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "pooling allocator unavailable (address space too small?); using on-demand allocation"
                );
                let engine = Engine::new(&engine_config(&config, None))
                    .map_err(anyhow::Error::from)
                    .context("cannot create the wasmtime engine")?;
                (engine, false)
            }
        };
        let mut linker = Linker::new(&engine);
        // Rust std guests import wasi:cli (environment, exit, terminal-*) on
        // top of the proxy world, so the full WASI p2 linker is needed. It
        // stays capability-safe: each Store's WasiCtx grants no sockets, and
        // files and environment only as the app's manifest says.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add WASI to the linker")?;
        // Files the guests open count against their descriptor budgets.
        crate::descriptors::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add the descriptor budget to the linker")?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:http to the linker")?;
        // The platform services of wit/app.wit.
        crate::platform::add_to_linker(&mut linker)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:keyvalue and wasi:logging to the linker")?;
        wasmtime_wasi_config::add_to_linker(&mut linker, Host::config)
            .map_err(anyhow::Error::from)
            .context("cannot add wasi:config to the linker")?;
        let outbound_tls = crate::outbound::client_config(&config.outbound_ca_files)?;
        let resolver = Arc::new(Resolver::new(&config.resolver)?);
        let cache = ArtifactCache::open(&config.cache_dir, &engine)?;
        let ticker = EpochTicker::start(&engine).context("cannot start the epoch thread")?;
        let resident = crate::resident::Resident::start(crate::resident::UnloadPolicy {
            idle: config.idle_unload,
            max_loaded: config.max_loaded,
        })
        .context("cannot start the code-unload thread")?;
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            shared_code: SharedByKey::default(),
            compiler: Compiler::new(config.load_parallelism, config.max_compile_time),
            kv,
            outbound_tls,
            resolver,
            guest_descriptors: Arc::default(),
            instance_slots: Arc::default(),
            idle_slots: Arc::default(),
            memory: Arc::new(MemoryCeiling::new(config.max_total_memory)),
            log_rings: Arc::default(),
            scheduler: Scheduler::for_current_runtime(),
            resident,
            config,
            pooling,
            memory_reset,
            epoch: ticker,
        }))
    }

    /// Whether instances come from the pooling allocator.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// How the pool resets a freed instance's memory for the next request.
    pub fn memory_reset(&self) -> MemoryReset {
        self.memory_reset
    }

    /// Every app's recent log lines (its guests' stdout, stderr and
    /// wasi:logging), for the admin API.
    pub fn log_rings(&self) -> &Arc<LogRings> {
        &self.log_rings
    }

    /// The daemon-wide settings.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// How many versions have their code loaded, and how often code was
    /// loaded on first use and unloaded when idle.
    pub fn resident_code(&self) -> crate::resident::ResidentStats {
        self.resident.stats()
    }

    /// Bytes of linear memory all live instances hold now (those serving a
    /// request and those kept for reuse).
    pub fn guest_memory(&self) -> usize {
        self.memory.used()
    }
}

/// A compiled component, shared by the versions built from the same bytes.
pub(crate) struct SharedCode(pub(crate) Component);

impl Runtime {
    /// The compiled form of `wasm`: shared with a loaded version of the same
    /// bytes if there is one, else from the on-disk cache or the compiler.
    /// Loads of the same bytes wait for one another and compile once; loads
    /// of different bytes run in parallel (up to `load_parallelism`
    /// compiles). Blocking.
    pub(crate) fn component(
        &self,
        wasm: &[u8],
        digest: &Digest,
    ) -> Result<(Arc<SharedCode>, CacheOutcome), CompileError> {
        self.component_by_digest(digest, || Ok(wasm.to_vec()))
    }

    /// As [`Runtime::component`], for a version whose bytes are only read
    /// (by `wasm`) if the code must be compiled: a reload after an unload.
    pub(crate) fn component_by_digest(
        &self,
        digest: &Digest,
        wasm: impl FnOnce() -> Result<Vec<u8>, CompileError>,
    ) -> Result<(Arc<SharedCode>, CacheOutcome), CompileError> {
        let mut outcome = CacheOutcome::Shared;
        let (code, _) = self.shared_code.get_or_make(digest, || {
            let (component, how) =
                self.cache
                    .load_or_compile(&self.engine, digest, wasm, |bytes| {
                        self.compiler.compile(&self.engine, bytes)
                    })?;
            outcome = how;
            Ok::<_, CompileError>(SharedCode(component))
        })?;
        Ok((code, outcome))
    }
}

/// The engine's configuration: with the pooling allocator resetting memory
/// as `pooling` says, or allocating on demand when `None`.
fn engine_config(config: &RuntimeConfig, pooling: Option<MemoryReset>) -> Config {
    let mut c = Config::new();
    c.epoch_interruption(true);
    if let Some(reset) = pooling {
        let mut pool = PoolingAllocationConfig::default();
        // Room for the active instances and as many idle ones kept for reuse.
        let n = config.max_instances.saturating_mul(2);
        pool.total_component_instances(n)
            // A component is several core instances (the app, plus shims
            // that wire up its imports) but usually one memory.
            .total_core_instances(n.saturating_mul(8))
            .total_memories(n)
            .total_tables(n.saturating_mul(4))
            .total_stacks(n);
        match reset {
            // Keep the pages of a freed slot resident and reset them with
            // memset instead of returning them to the kernel: returning them
            // costs a TLB shootdown on every core per request. PAGEMAP_SCAN
            // (Linux 6.7+) finds the pages a request actually dirtied, so
            // only those are reset. (wasmtime 48 takes at most 32 disjoint
            // dirty runs per scan and gives back everything after them, so
            // heaps dirtied in many places, such as Python's or JavaScript's,
            // are faulted in again anyway: docs/benchmarks.md.)
            MemoryReset::DirtyPagesInPlace => pool
                .pagemap_scan(Enabled::Auto)
                .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
                .table_keep_resident(64 << 10)
                .async_stack_keep_resident(256 << 10),
            MemoryReset::GiveBackEverything => pool
                .pagemap_scan(Enabled::No)
                .linear_memory_keep_resident(0)
                .table_keep_resident(0)
                .async_stack_keep_resident(0),
        };
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_areas_are_read_from_proc_swaps() {
        let header = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";
        assert!(!lists_a_swap_area(header));
        assert!(!lists_a_swap_area(""));
        let zram = format!("{header}/dev/zram0 partition\t8388604\t0\t100\n");
        assert!(lists_a_swap_area(&zram));
    }
}
