//! From an [`AppSpec`] to a version that may go live: the manifest parsed
//! and within the operator's ceiling, the code compiled (or the running
//! version reused when only the manifest changed, or nothing did).

use crate::change::AppSpec;
use crate::ReloadConfig;
use meshd_apps::{Ceiling, Limits, Manifest};
use meshd_artifacts::{ArtifactStore, Digest};
use meshd_registry::{Origin, Refused};
use meshd_routes::Route;
use meshd_tenant::{
    load_version_with_source, unloaded_version, AppLedger, AppVersion, LoadError, Preopen, Runtime,
    TenantSettings, WasmSource,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// A version of an app that is live, on trial, or may become either.
#[derive(Clone)]
pub(crate) struct Deployed {
    /// SHA-256 of the `.wasm`.
    pub digest: Digest,
    /// SHA-256 of the manifest text, if it has one.
    pub manifest_digest: Option<Digest>,
    pub manifest: Manifest,
    pub route: Route,
    pub version: Arc<AppVersion>,
    pub deployed_at: SystemTime,
    /// How messages name what sets its route: the manifest, else the code.
    pub label: String,
    /// How messages name its code.
    pub wasm_label: String,
}

impl Deployed {
    /// The canonical `[files]` directory of this version, if it has one.
    pub fn files_dir(&self) -> Option<PathBuf> {
        self.version
            .settings()
            .files
            .as_ref()
            .map(|f| f.host_dir.clone())
    }
}

/// Reads, checks and (unless the code is the running version's) compiles
/// one app version. Blocking and CPU-heavy: run it on a blocking thread.
///
/// The new version runs within the app's `ledger` (shared with its other
/// versions). With `previous` (the app's live version), unchanged code is
/// not recompiled.
pub(crate) fn prepare(
    runtime: &Arc<Runtime>,
    ledger: &Arc<AppLedger>,
    config: &ReloadConfig,
    store: Option<&ArtifactStore>,
    spec: &AppSpec,
    previous: Option<&Deployed>,
) -> Result<Deployed, Refused> {
    if spec.wasm.len() > config.max_wasm_size {
        return Err(Refused::TooLarge(format!(
            "{} is larger than --max-wasm-size ({}); not read",
            spec.wasm_label,
            bytesize::ByteSize(config.max_wasm_size)
        )));
    }
    let manifest = match (&spec.manifest, &spec.manifest_label) {
        (Some(text), label) => {
            let label = label.as_deref().unwrap_or("manifest");
            Manifest::parse(Path::new(label), text)
                .map_err(|e| Refused::InvalidManifest(e.to_string()))?
        }
        (None, _) => Manifest::default(),
    };
    let label = spec
        .manifest_label
        .clone()
        .unwrap_or_else(|| spec.wasm_label.clone());
    let route = manifest
        .mount_route(&spec.name)
        .map_err(|e| match &spec.manifest_label {
            Some(manifest) => {
                Refused::InvalidManifest(format!("invalid manifest {manifest}: key `route`: {e}"))
            }
            None => Refused::InvalidManifest(format!("app name cannot be a route: {e}")),
        })?;
    let settings = tenant_settings(
        &manifest,
        config.default_limits,
        config.ceiling,
        &config.apps_dir,
    )
    .map_err(|refusal| match refusal {
        Refused::OverCeiling(e) => Refused::OverCeiling(format!("{label}: {e}")),
        Refused::InvalidManifest(e) => Refused::InvalidManifest(format!("{label}: {e}")),
        other => other,
    })?;
    let digest = spec.wasm.digest();
    let manifest_digest = spec.manifest.as_deref().map(|m| Digest::of(m.as_bytes()));
    keep_bytes(store, spec, &digest, manifest_digest.as_ref())?;
    let deployed = |version| Deployed {
        digest,
        manifest_digest,
        manifest: manifest.clone(),
        route: route.clone(),
        version,
        deployed_at: SystemTime::now(),
        label: label.clone(),
        wasm_label: spec.wasm_label.clone(),
    };
    if let Some(previous) = previous.filter(|p| p.digest == digest) {
        // Same code: no recompile. Same settings too: the running version
        // stays (no drain); otherwise a new version of the same code.
        if previous.version.settings() == &settings {
            // Deployed when its manifest went live: now, if it is new.
            let deployed_at = if previous.manifest_digest == manifest_digest {
                previous.deployed_at
            } else {
                SystemTime::now()
            };
            return Ok(Deployed {
                deployed_at,
                ..deployed(previous.version.clone())
            });
        }
        return Ok(deployed(Arc::new(previous.version.with_settings(settings))));
    }
    let source = wasm_source(store, spec, digest);
    // A new app (not a redeploy: a new version of a running app is proven
    // before the old one is retired) with no health check, whose code and
    // settings passed their check before, starts unloaded: its code is
    // loaded on its first request. Anything else is loaded and checked now.
    let unloaded = (previous.is_none() && manifest.health.is_none())
        .then(|| {
            let wasm = spec.wasm.in_memory().map(|bytes| &bytes[..]);
            unloaded_version(
                runtime,
                ledger,
                &digest.short(),
                wasm,
                &digest,
                settings.clone(),
                Some(source.clone()),
            )
        })
        .flatten();
    let version = match unloaded {
        Some(version) => version,
        None => load_version_with_source(
            runtime,
            ledger,
            &digest.short(),
            &spec.wasm.read().map_err(Refused::Unreadable)?,
            &digest,
            settings,
            Some(source),
        )
        .map_err(|e| {
            let message = format!("{}: {e}", spec.wasm_label);
            match e {
                LoadError::Compile(_) => Refused::Compile(message),
                _ => Refused::InvalidComponent(message),
            }
        })?,
    };
    Ok(deployed(Arc::new(version)))
}

/// Where a version's `.wasm` is read again when its code was unloaded and
/// its compile-cache entry is gone: the artifact store (every version from
/// the API or the mesh; the directory's once they are kept there), else the
/// directory's file (only if it still holds the same bytes: the tenant
/// runtime checks the digest).
fn wasm_source(store: Option<&ArtifactStore>, spec: &AppSpec, digest: Digest) -> WasmSource {
    let store = store.cloned();
    let file = (spec.origin == Origin::Dir).then(|| PathBuf::from(&spec.wasm_label));
    Arc::new(move || {
        if let Some(store) = store.as_ref().filter(|s| s.contains(&digest)) {
            return store
                .get(&digest)
                .map_err(|e| anyhow::anyhow!("from the artifact store: {e}"));
        }
        match &file {
            Some(path) => std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display())),
            None => anyhow::bail!(
                "the artifact store does not hold version {}",
                digest.short()
            ),
        }
    })
}

