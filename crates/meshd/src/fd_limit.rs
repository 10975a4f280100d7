//! The process's open-file limit (`RLIMIT_NOFILE`): raised to its hard limit
//! at start, and checked against what meshd is told to hold open.

/// Descriptors meshd keeps for itself: listeners, the key-value database,
/// the compile cache, apps being loaded, the watcher, the metrics listener.
pub const RESERVED: u64 = 128;

/// Where the limit goes when the hard limit is "unlimited", which Linux
/// refuses for RLIMIT_NOFILE (2^20 is its default `fs.nr_open`).
const UNLIMITED_CAP: u64 = 1 << 20;

/// Raises the soft open-file limit to the hard limit and returns the limit
/// now in force. (Most systems start processes at a soft limit of 1024, far
/// below what a server with thousands of connections needs.)
pub fn raise() -> u64 {
    let raised = rlimit::increase_nofile_limit(u64::MAX)
        .or_else(|_| rlimit::increase_nofile_limit(UNLIMITED_CAP));
    match raised {
        Ok(limit) => limit,
        Err(e) => {
            let soft = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
            tracing::warn!(
                soft,
                "cannot raise the open-file limit to its hard limit: {e}"
            );
            soft
        }
    }
}

/// What meshd may hold open, against the limit: a warning naming the
/// numbers if connections, guests and meshd's own files could need more.
pub fn check(limit: u64, max_connections: usize, guest_descriptors: u32) {
    let needed = (max_connections as u64)
        .saturating_add(u64::from(guest_descriptors))
        .saturating_add(RESERVED);
    if needed > limit {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            max_guest_descriptors = guest_descriptors,
            "the open-file limit ({limit}) is below --max-connections ({max_connections}) + \
             --max-guest-descriptors ({guest_descriptors}) + {RESERVED} for meshd itself: \
             at full load accepting connections or opening files would fail. Raise the hard \
             limit (ulimit -Hn, or LimitNOFILE= in a systemd unit) or lower --max-connections"
        );
    }
}

/// The default for `--max-guest-descriptors`: a quarter of the limit.
pub fn default_guest_descriptors(limit: u64) -> u32 {
    u32::try_from(limit / 4).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_limit() {
        let limit = raise();
        let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
        assert_eq!(limit, soft);
        assert!(soft == hard || hard > UNLIMITED_CAP, "{soft} {hard}");
    }
}
