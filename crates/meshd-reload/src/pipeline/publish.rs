//! Turning the pipeline's state into the registry's snapshot.

use super::{table, Entry, Pipeline};
use meshd_registry::{AppSet, AppStatus, Canary, Mount, VersionInfo};
use std::sync::Arc;

impl Pipeline {
    /// Publishes the current state: routes of every live app (with its
    /// canary), and every app's status. Forgets apps that are gone.
    pub(super) fn publish(&mut self) {
        self.apps.retain(|_, entry| !entry.is_gone());
        let mut set = AppSet::default();
        for (name, entry) in &self.apps {
            if let Some(live) = &entry.live {
                let mount = Mount {
                    live: live.version.clone(),
                    canary: entry.canary.as_ref().map(|trial| Canary {
                        version: trial.deployed.version.clone(),
                        percent: trial.percent,
                        sticky_header: trial.sticky_header.clone(),
                    }),
                };
                // Placement left one app per route; a clash here would be a
                // bug, and the app that is already in keeps its route.
                if let Err(conflict) = set.routes.insert(live.route.clone(), Arc::new(mount)) {
                    tracing::error!(app = %name, "internal error: {conflict}; app not mounted");
                }
            }
            set.apps.insert(name.clone(), status_of(name, entry));
        }
        self.registry.publish(set);
    }

    /// Records who holds which route and directory now, and saves it if
    /// that changed.
    pub(super) fn update_holdings(&mut self) {
        let now = table::holdings_of(
            self.apps
                .iter()
                .filter_map(|(name, e)| e.live.as_ref().map(|live| (name, live))),
        );
        if now != self.holdings {
            if let Some(file) = &self.config.holdings_file {
                now.save(file);
            }
            self.holdings = now;
        }
    }
}

fn status_of(name: &str, entry: &Entry) -> AppStatus {
    let info = |d: &super::Deployed| VersionInfo {
        digest: d.digest,
        deployed_at: d.deployed_at,
        version: d.version.clone(),
    };
    AppStatus {
        name: name.to_owned(),
        origin: entry.origin,
        route: entry
            .live
            .as_ref()
            .map(|live| live.route.clone())
            .or_else(|| entry.asked_route.clone()),
        live: entry.live.as_ref().map(info),
        canary: entry
            .canary
            .as_ref()
            .map(|trial| (info(&trial.deployed), trial.percent)),
        canary_sticky_header: entry
            .canary
            .as_ref()
            .and_then(|trial| trial.sticky_header.clone()),
        kept: entry.kept.clone(),
        last_error: entry.last_error.clone(),
        deploying: entry.deploying,
        draining: entry.draining.clone(),
    }
}
