//! Instances kept for reuse (manifest `reuse = N`) that sit idle too long are
//! dropped, so a burst of traffic does not pin their memory and pool slots
//! for good.

use meshd_registry::Registry;
use std::sync::Arc;
use std::time::Duration;

/// Every so often (half of `ttl`, between 100 ms and 10 s), drops the reused
/// instances of every mounted version (live and canary) that have been idle
/// for `ttl`. Runs until dropped.
pub async fn expire_idle_instances(registry: Arc<Registry>, ttl: Duration) {
    let every = (ttl / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let apps = registry.load();
        for (route, version) in apps
            .routes
            .iter()
            .flat_map(|(route, mount)| mount.versions().map(move |v| (route, v)))
        {
            let expired = version.expire_idle(ttl);
            if expired > 0 {
                tracing::debug!(app = version.app(), %route, expired, "idle reused instances dropped");
            }
        }
    }
}
