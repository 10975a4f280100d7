//! The memory limit of one instance: all of its linear memories together.
//!
//! wasmtime's `StoreLimits` caps each memory separately; a component can have
//! several, so meshd keeps a running total instead.

use wasmtime::ResourceLimiter;

/// Largest table of one instance, in elements.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;
/// Most core instances, memories and tables one component may create.
const MAX_PARTS: usize = 1_000;

/// Tracks and caps the memory of one Store.
pub struct TenantLimiter {
    limit: usize,
    used: usize,
}

impl TenantLimiter {
    /// A limiter allowing `limit` bytes of linear memory in total.
    pub fn new(limit: usize) -> Self {
        TenantLimiter { limit, used: 0 }
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
    }
}
