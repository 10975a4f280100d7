//! The checks a new version passes before it takes traffic: one
//! instantiation, then the manifest's health check if it has one.

use super::prepare::Deployed;
use meshd_registry::Refused;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Checks every version in `new`, all at once within a bound, and returns
/// the refusal of each that failed (by app name).
pub(crate) async fn check_all(
    new: Vec<(String, Deployed)>,
    max_instances: u32,
    health_timeout: Duration,
) -> BTreeMap<String, Refused> {
    // Each check holds an instance slot while it runs (waiting for one
    // while traffic holds them all), so many new apps at once (a start-up
    // with thousands) must not check all at once: that would take every
    // slot from the traffic (and once ran the pool out and refused apps
    // that were fine).
    let permits = Arc::new(Semaphore::new(max_concurrent_checks(max_instances)));
    let mut checks = JoinSet::new();
    let mut names = HashMap::new();
    for (name, new) in new {
        let permits = permits.clone();
        let task_name = name.clone();
        let task = checks.spawn(async move {
            // The semaphore is never closed, so this always gets one.
            let _permit = permits.acquire_owned().await.ok();
            let version = &new.version;
            // A version that started unloaded passed this check before
            // (same code, same settings, this engine) and has no health
            // check: checking it again would load its code at start-up,
            // which lazy start is there to avoid.
            if version.was_checked() {
                return (name, Ok(()));
            }
            let result = match version.instantiate_once().await {
                Err(e) => Err(format!("cannot instantiate: {e:#}")),
                Ok(()) => match &new.manifest.health {
                    Some(path) => {
                        crate::health::check(version, &new.route, path, health_timeout).await
                    }
                    None => Ok(()),
                },
            };
            let result = result.map_err(|cause| format!("{}: {cause}", new.wasm_label));
            if result.is_ok() {
                tracing::info!(app = %name, version = %version.id(), "health check passed");
            }
            (name, result)
        });
        names.insert(task.id(), task_name);
    }
    let mut refused = BTreeMap::new();
    while let Some(joined) = checks.join_next().await {
        if let Some((name, Err(cause))) = outcome(joined, &names) {
            refused.insert(name, Refused::HealthCheck(cause));
        }
    }
    refused
}

/// The outcome of one app's task of a [`JoinSet`]: what it returned, or, if
/// it panicked (or was cancelled), a failure that says so. A task that
/// panicked must never count as passed. `None` only for a task the caller
/// does not know (never happens).
pub(crate) fn outcome<T>(
    joined: Result<(String, Result<T, String>), tokio::task::JoinError>,
    names: &HashMap<tokio::task::Id, String>,
) -> Option<(String, Result<T, String>)> {
    match joined {
        Ok(done) => Some(done),
        Err(e) => {
            let name = names.get(&e.id())?.clone();
            let why = if e.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            };
            tracing::error!(app = %name, "the task loading or checking the app {why}: {e}");
            Some((
                name,
                Err(format!("loading or checking the new version {why}")),
            ))
        }
    }
}

/// How many pre-traffic checks run at once: enough to keep the cores busy
/// and hide a slow health endpoint, and never more than a quarter of the
/// instance budget, so checks leave the pool (sized `2 × max_instances`)
/// to the traffic.
fn max_concurrent_checks(max_instances: u32) -> usize {
    (max_instances as usize / 4).clamp(1, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_a_failure() {
        let mut checks = JoinSet::new();
        let mut names = HashMap::new();
        let task = checks.spawn(async {
            if std::hint::black_box(true) {
                panic!("the check blew up");
            }
            ("shop".to_owned(), Ok::<(), String>(()))
        });
        names.insert(task.id(), "shop".to_owned());
        let task = checks.spawn(async { ("fine".to_owned(), Ok::<(), String>(())) });
        names.insert(task.id(), "fine".to_owned());

        let mut outcomes = BTreeMap::new();
        while let Some(joined) = checks.join_next().await {
            let (name, result) = outcome(joined, &names).expect("a known task");
            outcomes.insert(name, result);
        }
        let failure = outcomes["shop"].as_ref().unwrap_err();
        assert!(failure.contains("panicked"), "{failure}");
        assert_eq!(outcomes["fine"], Ok(()));
    }
}
