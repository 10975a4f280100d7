//! When to forget the dead entries of a map that only grows between sweeps
//! (entries whose value was dropped elsewhere): sweeping at every insert is
//! a pass over the whole map per insert, quadratic when thousands of apps
//! come at once (a start-up); sweeping when the map has doubled since the
//! last sweep costs O(1) per insert, amortized, and keeps the map within
//! twice its live size.

/// The smallest size at which a sweep is due.
pub(crate) const MIN_SWEEP_AT: usize = 64;

/// Says when a map is due for a sweep.
#[derive(Debug)]
pub(crate) struct SweepWhenDoubled {
    at: usize,
}

impl Default for SweepWhenDoubled {
    fn default() -> Self {
        SweepWhenDoubled { at: MIN_SWEEP_AT }
    }
}

impl SweepWhenDoubled {
    /// Whether a map of `len` entries should be swept now.
    pub(crate) fn is_due(&self, len: usize) -> bool {
        len >= self.at
    }

    /// Notes a sweep that left `len` entries.
    pub(crate) fn swept(&mut self, len: usize) {
        self.at = len.saturating_mul(2).max(MIN_SWEEP_AT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_is_due_when_the_map_has_doubled_since_the_last() {
        let mut sweep = SweepWhenDoubled::default();
        assert!(!sweep.is_due(MIN_SWEEP_AT - 1));
        assert!(sweep.is_due(MIN_SWEEP_AT));
        sweep.swept(100);
        assert!(!sweep.is_due(199));
        assert!(sweep.is_due(200));
        sweep.swept(0);
        assert!(sweep.is_due(MIN_SWEEP_AT));
    }
}
