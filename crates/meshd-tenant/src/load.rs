//! Turning the bytes of `NAME.wasm` into a version ready to serve: check what
//! the file is, compile it (or take it from the cache) and pre-instantiate it
//! against meshd's linker, so a missing import fails here and not on the first
//! request.

use crate::cache::CacheOutcome;
use crate::compile::CompileError;
use crate::engine::Runtime;
use crate::ledger::AppLedger;
use crate::resident::{pre_instantiate, Loaded, VersionCode, WasmSource};
use crate::settings::TenantSettings;
use crate::version::{AppVersion, Compiled};
use meshd_artifacts::Digest;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
///
/// Its code can be unloaded when idle (`--idle-unload`) and reloaded from
/// the compile cache; without a [`WasmSource`] (see
/// [`load_version_with_source`]) a reload whose cache entry is gone fails.
pub fn load_version(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    id: &str,
    wasm: &[u8],
    settings: TenantSettings,
) -> Result<AppVersion, LoadError> {
    let digest = Digest::of(wasm);
    load_version_with_source(runtime, ledger, id, wasm, &digest, settings, None)
}

/// [`load_version`] of `wasm` whose SHA-256 the caller computed already
/// (`digest`: it names the compiled code in the cache, so it must be the
/// digest of exactly these bytes), with where to read the `.wasm` again if
/// its code is unloaded and its compile-cache entry is gone by the next
/// request.
pub fn load_version_with_source(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    id: &str,
    wasm: &[u8],
    digest: &Digest,
    settings: TenantSettings,
    source: Option<WasmSource>,
) -> Result<AppVersion, LoadError> {
    check_bytes(wasm)?;
    let digest = *digest;
    let started = Instant::now();
    let (code, cache) = runtime.component(wasm, &digest).map_err(|e| match e {
        CompileError::Invalid(why) => LoadError::Invalid(why),
        other => LoadError::Compile(other),
    })?;
    let compile_time = started.elapsed();
    let pre = pre_instantiate(runtime, &code)?;
    if let CacheOutcome::Replaced(reason) = &cache {
        tracing::warn!(app = %ledger.app(), version = %id, reason = %reason, "discarded an unusable cache entry and recompiled");
    }
    let loaded = Arc::new(Loaded { pre, _code: code });
    let origin = Origin {
        digest,
        source,
        cache,
        compile_time,
    };
    Ok(new_version(
        runtime,
        ledger,
        id,
        settings,
        origin,
        Some(loaded),
    ))
}

/// Where a version's code comes from, and how it was got.
struct Origin {
    digest: Digest,
    source: Option<WasmSource>,
    cache: CacheOutcome,
    compile_time: Duration,
}

/// A version of the app of `ledger` with its code `loaded` now, or (`None`)
/// to be loaded on first use, in which case it already passed its
/// pre-traffic check in an earlier run.
fn new_version(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    id: &str,
    settings: TenantSettings,
    origin: Origin,
    loaded: Option<Arc<Loaded>>,
) -> AppVersion {
    let proven = loaded.is_none();
    let code = VersionCode::new(
        runtime,
        ledger.app_name(),
        id.to_owned(),
        origin.digest,
        origin.source,
        loaded,
    );
    let compiled = Compiled {
        code,
        proven,
        cache: origin.cache,
        compile_time: origin.compile_time,
    };
    AppVersion::new(ledger, id.to_owned(), runtime.clone(), compiled, settings)
}

/// A version whose code is left unloaded until its first request, if the
/// same `.wasm` with the same settings passed its pre-traffic check on this
/// engine before (a marker beside its compile-cache entry, which
/// [`AppVersion::instantiate_once`] writes) and its cache entry is there:
/// start-up then reads no compiled code. `None`: load it with
/// [`load_version_with_source`] (and check it) as usual. `digest` is the
/// SHA-256 of `wasm`, as there. `wasm` may be left unread (`None`) when the
/// digest is known: code that passed its check needs no bytes to start
/// unloaded (only an entry of the old cache name does, to be adopted).
/// Blocking (a few file reads).
pub fn unloaded_version(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    id: &str,
    wasm: Option<&[u8]>,
    digest: &Digest,
    settings: TenantSettings,
    source: Option<WasmSource>,
) -> Option<AppVersion> {
    if let Some(wasm) = wasm {
        check_bytes(wasm).ok()?;
    }
    let digest = *digest;
    let fingerprint = crate::version::settings_fingerprint(&settings);
    let checked = runtime.cache.was_checked(&digest, &fingerprint)
        || wasm.is_some_and(|wasm| {
            runtime
                .cache
                .adopt_old_entry(wasm, &digest, Some(&fingerprint))
                && runtime.cache.was_checked(&digest, &fingerprint)
        });
    if !checked {
        return None;
    }
    let origin = Origin {
        digest,
        source,
        cache: CacheOutcome::Unloaded,
        compile_time: Duration::ZERO,
    };
    Some(new_version(runtime, ledger, id, settings, origin, None))
}

/// Whether the bytes are a component, or why not.
fn check_bytes(wasm: &[u8]) -> Result<(), LoadError> {
    if wasm.is_empty() {
        return Err(LoadError::Empty);
    }
    if !wasm.starts_with(b"\0asm") {
        return Err(LoadError::NotWasm);
    }
    if wasmparser::Parser::is_core_wasm(wasm) {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}
