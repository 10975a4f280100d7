//! What one app may do and use: resolved from its manifest and the daemon's
//! defaults before the version is built.

use meshd_apps::OutboundRule;
use std::path::PathBuf;
use std::time::Duration;

/// The resolved limits and capabilities of one app version.
#[derive(Debug, Clone)]
pub struct TenantSettings {
    /// Most bytes of linear memory an instance may hold, all memories
    /// together.
    pub memory: usize,
    /// Wall-clock deadline of one request.
    pub timeout: Duration,
    /// Most requests in flight at once; more get 503.
    pub max_concurrency: u32,
    /// Largest request body; larger ones get 413.
    pub max_body: u64,
    /// Processor time the app's guests may use together, in thousandths of
    /// a core (see [`crate::CpuBudget`]); `None`: no limit.
    pub cpu: Option<u32>,
    /// How much the scheduler favours the app, in thousandths (1000: the
    /// default weight of 1): its requests stay short for `cpu_weight` times
    /// as long, and its long requests' time costs the floor they share
    /// `1 / cpu_weight` as much (see `scheduler.rs`).
    pub cpu_weight: u32,
    /// The whole environment the guest sees.
    pub env: Vec<(String, String)>,
    /// A host directory preopened as `/`, if any.
    pub files: Option<Preopen>,
    /// Where outbound HTTP may go; empty denies everything.
    pub outbound: Vec<OutboundRule>,
    /// The values wasi:config returns.
    pub config: Vec<(String, String)>,
    /// How many requests one instance may serve, one after another (1: a
    /// fresh instance for every request, the default and strongest
    /// isolation).
    pub reuse: u32,
}

/// A host directory the guest sees as `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The directory on the host (already checked to be inside the apps
    /// directory).
    pub host_dir: PathBuf,
    /// Whether the guest may write.
    pub writable: bool,
}

impl PartialEq for TenantSettings {
    fn eq(&self, other: &Self) -> bool {
        self.memory == other.memory
            && self.timeout == other.timeout
            && self.max_concurrency == other.max_concurrency
            && self.max_body == other.max_body
            && self.cpu == other.cpu
            && self.cpu_weight == other.cpu_weight
            && self.env == other.env
            && self.files == other.files
            && self.outbound == other.outbound
            && self.config == other.config
            && self.reuse == other.reuse
    }
}
