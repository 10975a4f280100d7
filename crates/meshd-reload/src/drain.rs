//! Retiring a version that no longer takes new requests.

use meshd_tenant::AppVersion;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Waits in the background for `version`'s in-flight requests (streaming
/// bodies included) to finish, at most `timeout`; then cancels what is left
/// and drops the version, which frees its compiled code.
pub fn retire(version: Arc<AppVersion>, timeout: Duration, why: &'static str) {
    tokio::spawn(async move {
        let started = Instant::now();
        let in_flight = version.in_flight().count();
        let drained = tokio::time::timeout(timeout, version.in_flight().drained())
            .await
            .is_ok();
        if drained {
            tracing::info!(
                app = %version.app(), version = %version.id(), %why, in_flight,
                drain_ms = started.elapsed().as_millis() as u64,
                "old version drained and retired"
            );
        } else {
            let cancelled = version.in_flight().count();
            version.cancel_in_flight();
            tracing::warn!(
                app = %version.app(), version = %version.id(), %why, cancelled,
                timeout = ?timeout,
                "drain timeout reached; cancelled the requests still running on the old version"
            );
        }
    });
}
