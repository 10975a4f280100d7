//! The changes other than a plain deploy: removal, a source's snapshot,
//! rollback, and the canary's start, promotion and abort.

use super::{prepare, Entry, Pipeline, Trial};
use crate::change::{Applied, CanarySource, Snapshot};
use crate::drain::retire;
use meshd_registry::{Origin, Refused};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::SystemTime;

impl Pipeline {
    /// Removes an app `origin` owns.
    pub(super) async fn remove_by(
        &mut self,
        name: &str,
        origin: Origin,
    ) -> Result<Applied, Refused> {
        self.owned(name, origin)?;
        self.remove(name).await;
        self.update_holdings();
        self.publish();
        Ok(Applied::Removed)
    }

    /// Unmounts `name` (its versions drain) and forgets its kept versions.
    /// The caller publishes.
    async fn remove(&mut self, name: &str) {
        let Some(entry) = self.apps.get_mut(name) else {
            return;
        };
        entry.last_error = None;
        entry.asked_route = None;
        let mut versions = Vec::new();
        if let Some(live) = entry.live.take() {
            tracing::info!(app = %name, version = %live.version.id(), "app removed; unmounting it after its requests drain");
            versions.push((live.version, "removed"));
            self.totals.count(&Ok(Applied::Removed));
        }
        if let Some(trial) = entry.canary.take() {
            versions.push((trial.deployed.version, "removed"));
        }
        for (version, why) in versions {
            entry.draining.push(version.in_flight().clone());
            retire(version, self.config.drain_timeout, why);
        }
        entry.kept = Arc::new([]);
        self.forget_history(name);
    }

