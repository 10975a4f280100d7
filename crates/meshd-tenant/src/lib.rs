//! The tenant runtime of meshd.
//!
//! One [`Runtime`] holds the wasmtime `Engine` that every tenant shares, the
//! `Linker` with the host interfaces, the compiled-artifact cache and the
//! epoch ticker. [`load_version`] turns the bytes of an app's `.wasm` into an
//! [`AppVersion`]: compiled once and pre-instantiated. [`AppVersion::handle`]
//! serves one request in a fresh `Store` of that tenant, with its own memory,
//! limits and capabilities, so one tenant never sees or starves another.
#![deny(missing_docs)]

mod body;
mod cache;
mod compile;
mod cpu_budget;
mod descriptors;
mod disk_quota;
mod engine;
mod epoch;
mod guest_log;
mod heap;
mod host;
mod in_flight;
mod ledger;
mod limiter;
mod load;
mod log_budget;
mod log_ring;
mod outbound;
mod platform;
mod resident;
mod scheduler;
mod settings;
mod stats;
mod sweep;
mod version;

pub use body::ResponseBody;
pub use cache::CacheOutcome;
pub use compile::CompileError;
pub use cpu_budget::{CpuBudget, BURST as CPU_BURST};
pub use descriptors::DescriptorLimits;
pub use engine::{MemoryReset, Runtime, RuntimeConfig};
pub use epoch::EPOCH_TICK;
pub use heap::release_free_heap;
pub use in_flight::{InFlight, InFlightGuard};
pub use ledger::AppLedger;
pub use load::{load_version, load_version_with_source, unloaded_version, LoadError};
pub use log_ring::{
    LogLine, LogPage, LogRing, LogRings, LogSource, LINE_OVERHEAD, MAX_BYTES as LOG_RING_BYTES,
    MAX_LINES as LOG_RING_LINES,
};
pub use outbound::{OutboundLimits, ResolverSettings, DEFAULT_LOOKUP_TIMEOUT};
pub use resident::{ResidentStats, WasmSource};
pub use scheduler::{Scheduler, LONG_AFTER as CPU_LONG_AFTER};
pub use settings::{Preopen, TenantSettings};
pub use stats::{StatsSnapshot, VersionStats, LATENCY_BUCKETS};
pub use version::{AppVersion, ClientScheme, ServeError};

/// The error type of request and response bodies handed to and from guests.
pub use wasmtime_wasi_http::Error as BodyError;