/// Puts the bytes of a version from the API or the mesh in the artifact
/// store before it may go live: the store is where those apps live, so
/// failing to keep them refuses the version. The directory keeps its own
/// files; its versions are stored after they went live, in the background
/// (see `history`), so a slow disk never delays a deploy from it.
fn keep_bytes(
    store: Option<&ArtifactStore>,
    spec: &AppSpec,
    wasm: &Digest,
    manifest: Option<&Digest>,
) -> Result<(), Refused> {
    match store {
        Some(store) if spec.origin != Origin::Dir => {
            put_spec(store, spec, wasm, manifest).map_err(Refused::Store)
        }
        _ => Ok(()),
    }
}

/// Stores the code and manifest of `spec` unless they are stored already.
/// Code the directory did not read is read from its file now, and stored
/// only if it still has its digest.
pub(crate) fn put_spec(
    store: &ArtifactStore,
    spec: &AppSpec,
    wasm: &Digest,
    manifest: Option<&Digest>,
) -> Result<(), String> {
    let put = |bytes: &[u8]| store.put(bytes).map(drop).map_err(|e| e.to_string());
    // Asked before the bytes are got: an unread file is read only if needed.
    if !store.contains(wasm) {
        put(&spec.wasm.read()?)?;
    }
    match (manifest, &spec.manifest) {
        (Some(digest), Some(text)) if !store.contains(digest) => put(text.as_bytes()),
        _ => Ok(()),
    }
}

/// Resolves an app's limits and capabilities, within the operator's ceiling.
fn tenant_settings(
    manifest: &Manifest,
    defaults: Limits,
    ceiling: Ceiling,
    apps_dir: &Path,
) -> Result<TenantSettings, Refused> {
    let limits = manifest.limits.or(defaults).or(Limits::BUILT_IN);
    ceiling
        .check(manifest, &limits)
        .map_err(Refused::OverCeiling)?;
    let built_in = Limits::BUILT_IN;
    let memory = limits.memory.or(built_in.memory).unwrap_or_default();
    let files = manifest
        .files
        .as_ref()
        .map(|f| {
            f.resolve(apps_dir).map(|host_dir| Preopen {
                host_dir,
                writable: f.writable,
            })
        })
        .transpose()
        .map_err(Refused::InvalidManifest)?;
    Ok(TenantSettings {
        memory: usize::try_from(memory).map_err(|_| {
            Refused::InvalidManifest(format!("limits.memory {memory} is too large"))
        })?,
        timeout: limits.timeout.unwrap_or_default(),
        max_concurrency: limits.max_concurrency.unwrap_or(1),
        max_body: limits.max_body.unwrap_or_default(),
        cpu: limits.cpu,
        cpu_weight: limits.cpu_weight.unwrap_or(meshd_apps::DEFAULT_CPU_WEIGHT),
        env: manifest.env.clone().into_iter().collect(),
        files,
        outbound: manifest.outbound.rules(),
        config: manifest.config.clone().into_iter().collect(),
        reuse: manifest.reuse.unwrap_or(1),
    })
}
