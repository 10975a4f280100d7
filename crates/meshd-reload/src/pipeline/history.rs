//! The versions each app keeps in the artifact store: recorded when they go
//! live, read for rollbacks, and read at start-up to bring back the apps
//! the admin API deployed.

use super::prepare::{put_spec, Deployed};
use super::Pipeline;
use crate::change::AppSpec;
use meshd_artifacts::{ArtifactStore, Digest, StoredVersion};
use meshd_registry::{Origin, Refused};
use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

/// One write to the artifact store. All writes go through one queue, in
/// order, so that a removal and a later deploy of the same name never swap.
pub(super) struct Job {
    app: String,
    kind: JobKind,
    /// Where the outcome goes for a write the pipeline waits for; without
    /// it the new kept list comes back through the pipeline's updates.
    done: Option<oneshot::Sender<Result<Vec<StoredVersion>, String>>>,
}

enum JobKind {
    /// Store the bytes (if given and missing), then record the version.
    Record(Option<Box<AppSpec>>, StoredVersion),
    /// Forget the app's versions.
    Forget,
}

/// A new kept list of an app, written in the background.
pub(super) type KeptUpdate = (String, Vec<StoredVersion>);

/// How often blobs no kept version names (refused uploads, ended canaries)
/// are collected, besides at start-up.
const COLLECT_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// At most this many queued jobs run in one blocking call, and their kept
/// lists come back in one message. A start-up queues a job per app: one
/// thread hand-off and one publish of the whole registry per job made that
/// quadratic in the number of apps.
const MAX_JOBS_AT_ONCE: usize = 1024;

/// Runs the store's writes one after another until the pipeline goes away,
/// and collects unnamed blobs at start and every hour.
pub(super) async fn write_history(
    store: ArtifactStore,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    updates: mpsc::UnboundedSender<Vec<KeptUpdate>>,
) {
    let mut collect = tokio::time::interval(COLLECT_EVERY);
    collect.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    loop {
        tokio::select! {
            received = jobs.recv_many(&mut batch, MAX_JOBS_AT_ONCE) => {
                if received == 0 {
                    return;
                }
            }
            _ = collect.tick() => {
                let store = store.clone();
                match tokio::task::spawn_blocking(move || store.collect_garbage()).await {
                    Ok(Ok(0)) | Err(_) => {}
                    Ok(Ok(deleted)) => tracing::info!(deleted, "artifact store: deleted blobs no kept version names"),
                    Ok(Err(e)) => tracing::warn!(error = %e, "artifact store: cannot collect unused blobs"),
                }
                continue;
            }
        };
        write(&store, std::mem::take(&mut batch), &updates).await;
    }
}

/// Runs `jobs` in order, in one blocking call.
async fn write(
    store: &ArtifactStore,
    jobs: Vec<Job>,
    updates: &mpsc::UnboundedSender<Vec<KeptUpdate>>,
) {
    let store = store.clone();
    let written = tokio::task::spawn_blocking(move || {
        let outcomes: Vec<Result<Vec<StoredVersion>, String>> =
            jobs.iter().map(|job| run(&store, job)).collect();
        (jobs, outcomes)
    })
    .await;
    let (jobs, outcomes) = match written {
        Ok(written) => written,
        // meshd is stopping: the runtime dropped the call before it ran.
        // What was not written is written again from the source next time.
        Err(e) if e.is_cancelled() => return,
        Err(e) => {
            // Only a write that panicked: nothing of the batch is known.
            tracing::error!(error = %e, "the artifact store writer panicked");
            return;
        }
    };
    let mut kept_lists = Vec::new();
    for (Job { app, done, .. }, outcome) in jobs.into_iter().zip(outcomes) {
        match done {
            Some(done) => {
                let _ = done.send(outcome);
            }
            None => match outcome {
                Ok(kept) => kept_lists.push((app, kept)),
                Err(e) => {
                    tracing::warn!(app = %app, error = %e, "cannot keep the version in the artifact store; it serves, but cannot be rolled back to");
                }
            },
        }
    }
    if !kept_lists.is_empty() {
        let _ = updates.send(kept_lists);
    }
}

/// Runs one job: the app's kept list after it, or why it failed.
fn run(store: &ArtifactStore, Job { app, kind, .. }: &Job) -> Result<Vec<StoredVersion>, String> {
    match kind {
        JobKind::Record(spec, version) => {
            if let Some(spec) = spec.as_deref() {
                put_spec(store, spec, &version.wasm, version.manifest.as_ref())?;
            }
            record(store, app, version.clone()).map_err(|e| e.to_string())
        }
        JobKind::Forget => store
            .forget(app)
            .map(|()| Vec::new())
            .map_err(|e| e.to_string()),
    }
}

