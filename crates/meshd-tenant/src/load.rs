//! Turning the bytes of `NAME.wasm` into a version ready to serve: check what
//! the file is, compile it (or take it from the cache) and pre-instantiate it
//! against meshd's linker, so a missing import fails here and not on the first
//! request.

use crate::cache::CacheOutcome;
use crate::compile::CompileError;
use crate::engine::Runtime;
use crate::ledger::AppLedger;
use crate::settings::TenantSettings;
use crate::version::{AppVersion, Compiled};
use std::sync::Arc;
use std::time::Instant;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Why a file cannot become a running app. The message names the cause; the
/// caller adds the app and file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (it does not start with the \\0asm magic bytes)")]
    NotWasm,
    /// A core module, such as `wasm32-wasip1` or `wasm32-unknown-unknown`
    /// output.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The component binary does not validate or compile (e.g. truncated).
    #[error("invalid component: {0}")]
    Invalid(String),
    /// Compiling did not finish within `--max-compile-time`, or could not
    /// get a compile slot in that time.
    #[error("not compiled: {0}")]
    Compile(crate::compile::CompileError),
    /// An import the host does not provide, or of the wrong type.
    #[error("cannot link: {0}")]
    Link(String),
    /// The component does not export `wasi:http/incoming-handler`.
    #[error("not a wasi:http/proxy component: {0}")]
    NotHttp(String),
}

/// Checks, compiles and pre-instantiates one version of the app of `ledger`. Blocking and
/// CPU-heavy: run it with `spawn_blocking`.
pub fn load_version(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    id: &str,
    wasm: &[u8],
    settings: TenantSettings,
) -> Result<AppVersion, LoadError> {
    if wasm.is_empty() {
        return Err(LoadError::Empty);
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(wasm) {
        return Err(LoadError::CoreModule);
    }
    let digest = blake3::hash(wasm);
    let started = Instant::now();
    let (code, cache) = runtime.component(wasm, &digest).map_err(|e| match e {
        CompileError::Invalid(why) => LoadError::Invalid(why),
        other => LoadError::Compile(other),
    })?;
    let compile_time = started.elapsed();
    let instance_pre = runtime
        .linker
        .instantiate_pre(&code.0)
        .map_err(|e| LoadError::Link(format!("{e:#}")))?;
    let pre = ProxyPre::new(instance_pre).map_err(|e| LoadError::NotHttp(format!("{e:#}")))?;
    if let CacheOutcome::Replaced(reason) = &cache {
        tracing::warn!(app = %ledger.app(), version = %id, reason = %reason, "discarded an unusable cache entry and recompiled");
    }
    let compiled = Compiled {
        pre,
        code,
        cache,
        compile_time,
    };
    Ok(AppVersion::new(
        ledger,
        id.to_owned(),
        runtime.clone(),
        compiled,
        settings,
    ))
}
