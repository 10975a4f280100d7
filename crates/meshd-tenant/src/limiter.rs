//! The memory limits of guests: one instance's (all of its linear memories
//! together, the app's `memory`) and every instance's together (meshd's
//! `--max-total-memory`).
//!
//! wasmtime's `StoreLimits` caps each memory separately; a component can have
//! several, so meshd keeps a running total instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use wasmtime::ResourceLimiter;

/// Largest table of one instance, in elements.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Most core instances, memories and tables one component may create.
const MAX_PARTS: usize = 1_000;

/// The linear memory of every live instance of every app, counted against
/// one daemon-wide ceiling, so that many instances kept alive at once (slow
/// clients, a burst of traffic) cannot take the machine's memory.
#[derive(Debug)]
pub struct MemoryCeiling {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryCeiling {
    /// A ceiling of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        MemoryCeiling {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
        }
    }

    /// Bytes of linear memory the live instances hold now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The ceiling, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether no more memory can be handed out: a new instance would be
    /// refused.
    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    /// Takes `bytes` more, unless that would pass the ceiling.
    fn try_take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken before.
    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Tracks and caps the memory of one Store.
pub struct TenantLimiter {
    limit: usize,
    used: usize,
    /// The daemon-wide ceiling this Store's memory also counts against.
    ceiling: Option<Arc<MemoryCeiling>>,
    /// Whether a grow failed because of the ceiling rather than the app's
    /// own limit: then the request is refused as overloaded, not failed.
    refused_by_ceiling: bool,
}

impl TenantLimiter {
    /// A limiter allowing `limit` bytes of linear memory in total.
    pub fn new(limit: usize) -> Self {
        TenantLimiter {
            limit,
            used: 0,
            ceiling: None,
            refused_by_ceiling: false,
        }
    }

    /// Counts this Store's memory against `ceiling` too. Called before the
    /// Store allocates anything.
    pub fn count_against(&mut self, ceiling: Arc<MemoryCeiling>) {
        debug_assert_eq!(self.used, 0, "the ceiling is set before any memory");
        self.ceiling = Some(ceiling);
    }

    /// Whether a grow (or the first allocation) was refused because meshd's
    /// guests together reached the ceiling.
    pub fn refused_by_ceiling(&self) -> bool {
        self.refused_by_ceiling
    }
}

impl ResourceLimiter for TenantLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let used = self.used - current.min(self.used) + desired;
        if used > self.limit {
            // An error (not `Ok(false)`) traps the guest with this message
            // instead of letting it limp on after a failed grow.
            wasmtime::bail!(
                "memory limit exceeded: the app asked for {used} bytes, its limit is {} bytes",
                self.limit
            );
        }
        if let Some(ceiling) = &self.ceiling {
            let more = used.saturating_sub(self.used);
            if more > 0 && !ceiling.try_take(more) {
                self.refused_by_ceiling = true;
                wasmtime::bail!(
                    "meshd's memory ceiling reached: {more} more bytes would pass the {} bytes all guests may hold together (--max-total-memory)",
                    ceiling.limit()
                );
            }
        }
        self.used = used;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            wasmtime::bail!("table limit exceeded: {desired} elements");
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_PARTS
    }

    fn tables(&self) -> usize {
        MAX_PARTS
    }

    fn memories(&self) -> usize {
        MAX_PARTS
    }
}

impl Drop for TenantLimiter {
    /// The Store is being dropped with its memories: give them back.
    fn drop(&mut self) {
        if let Some(ceiling) = &self.ceiling {
            ceiling.give_back(self.used);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_count_together() {
        let mut limiter = TenantLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 30, None).unwrap());
        // A second memory growing past the total is refused...
        assert!(limiter.memory_growing(30, 50, None).is_err());
        // ...but shrinking room elsewhere is counted exactly.
        assert!(limiter.memory_growing(30, 40, None).unwrap());
        assert!(!limiter.refused_by_ceiling());
    }

    #[test]
    fn stores_share_the_ceiling_and_give_back_on_drop() {
        let ceiling = Arc::new(MemoryCeiling::new(100));
        let mut a = TenantLimiter::new(1000);
        a.count_against(ceiling.clone());
        let mut b = TenantLimiter::new(1000);
        b.count_against(ceiling.clone());
        assert!(a.memory_growing(0, 60, None).unwrap());
        assert_eq!(ceiling.used(), 60);
        // b's first allocation would pass the ceiling: refused, and said so.
        assert!(b.memory_growing(0, 50, None).is_err());
        assert!(b.refused_by_ceiling());
        assert!(b.memory_growing(0, 40, None).unwrap());
        assert!(ceiling.is_full());
        // a grows by the difference only.
        assert!(a.memory_growing(60, 61, None).is_err());
        drop(a);
        assert_eq!(ceiling.used(), 40);
        drop(b);
        assert_eq!(ceiling.used(), 0);
    }

    #[test]
    fn the_app_limit_is_checked_first() {
        let ceiling = Arc::new(MemoryCeiling::new(1000));
        let mut limiter = TenantLimiter::new(10);
        limiter.count_against(ceiling.clone());
        assert!(limiter.memory_growing(0, 20, None).is_err());
        assert!(!limiter.refused_by_ceiling());
        assert_eq!(ceiling.used(), 0);
    }
}
