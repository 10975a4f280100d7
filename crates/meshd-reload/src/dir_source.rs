//! The apps directory as a source of apps: it scans the directory, notices
//! which apps' files changed (by size, mtime and inode), reads those, and
//! sends the pipeline a [`Snapshot`] of the directory.

use crate::change::{AppSpec, Applied, Change, PipelineHandle, Snapshot};
use meshd_apps::{scan, AppFiles};
use meshd_registry::{Origin, Refused, Registry};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// A snapshot carries at most this much code at once; more changed apps go
/// in further snapshots, so a start-up with thousands of apps never holds
/// all their code in memory.
const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

/// What one pass over the directory did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Apps serving after the pass (from any source).
    pub serving: usize,
    /// New versions that went live (new apps and updates).
    pub deployed: usize,
    /// Apps whose new files were refused (the previous version, if any,
    /// kept serving).
    pub failed: usize,
    /// Apps removed because their `.wasm` is gone.
    pub removed: usize,
}

/// The apps directory, as the pipeline last accepted it.
pub struct DirSource {
    dir: PathBuf,
    pipeline: PipelineHandle,
    registry: Arc<Registry>,
    max_wasm_size: u64,
    /// The files and stamps of each app whose last read the pipeline
    /// accepted; apps not here (new, or refused) are read again next pass.
    accepted: BTreeMap<String, (AppFiles, Stamp)>,
}

/// Cheap change detection: size, mtime and inode of each file. Only when it
/// changes are the files read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    wasm: FileStamp,
    manifest: Option<FileStamp>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// One app's files as read in a pass.
enum Read {
    Spec(Box<AppSpec>, Stamp, AppFiles),
    Unreadable(String, Refused),
}

