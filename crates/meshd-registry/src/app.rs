//! The status of one app, as the admin API and the metrics show it.

use crate::Refused;
use meshd_artifacts::{Digest, StoredVersion};
use meshd_routes::Route;
use meshd_tenant::{AppVersion, InFlight};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

/// The source an app came from. Each app has exactly one; a source can only
/// change or remove its own apps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// The apps directory (`--apps`).
    Dir,
    /// The admin API (`--admin`), and the CLI on it.
    Api,
    /// The mesh (a desired state shared by many nodes).
    Mesh,
}

impl Origin {
    /// `dir`, `api` or `mesh`.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Dir => "dir",
            Origin::Api => "api",
            Origin::Mesh => "mesh",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Origin::Dir => "the apps directory",
            Origin::Api => "the admin API",
            Origin::Mesh => "the mesh",
        })
    }
}

/// A string that names no [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an origin (dir, api or mesh)")]
pub struct ParseOriginError(String);

impl FromStr for Origin {
    type Err = ParseOriginError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "dir" => Ok(Origin::Dir),
            "api" => Ok(Origin::Api),
            "mesh" => Ok(Origin::Mesh),
            other => Err(ParseOriginError(other.to_owned())),
        }
    }
}

/// Where an app stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppState {
    /// Its first version is being compiled and checked.
    Loading,
    /// A version serves it.
    Live,
    /// No version serves it: its last version was refused.
    Refused,
    /// Removed; its last versions are finishing their requests.
    Draining,
}

impl AppState {
    /// `loading`, `live`, `refused` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Loading => "loading",
            AppState::Live => "live",
            AppState::Refused => "refused",
            AppState::Draining => "draining",
        }
    }
}

/// One running version of an app.
#[derive(Clone)]
pub struct VersionInfo {
    /// The SHA-256 digest of its `.wasm` (its identity in the artifact
    /// store; [`AppVersion::id`] is its first 12 hex digits).
    pub digest: Digest,
    /// When it went live (or, for a canary, started its trial).
    pub deployed_at: SystemTime,
    /// The version itself, for its counters.
    pub version: Arc<AppVersion>,
}

/// Everything meshd knows about one app.
#[derive(Clone)]
pub struct AppStatus {
    /// The app's name.
    pub name: String,
    /// The source it came from.
    pub origin: Origin,
    /// Its route (of the live version; or asked for by the last attempt).
    pub route: Option<Route>,
    /// The version serving it.
    pub live: Option<VersionInfo>,
    /// A version on trial and its share of the traffic.
    pub canary: Option<(VersionInfo, u8)>,
    /// The header that keeps a client on one side of the canary, if any.
    pub canary_sticky_header: Option<http::HeaderName>,
    /// The versions kept for rollback, oldest first (the artifact store's
    /// list; the live one is among them).
    pub kept: Arc<[StoredVersion]>,
    /// Why its last change was refused, and when; cleared by a success.
    pub last_error: Option<(Refused, SystemTime)>,
    /// Whether a change of it is being compiled or checked right now.
    pub deploying: bool,
    /// The requests of a removed app's versions, still finishing (held
    /// without the versions, so that their code is freed when they drain).
    pub draining: Vec<Arc<InFlight>>,
}

impl AppStatus {
    /// An app meshd has heard of and not yet decided.
    pub fn new(name: &str, origin: Origin) -> Self {
        AppStatus {
            name: name.to_owned(),
            origin,
            route: None,
            live: None,
            canary: None,
            canary_sticky_header: None,
            kept: Arc::new([]),
            last_error: None,
            deploying: false,
            draining: Vec::new(),
        }
    }

    /// Where it stands now (draining is judged at the time of the call).
    pub fn state(&self) -> AppState {
        if self.live.is_some() {
            AppState::Live
        } else if self.deploying {
            AppState::Loading
        } else if self.is_draining() {
            AppState::Draining
        } else {
            AppState::Refused
        }
    }

    /// Whether versions of a removed app still have requests in flight.
    pub fn is_draining(&self) -> bool {
        self.draining.iter().any(|requests| requests.count() > 0)
    }

    /// Whether the app is gone: removed, and its versions drained. Such an
    /// entry is left out of listings and dropped at the next publish.
    pub fn is_gone(&self) -> bool {
        self.live.is_none() && !self.deploying && self.last_error.is_none() && !self.is_draining()
    }

    /// The app's requests in flight, across its versions.
    pub fn in_flight(&self) -> usize {
        self.live
            .iter()
            .chain(self.canary.as_ref().map(|(c, _)| c))
            .map(|v| v.version.in_flight().count())
            .sum::<usize>()
            + self
                .draining
                .iter()
                .map(|requests| requests.count())
                .sum::<usize>()
    }
}
