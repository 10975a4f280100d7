//! App discovery and manifests.
//!
//! An apps directory holds one `NAME.wasm` per app and, optionally, a
//! `NAME.toml` manifest beside it. This crate finds those files ([`scan`]) and
//! parses manifests ([`Manifest::load`]), including limits and the outbound
//! allowlist; it knows nothing about wasmtime or
//! HTTP connections.
#![deny(missing_docs)]

mod address;
mod ceiling;
mod limits;
mod manifest;
mod outbound;
mod scan;

pub use address::is_internal;
pub use ceiling::Ceiling;
pub use limits::{
    cores_text, parse_cores, parse_duration, Limits, DEFAULT_CPU_WEIGHT, MAX_DURATION,
};
pub use manifest::{Files, Manifest, ManifestError, Outbound};
pub use outbound::OutboundRule;
pub use scan::{is_app_file, scan, AppFiles, ScanError};