impl DirSource {
    /// The directory `dir`, feeding `pipeline`.
    pub fn new(
        dir: &Path,
        pipeline: PipelineHandle,
        registry: Arc<Registry>,
        max_wasm_size: u64,
    ) -> Self {
        DirSource {
            dir: dir.to_owned(),
            pipeline,
            registry,
            max_wasm_size,
            accepted: BTreeMap::new(),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Scans the directory and has the pipeline match it: new and changed
    /// apps deployed (each only once its new version passed its checks),
    /// removed apps unmounted.
    pub async fn sync(&mut self) -> Summary {
        self.sync_holding(&BTreeSet::new()).await
    }

    /// [`DirSource::sync`], leaving the apps named in `held` as they are
    /// (serving or not): their files are still being written, so they are
    /// neither loaded nor removed in this pass.
    pub async fn sync_holding(&mut self, held: &BTreeSet<String>) -> Summary {
        let dir = self.dir.clone();
        let found = match tokio::task::spawn_blocking(move || scan(&dir)).await {
            Ok(Ok((found, errors))) => {
                for e in errors {
                    tracing::error!("{e}");
                }
                found
            }
            Ok(Err(e)) => {
                tracing::error!("{e}; keeping the apps that are serving");
                return self.summary_of(&BTreeMap::new(), 0);
            }
            Err(e) => {
                tracing::error!("scanning the apps directory failed: {e}");
                return self.summary_of(&BTreeMap::new(), 0);
            }
        };
        let mut present: BTreeSet<String> = found.keys().cloned().collect();
        present.extend(held.iter().cloned());
        let removed = self
            .accepted
            .keys()
            .filter(|name| !present.contains(*name))
            .count();
        self.accepted.retain(|name, _| present.contains(name));
        // An app whose files vanish between the scan and the stamp is seen
        // by the next pass. The stamp is taken before the read, so a file
        // changed in between is read again next pass, never missed.
        let to_read: Vec<(AppFiles, Stamp)> = found
            .into_iter()
            .filter(|(name, _)| !held.contains(name))
            .filter_map(|(name, files)| {
                let stamp = stamp(&files).ok()?;
                let same = self
                    .accepted
                    .get(&name)
                    .is_some_and(|(f, s)| *f == files && *s == stamp);
                (!same).then_some((files, stamp))
            })
            .collect();

        let mut outcomes = BTreeMap::new();
        let mut batches = batches(to_read);
        if batches.is_empty() {
            // Nothing to read: the snapshot still removes what is gone.
            batches.push(Vec::new());
        }
        for batch in batches {
            let max = self.max_wasm_size;
            let read = tokio::task::spawn_blocking(move || read_all(batch, max))
                .await
                .unwrap_or_default();
            let mut changed = Vec::new();
            let mut unreadable = Vec::new();
            let mut stamps = BTreeMap::new();
            for read in read {
                match read {
                    Read::Spec(spec, stamp, files) => {
                        stamps.insert(spec.name.clone(), (files, stamp));
                        changed.push(*spec);
                    }
                    Read::Unreadable(name, refusal) => unreadable.push((name, refusal)),
                }
            }
            let snapshot = Snapshot {
                origin: Origin::Dir,
                present: present.clone(),
                changed,
                unreadable,
            };
            let applied = match self.pipeline.apply(Change::Snapshot(snapshot)).await {
                Ok(Applied::Snapshot(applied)) => applied,
                Ok(other) => {
                    tracing::error!(?other, "unexpected answer to a snapshot");
                    BTreeMap::new()
                }
                Err(e) => {
                    tracing::error!("the deploy pipeline refused the directory's snapshot: {e}");
                    BTreeMap::new()
                }
            };
            for (name, outcome) in applied {
                match (&outcome, stamps.remove(&name)) {
                    (Ok(_), Some(stamped)) => {
                        self.accepted.insert(name.clone(), stamped);
                    }
                    _ => {
                        self.accepted.remove(&name);
                    }
                }
                outcomes.insert(name, outcome);
            }
        }
        self.summary_of(&outcomes, removed)
    }

    fn summary_of(
        &self,
        outcomes: &BTreeMap<String, Result<Applied, Refused>>,
        removed: usize,
    ) -> Summary {
        Summary {
            serving: self.registry.load().routes.len(),
            deployed: outcomes
                .values()
                .filter(|o| matches!(o, Ok(Applied::Deployed)))
                .count(),
            failed: outcomes.values().filter(|o| o.is_err()).count(),
            removed,
        }
    }
}

/// Splits the apps to read into batches of at most [`MAX_SNAPSHOT_BYTES`]
/// of code (by the size in their stamps; at least one app each).
fn batches(apps: Vec<(AppFiles, Stamp)>) -> Vec<Vec<(AppFiles, Stamp)>> {
    let mut batches: Vec<Vec<(AppFiles, Stamp)>> = Vec::new();
    let mut bytes = 0u64;
    for app in apps {
        let size = app.1.wasm.len;
        match batches.last_mut() {
            Some(batch) if bytes + size <= MAX_SNAPSHOT_BYTES => {
                bytes += size;
                batch.push(app);
            }
            _ => {
                bytes = size;
                batches.push(vec![app]);
            }
        }
    }
    batches
}

/// Reads a batch of apps (see [`crate::readers`]: on a few threads).
fn read_all(batch: Vec<(AppFiles, Stamp)>, max: u64) -> Vec<Read> {
    crate::readers::read_all(batch, |(files, stamp)| read_app(files, stamp, max))
}

/// Reads one app's files, stamped `stamp` just before: at most `max` bytes
/// of code (a larger or still growing file is never read whole), and its
/// manifest.
fn read_app(files: AppFiles, stamp: Stamp, max: u64) -> Read {
    let name = files.name.clone();
    let wasm = match read_wasm(&files.wasm, max) {
        Ok(wasm) => wasm,
        Err(refusal) => return Read::Unreadable(name, refusal),
    };
    let manifest = match &files.manifest {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) => return Read::Unreadable(name, Refused::Unreadable(describe(path, e))),
        },
        None => None,
    };
    let spec = AppSpec {
        name,
        origin: Origin::Dir,
        wasm: wasm.into(),
        manifest,
        wasm_label: files.wasm.display().to_string(),
        manifest_label: files.manifest.as_ref().map(|p| p.display().to_string()),
    };
    Read::Spec(Box::new(spec), stamp, files)
}

fn read_wasm(path: &Path, max: u64) -> Result<Vec<u8>, Refused> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| Refused::Unreadable(describe(path, e)))?;
    // Sized from the file's length: one read and no regrowing for a file
    // that is not growing (one byte more, to see the end without a probe).
    let expected = file.metadata().map_or(0, |m| m.len()).min(max);
    let mut wasm = Vec::with_capacity(usize::try_from(expected).unwrap_or(0).saturating_add(1));
    file.take(max.saturating_add(1))
        .read_to_end(&mut wasm)
        .map_err(|e| Refused::Unreadable(describe(path, e)))?;
    if wasm.len() as u64 > max {
        return Err(Refused::TooLarge(format!(
            "{} is larger than --max-wasm-size ({}); not read",
            path.display(),
            bytesize::ByteSize(max)
        )));
    }
    Ok(wasm)
}

fn describe(path: &Path, e: std::io::Error) -> String {
    format!("cannot read {}: {e}", path.display())
}

fn stamp(files: &AppFiles) -> std::io::Result<Stamp> {
    Ok(Stamp {
        wasm: file_stamp(&files.wasm)?,
        manifest: files.manifest.as_deref().map(file_stamp).transpose()?,
    })
}

fn file_stamp(path: &Path) -> std::io::Result<FileStamp> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(FileStamp {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}