    /// Applies one source's snapshot: removes its apps that are gone,
    /// refuses the unreadable, deploys the changed.
    pub(super) async fn snapshot(
        &mut self,
        snapshot: Snapshot,
    ) -> BTreeMap<String, Result<Applied, Refused>> {
        let Snapshot {
            origin,
            present,
            changed,
            unreadable,
        } = snapshot;
        let gone: Vec<String> = self
            .apps
            .iter()
            .filter(|(name, e)| e.origin == origin && !present.contains(*name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.remove(name).await;
        }
        let mut outcomes = BTreeMap::new();
        for (name, refusal) in unreadable {
            let entry = self
                .apps
                .entry(name.clone())
                .or_insert_with(|| Entry::new(&self.runtime, &name, origin));
            let conflict = entry.origin_conflict(&name, origin);
            let refusal = conflict.clone().unwrap_or(refusal);
            super::log_refusal(&name, &refusal, entry.live.as_ref());
            if conflict.is_none() {
                entry.origin = origin;
                entry.last_error = Some((refusal.clone(), SystemTime::now()));
            }
            self.totals.count(&Err(refusal.clone()));
            outcomes.insert(name, Err(refusal));
        }
        // A deploy publishes what it did; removals and refusals are
        // published here. The changed apps go in one deploy (the source
        // bounds a snapshot's size): each deploy places and publishes every
        // app, so batches of 1,024 made a start-up with thousands of apps
        // quadratic.
        let removed_or_refused = !gone.is_empty() || !outcomes.is_empty();
        if !changed.is_empty() {
            outcomes.extend(self.deploy(changed).await);
        }
        if removed_or_refused {
            self.update_holdings();
            self.publish();
        }
        outcomes
    }

    /// Deploys a kept version again.
    pub(super) async fn rollback(
        &mut self,
        name: &str,
        origin: Origin,
        to: Option<String>,
    ) -> Result<Applied, Refused> {
        let live = self.owned(name, origin)?.live.clone();
        let spec = self
            .kept_spec(name, origin, to.as_deref(), live.as_ref())
            .await?;
        tracing::info!(app = %name, to = %spec.wasm_label, "rolling back");
        let mut outcomes = self.deploy(vec![spec]).await;
        outcomes
            .remove(name)
            .unwrap_or_else(|| Err(Refused::Internal("no outcome".into())))
    }

    /// Starts (or replaces) a canary of a live app.
    pub(super) async fn canary(
        &mut self,
        name: &str,
        origin: Origin,
        from: CanarySource,
        percent: u8,
        sticky_header: Option<http::HeaderName>,
    ) -> Result<Applied, Refused> {
        if !(1..=99).contains(&percent) {
            return Err(Refused::BadRequest(format!(
                "a canary takes 1 to 99 percent of the requests, not {percent}"
            )));
        }
        let entry = self.owned(name, origin)?;
        let ledger = entry.ledger.clone();
        let live = entry.live.clone().ok_or_else(|| {
            Refused::BadRequest(format!(
                "app {name} has no live version to try a canary against"
            ))
        })?;
        let spec = match from {
            CanarySource::Upload(mut spec) => {
                spec.name = name.to_owned();
                spec.origin = origin;
                spec
            }
            CanarySource::Kept(version) => {
                self.kept_spec(name, origin, Some(&version), Some(&live))
                    .await?
            }
        };
        let (runtime, config, store) = (
            self.runtime.clone(),
            self.config.clone(),
            self.store.clone(),
        );
        let (task_spec, previous) = (spec.clone(), live.clone());
        let deployed = tokio::task::spawn_blocking(move || {
            prepare::prepare(
                &runtime,
                &ledger,
                &config,
                store.as_ref(),
                &task_spec,
                Some(&previous),
            )
        })
        .await
        .map_err(|e| Refused::Internal(format!("loading panicked: {e}")))?;
        let deployed = deployed.and_then(|d| {
            if Arc::ptr_eq(&d.version, &live.version) {
                return Err(Refused::BadRequest(format!(
                    "the canary is the live version of app {name}"
                )));
            }
            if d.route != live.route || d.files_dir() != live.files_dir() {
                return Err(Refused::BadRequest(format!(
                    "a canary of app {name} must keep its route {} and [files] directory; deploy the change instead",
                    live.route
                )));
            }
            Ok(d)
        });
        let deployed = match deployed {
            Ok(d) => {
                let failed = super::check::check_all(
                    vec![(name.to_owned(), d.clone())],
                    self.runtime.config().max_instances,
                    self.config.health_timeout,
                )
                .await;
                match failed.into_values().next() {
                    Some(refusal) => Err(refusal),
                    None => Ok(d),
                }
            }
            Err(refusal) => Err(refusal),
        };
        let Some(entry) = self.apps.get_mut(name) else {
            return Err(Refused::NotFound(name.to_owned()));
        };
        let deployed = match deployed {
            Ok(d) => d,
            Err(refusal) => {
                tracing::error!(app = %name, "canary refused: {refusal}; version {} keeps serving", live.version.id());
                self.totals.count(&Err(refusal.clone()));
                // Shown as the app's last error, as a refused deploy is.
                if refusal.is_about_the_app() {
                    entry.last_error = Some((refusal.clone(), SystemTime::now()));
                    self.publish();
                }
                return Err(refusal);
            }
        };
        entry.last_error = None;
        let version = deployed.version.clone();
        let replaced = entry.canary.replace(Trial {
            deployed,
            percent,
            sticky_header,
            spec,
        });
        self.publish();
        tracing::info!(app = %name, version = %version.id(), live = %live.version.id(), percent, "canary started");
        if let Some(old) = replaced {
            retire(
                old.deployed.version,
                self.config.drain_timeout,
                "canary replaced",
            );
        }
        Ok(Applied::Deployed)
    }

    /// The canary becomes the live version.
    pub(super) async fn promote(&mut self, name: &str, origin: Origin) -> Result<Applied, Refused> {
        let trial = self.take_canary(name, origin)?;
        let mut promoted = trial.deployed;
        promoted.deployed_at = SystemTime::now();
        let old = self
            .apps
            .get_mut(name)
            .and_then(|entry| entry.live.replace(promoted.clone()));
        // Its bytes may have been collected if the trial ran long: stored
        // again (if missing) before it is recorded.
        if let Some(store) = self.store.clone() {
            let (spec, d) = (trial.spec, promoted.clone());
            let stored = tokio::task::spawn_blocking(move || {
                super::prepare::put_spec(&store, &spec, &d.digest, d.manifest_digest.as_ref())
            })
            .await;
            if let Ok(Err(e)) = stored {
                tracing::warn!(app = %name, error = %e, "cannot keep the promoted version in the artifact store");
            }
        }
        self.keep_history(
            &[(name.to_owned(), promoted.clone(), None)],
            &HashMap::new(),
        )
        .await;
        self.publish();
        tracing::info!(app = %name, version = %promoted.version.id(), "canary promoted; it serves all requests");
        self.totals.count(&Ok(Applied::Deployed));
        if let Some(old) = old {
            retire(old.version, self.config.drain_timeout, "replaced");
        }
        Ok(Applied::Deployed)
    }

    /// Ends the canary of an app `origin` owns, returning it.
    fn take_canary(&mut self, name: &str, origin: Origin) -> Result<Trial, Refused> {
        self.owned(name, origin)?;
        self.apps
            .get_mut(name)
            .and_then(|entry| entry.canary.take())
            .ok_or_else(|| Refused::NoCanary(name.to_owned()))
    }

    /// The canary stops; the live version serves everything.
    pub(super) async fn abort(&mut self, name: &str, origin: Origin) -> Result<Applied, Refused> {
        let trial = self.take_canary(name, origin)?;
        self.publish();
        tracing::info!(app = %name, version = %trial.deployed.version.id(), "canary aborted; the live version serves all requests");
        retire(
            trial.deployed.version,
            self.config.drain_timeout,
            "canary aborted",
        );
        Ok(Applied::Deployed)
    }
}
