//! The apps directory as a source of apps: it scans the directory, notices
//! which apps' files changed (by their stamps: size, inode, modified and
//! changed times), reads those, and sends the pipeline a [`Snapshot`] of the
//! directory.
//!
//! At start, a `.wasm` whose stamp is the one the saved index
//! (`dir_index`) knows is not read: the pipeline gets its digest, and reads
//! the file only if it must compile or store the code.

use crate::change::{AppSpec, Applied, Change, PipelineHandle, Snapshot, Wasm};
use crate::dir_index::{self, FileStamp, Known};
use meshd_apps::{scan, AppFiles};
use meshd_artifacts::Digest;
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
    accepted: BTreeMap<String, Accepted>,
    /// Where the index of the directory's files is saved (`None`: it is not).
    index_file: Option<PathBuf>,
    /// Whether the first pass has read the saved index (only it uses it:
    /// later passes know every accepted file's stamp already).
    index_used: bool,
    /// The last save of the index, which the next one waits for.
    saving: Option<tokio::task::JoinHandle<()>>,
}

/// Cheap change detection: the stamps of an app's files. Only when they
/// change are the files read.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    wasm: FileStamp,
    manifest: Option<FileStamp>,
}

/// An app's files as the pipeline last accepted them.
struct Accepted {
    files: AppFiles,
    stamp: Stamp,
    digest: Digest,
    /// Whether its `.wasm` was left alone long enough before it was read
    /// for the index to keep it (see `dir_index`).
    settled: bool,
}

/// One app to read in a pass: its files, their stamps, and the digest of
/// its `.wasm` if the index knows the file unchanged.
struct ToRead {
    files: AppFiles,
    stamp: Stamp,
    known: Option<Digest>,
}

/// One app's files as read in a pass.
enum Read {
    Spec(Box<AppSpec>, ToRead),
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
            index_file: None,
            index_used: false,
            saving: None,
        }
    }

    /// Keeps an index of the directory's files at `path` (in the data
    /// directory), so that the next start reads only the files that changed.
    pub fn with_index(mut self, path: PathBuf) -> Self {
        self.index_file = Some(path);
        self
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
        // Before any file is stamped: see `FileStamp::settled_at`.
        let pass_started = SystemTime::now();
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
        let mut index_changed = removed > 0;
        let known = self.load_index().await;
        // An app whose files vanish between the scan and the stamp is seen
        // by the next pass. The stamp is taken before the read, so a file
        // changed in between is read again next pass, never missed.
        let to_read: Vec<ToRead> = found
            .into_iter()
            .filter(|(name, _)| !held.contains(name))
            .filter_map(|(name, files)| {
                let stamp = stamp(&files).ok()?;
                let same = self
                    .accepted
                    .get(&name)
                    .is_some_and(|a| a.files == files && a.stamp == stamp);
                if same {
                    return None;
                }
                let known = known
                    .as_ref()
                    .and_then(|known| known.get(dir_index::key(&files.wasm)))
                    .filter(|(known, _)| *known == stamp.wasm)
                    .map(|(_, digest)| *digest);
                Some(ToRead {
                    files,
                    stamp,
                    known,
                })
            })
            .collect();
        if let Some(known) = known {
            let unread = to_read.iter().filter(|app| app.known.is_some()).count();
            // Entries of files gone or changed since: the index is saved
            // again without them.
            index_changed |= unread != known.len();
            tracing::info!(
                unread,
                read = to_read.len() - unread,
                "apps directory: {unread} apps' code known unchanged by the index (not read)"
            );
        }

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
                    Read::Spec(spec, app) => {
                        stamps.insert(spec.name.clone(), (app, spec.wasm.digest()));
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
                    (Ok(_), Some((app, digest))) => {
                        // Code the index knew leaves it as it was: a
                        // restart of an unchanged directory writes nothing.
                        index_changed |= app.known.is_none();
                        let accepted = Accepted {
                            settled: app.stamp.wasm.settled_at(pass_started),
                            files: app.files,
                            stamp: app.stamp,
                            digest,
                        };
                        self.accepted.insert(name.clone(), accepted);
                    }
                    _ => {
                        index_changed |= self.accepted.remove(&name).is_some();
                    }
                }
                outcomes.insert(name, outcome);
            }
        }
        if index_changed {
            self.save_index().await;
        }
        self.summary_of(&outcomes, removed)
    }

    /// The saved index, at the first pass; `None` after it, or without one.
    async fn load_index(&mut self) -> Option<Known> {
        let path = match &self.index_file {
            Some(path) if !self.index_used => path.clone(),
            _ => return None,
        };
        self.index_used = true;
        let known = tokio::task::spawn_blocking(move || dir_index::load(&path)).await;
        Some(known.unwrap_or_default())
    }

    /// Saves the index of the accepted files that had settled, in the
    /// background (after the previous save, so the newest always lands
    /// last): a pass does not wait for the disk.
    async fn save_index(&mut self) {
        let Some(path) = self.index_file.clone() else {
            return;
        };
        if let Some(previous) = self.saving.take() {
            let _ = previous.await;
        }
        let entries: Vec<(PathBuf, FileStamp, Digest)> = self
            .accepted
            .values()
            .filter(|a| a.settled)
            .map(|a| {
                let key = dir_index::key(&a.files.wasm).to_owned();
                (key, a.stamp.wasm.clone(), a.digest)
            })
            .collect();
        self.saving = Some(tokio::task::spawn_blocking(move || {
            let entries = entries.iter().map(|(p, s, d)| (p.as_path(), s, d));
            dir_index::save(&path, entries);
        }));
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
/// of code (by the size in their stamps, none for code not read; at least
/// one app each).
fn batches(apps: Vec<ToRead>) -> Vec<Vec<ToRead>> {
    let mut batches: Vec<Vec<ToRead>> = Vec::new();
    let mut bytes = 0u64;
    for app in apps {
        let size = match app.known {
            Some(_) => 0,
            None => app.stamp.wasm.len(),
        };
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
fn read_all(batch: Vec<ToRead>, max: u64) -> Vec<Read> {
    crate::readers::read_all(batch, |app| read_app(app, max))
}

/// Reads one app's files, stamped just before: at most `max` bytes of code
/// (a larger or still growing file is never read whole) and its SHA-256,
/// unless the index knows them, and its manifest.
fn read_app(app: ToRead, max: u64) -> Read {
    let files = &app.files;
    let name = files.name.clone();
    let wasm = match app.known {
        Some(digest) => Wasm::unread(files.wasm.clone(), app.stamp.wasm.len(), digest),
        None => match read_wasm(&files.wasm, max) {
            Ok(bytes) => {
                let digest = Digest::of(&bytes);
                Wasm::hashed(bytes.into(), digest)
            }
            Err(refusal) => return Read::Unreadable(name, refusal),
        },
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
        wasm,
        manifest,
        wasm_label: files.wasm.display().to_string(),
        manifest_label: files.manifest.as_ref().map(|p| p.display().to_string()),
    };
    Read::Spec(Box::new(spec), app)
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
        wasm: FileStamp::of(&files.wasm)?,
        manifest: files.manifest.as_deref().map(FileStamp::of).transpose()?,
    })
}