impl Pipeline {
    /// Records each version that went live as its app's newest kept
    /// version (unless it already is). Versions from the directory are
    /// stored in the background, bytes included (`specs`); the others'
    /// bytes are stored already, and their record is waited for, so that a
    /// deploy answered as done survives a restart.
    pub(super) async fn keep_history(
        &mut self,
        went_live: &[(String, Deployed, Option<String>)],
        specs: &HashMap<String, AppSpec>,
    ) {
        let Some(jobs) = self.history.clone() else {
            return;
        };
        let mut waiting = Vec::new();
        for (name, deployed, _) in went_live {
            let Some(origin) = self.apps.get(name).map(|e| e.origin) else {
                continue;
            };
            let version = stored(deployed, origin);
            if origin == Origin::Dir {
                // Bytes the store holds already are not queued again: a
                // start-up with thousands of apps would otherwise hold every
                // app's .wasm in memory until the writer got to it.
                let spec = specs
                    .get(name)
                    .filter(|_| !self.store_holds(deployed))
                    .cloned()
                    .map(Box::new);
                let job = Job {
                    app: name.clone(),
                    kind: JobKind::Record(spec, version),
                    done: None,
                };
                let _ = jobs.send(job);
            } else {
                let (done, outcome) = oneshot::channel();
                let job = Job {
                    app: name.clone(),
                    kind: JobKind::Record(None, version),
                    done: Some(done),
                };
                if jobs.send(job).is_ok() {
                    waiting.push((name.clone(), outcome));
                }
            }
        }
        for (name, outcome) in waiting {
            match outcome.await {
                Ok(Ok(kept)) => {
                    if let Some(entry) = self.apps.get_mut(&name) {
                        entry.kept = kept.into();
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(app = %name, error = %e, "cannot record the version in the artifact store; it serves, but a restart or rollback may not find it")
                }
                Err(_) => tracing::warn!(app = %name, "the artifact store writer stopped"),
            }
        }
    }

    /// Whether the artifact store holds the code and manifest of
    /// `deployed` (two file lookups).
    fn store_holds(&self, deployed: &Deployed) -> bool {
        self.store.as_ref().is_some_and(|store| {
            store.contains(&deployed.digest)
                && deployed
                    .manifest_digest
                    .as_ref()
                    .is_none_or(|m| store.contains(m))
        })
    }

    /// Forgets every kept version of `name` (it was removed), in order
    /// with the writes before it.
    pub(super) fn forget_history(&self, name: &str) {
        if let Some(jobs) = &self.history {
            let _ = jobs.send(Job {
                app: name.to_owned(),
                kind: JobKind::Forget,
                done: None,
            });
        }
    }

    /// Takes in kept lists written in the background.
    pub(super) fn take_kept(&mut self, (name, kept): KeptUpdate) {
        if let Some(entry) = self.apps.get_mut(&name) {
            if entry.live.is_some() {
                entry.kept = kept.into();
            }
        }
    }

    /// The spec of a kept version of `name`: `to` (a digest or its first 12
    /// hex digits), or the one before `current`.
    pub(super) async fn kept_spec(
        &self,
        name: &str,
        origin: Origin,
        to: Option<&str>,
        current: Option<&Deployed>,
    ) -> Result<AppSpec, Refused> {
        let store = self
            .store
            .clone()
            .ok_or_else(|| Refused::Store("meshd runs without an artifact store".into()))?;
        let (app, reader) = (name.to_owned(), store.clone());
        let kept = tokio::task::spawn_blocking(move || reader.versions(&app))
            .await
            .map_err(|e| Refused::Internal(e.to_string()))?
            .map_err(|e| Refused::Store(e.to_string()))?;
        let target = match to {
            Some(wanted) => {
                let wanted = wanted.strip_prefix("sha256:").unwrap_or(wanted);
                let matches: Vec<&StoredVersion> = kept
                    .iter()
                    .filter(|v| wanted.len() >= 12 && v.wasm.to_hex().starts_with(wanted))
                    .collect();
                // The newest of that code (its manifest may have changed).
                matches
                    .last()
                    .copied()
                    .cloned()
                    .ok_or_else(|| Refused::NoSuchVersion {
                        app: name.to_owned(),
                        version: wanted.to_owned(),
                    })?
            }
            None => {
                let current = current.ok_or_else(|| Refused::NothingToRollBack(name.to_owned()))?;
                let at = kept.iter().rposition(|v| {
                    v.wasm == current.digest && v.manifest == current.manifest_digest
                });
                match at {
                    Some(at) if at > 0 => kept[at - 1].clone(),
                    _ => return Err(Refused::NothingToRollBack(name.to_owned())),
                }
            }
        };
        let app = name.to_owned();
        tokio::task::spawn_blocking(move || spec_of(&store, &app, origin, &target))
            .await
            .map_err(|e| Refused::Internal(e.to_string()))?
    }

    /// Deploys again every app whose newest kept version came from the
    /// admin API (and, on a node that follows a mesh, from the mesh): those
    /// live nowhere else on this machine.
    pub(super) async fn restore(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut origins = vec![Origin::Api];
        if self.config.restore_mesh {
            origins.push(Origin::Mesh);
        }
        let specs = tokio::task::spawn_blocking(move || restorable(&store, &origins))
            .await
            .unwrap_or_default();
        if specs.is_empty() {
            return;
        }
        tracing::info!(
            apps = specs.len(),
            "restoring the apps deployed through the admin API or the mesh"
        );
        for batch in specs.chunks(super::MAX_RESTORE_BATCH) {
            self.deploy(batch.to_vec()).await;
        }
    }
}

fn stored(d: &Deployed, origin: Origin) -> StoredVersion {
    StoredVersion {
        wasm: d.digest,
        manifest: d.manifest_digest,
        deployed_at: d.deployed_at,
        origin: origin.as_str().to_owned(),
    }
}

/// Records `version` unless it is the newest already (a restart, or an
/// unchanged file): no write for what is known.
fn record(
    store: &ArtifactStore,
    app: &str,
    version: StoredVersion,
) -> Result<Vec<StoredVersion>, meshd_artifacts::StoreError> {
    let kept = store.versions(app)?;
    if kept
        .last()
        .is_some_and(|newest| newest.same_content(&version))
    {
        return Ok(kept);
    }
    store.record(app, version)
}

/// A spec for a kept version, from its blobs.
fn spec_of(
    store: &ArtifactStore,
    app: &str,
    origin: Origin,
    version: &StoredVersion,
) -> Result<AppSpec, Refused> {
    let bad = |e: meshd_artifacts::StoreError| Refused::Store(e.to_string());
    let wasm = store.get(&version.wasm).map_err(bad)?;
    let manifest = version
        .manifest
        .as_ref()
        .map(|digest: &Digest| store.get(digest))
        .transpose()
        .map_err(bad)?
        .map(|bytes| {
            String::from_utf8(bytes)
                .map_err(|_| Refused::Store(format!("the kept manifest of app {app} is not UTF-8")))
        })
        .transpose()?;
    Ok(AppSpec {
        name: app.to_owned(),
        origin,
        wasm: wasm.into(),
        manifest_label: manifest
            .as_ref()
            .map(|_| format!("manifest of kept version {}", version.wasm.short())),
        manifest,
        wasm_label: format!("kept version {}", version.wasm.short()),
    })
}

/// The specs of the apps whose newest kept version came from one of
/// `origins`.
fn restorable(store: &ArtifactStore, origins: &[Origin]) -> Vec<AppSpec> {
    let apps = match store.apps() {
        Ok(apps) => apps,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the artifact store; apps deployed through the admin API or the mesh are not restored");
            return Vec::new();
        }
    };
    // One small file per app, read on a few threads (see `readers`).
    let newest_of_each = crate::readers::read_all(apps, |app| {
        let newest = store.versions(&app).map(|kept| kept.last().cloned());
        (app, newest)
    });
    let mut specs = Vec::new();
    for (app, newest) in newest_of_each {
        let newest = match newest {
            Ok(newest) => newest,
            Err(e) => {
                tracing::error!(app = %app, error = %e, "cannot read the app's kept versions; not restored");
                continue;
            }
        };
        let Some((newest, origin)) = newest.and_then(|v| {
            let origin = v.origin.parse::<Origin>().ok()?;
            origins.contains(&origin).then_some((v, origin))
        }) else {
            continue;
        };
        match spec_of(store, &app, origin, &newest) {
            Ok(spec) => specs.push(spec),
            Err(e) => tracing::error!(app = %app, "cannot restore the app: {e}"),
        }
    }
    specs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer collects blobs no kept version names (a refused upload's)
    /// as soon as it starts, and keeps those a version names.
    #[tokio::test]
    async fn the_writer_collects_unnamed_blobs_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path(), 5)
            .unwrap()
            .with_garbage_grace(std::time::Duration::ZERO);
        let kept = store.put(b"kept code").unwrap();
        store
            .record(
                "app",
                StoredVersion {
                    wasm: kept,
                    manifest: None,
                    deployed_at: std::time::SystemTime::now(),
                    origin: "api".to_owned(),
                },
            )
            .unwrap();
        let refused = store.put(b"refused upload").unwrap();
        assert!(store.contains(&refused));

        let (_jobs, receiver) = mpsc::unbounded_channel();
        let (updates, _) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_history(store.clone(), receiver, updates));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.contains(&refused) {
            assert!(tokio::time::Instant::now() < deadline, "not collected");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.contains(&kept));
        writer.abort();
    }
}
