//! App discovery and manifests.
//!
//! An apps directory holds one `NAME.wasm` per app and, optionally, a
//! `NAME.toml` manifest beside it. This crate finds those files ([`scan`]) and
//! parses manifests ([`Manifest::load`]); it knows nothing about wasmtime or
//! HTTP connections.
#![deny(missing_docs)]

mod manifest;
mod scan;

pub use manifest::{Manifest, ManifestError};
pub use scan::{is_app_file, scan, AppFiles, ScanError};
