//! Why the deploy pipeline refused a change: one type for every source, so
//! the apps directory can log it, the admin API can answer it as JSON, and
//! the mesh can report it, each with the same words.

use crate::Origin;

/// A change the pipeline did not apply. Nothing that serves changed; the
/// message names the app's files or upload and the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The manifest cannot be parsed or asks for something invalid.
    #[error("{0}")]
    InvalidManifest(String),
    /// The bytes are not a usable wasi:http component (empty, not wasm, a
    /// core module, invalid, missing the handler export).
    #[error("{0}")]
    InvalidComponent(String),
    /// Compiling failed or took longer than `--max-compile-time`.
    #[error("{0}")]
    Compile(String),
    /// Instantiation or the manifest's health check failed.
    #[error("{0}")]
    HealthCheck(String),
    /// The route is held or taken by another app, named in the message.
    #[error("{message}")]
    RouteConflict {
        /// The whole explanation.
        message: String,
        /// The app that has the route.
        holder: String,
    },
    /// The `[files]` directory overlaps one another app has.
    #[error("{message}")]
    DirConflict {
        /// The whole explanation.
        message: String,
        /// The app that has the directory.
        holder: String,
    },
    /// The manifest asks for more than meshd.toml's `[ceiling]`.
    #[error("{0}")]
    OverCeiling(String),
    /// The `.wasm` is larger than `--max-wasm-size`.
    #[error("{0}")]
    TooLarge(String),
    /// The app's files or upload cannot be read.
    #[error("{0}")]
    Unreadable(String),
    /// The app belongs to another source.
    #[error("app {app} comes from {owner}; {asked} cannot change it (remove it there first, or pick another name)")]
    OriginConflict {
        /// The app.
        app: String,
        /// The source it belongs to.
        owner: Origin,
        /// The source that asked.
        asked: Origin,
    },
    /// No app of that name.
    #[error("no app named {0}")]
    NotFound(String),
    /// The app keeps no such version.
    #[error("app {app} keeps no version {version}")]
    NoSuchVersion {
        /// The app.
        app: String,
        /// The version asked for.
        version: String,
    },
    /// A rollback was asked for, but the app keeps no other version.
    #[error("app {0} keeps no version before the live one")]
    NothingToRollBack(String),
    /// Promote or abort of an app that has no canary.
    #[error("app {0} has no canary running")]
    NoCanary(String),
    /// A request that makes no sense (e.g. a canary share outside 1–99).
    #[error("{0}")]
    BadRequest(String),
    /// The artifact store failed (disk full, permissions).
    #[error("cannot keep the version in the artifact store: {0}")]
    Store(String),
    /// A task of the pipeline panicked or was cancelled.
    #[error("{0}")]
    Internal(String),
    /// meshd is shutting down.
    #[error("meshd is shutting down")]
    Stopped,
}

impl Refused {
    /// A short stable name of the kind of refusal, for scripts:
    /// `invalid_manifest`, `health_check`, `route_conflict`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::InvalidManifest(_) => "invalid_manifest",
            Refused::InvalidComponent(_) => "invalid_component",
            Refused::Compile(_) => "compile_error",
            Refused::HealthCheck(_) => "health_check",
            Refused::RouteConflict { .. } => "route_conflict",
            Refused::DirConflict { .. } => "dir_conflict",
            Refused::OverCeiling(_) => "over_ceiling",
            Refused::TooLarge(_) => "too_large",
            Refused::Unreadable(_) => "unreadable",
            Refused::OriginConflict { .. } => "origin_conflict",
            Refused::NotFound(_) => "not_found",
            Refused::NoSuchVersion { .. } => "no_such_version",
            Refused::NothingToRollBack(_) => "nothing_to_roll_back",
            Refused::NoCanary(_) => "no_canary",
            Refused::BadRequest(_) => "bad_request",
            Refused::Store(_) => "store",
            Refused::Internal(_) => "internal",
            Refused::Stopped => "stopped",
        }
    }

    /// Whether the refusal is about the app's code or manifest (what its
    /// author must fix), as opposed to the request or meshd itself.
    pub fn is_about_the_app(&self) -> bool {
        !matches!(
            self,
            Refused::NotFound(_)
                | Refused::NoSuchVersion { .. }
                | Refused::NothingToRollBack(_)
                | Refused::NoCanary(_)
                | Refused::BadRequest(_)
                | Refused::Store(_)
                | Refused::Internal(_)
                | Refused::Stopped
        )
    }
}
