//! What each `.wasm` of the apps directory held when it was last read: its
//! stamp (size, device, inode, modified and changed times) and SHA-256,
//! saved in the data directory. A start-up stats each file and, where the
//! stamp is the same, knows its digest without reading and hashing it: with
//! thousands of apps, reading and hashing their files was most of a start.
//!
//! A stamp is trusted only when the file had not changed for
//! [`SETTLE_TIME`] before it was read. The file system's clock is coarse
//! (a few milliseconds), so a file rewritten in place with the same size
//! just after it was read could keep a stamp that looks the same: the
//! "racy" case that git's index also guards against. The changed time
//! (ctime) moves on every write, rename and chmod and no user call sets it
//! back, so a file given an old modified time (`touch -d`) is still seen as
//! changed.
//!
//! The file is rewritten after a pass that changed what it would hold
//! (temporary file + rename). One that cannot be read or written is logged
//! and otherwise ignored: every file is then read, as without an index.

use meshd_artifacts::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a file must have been left alone before it was read for its
/// stamp to be trusted at the next start.
pub(crate) const SETTLE_TIME: Duration = Duration::from_secs(2);

/// The name of the index in the data directory.
pub const INDEX_FILE: &str = "apps-dir-index.json";

/// Cheap change detection of one file. Equal stamps mean an unchanged file
/// (within a running meshd, and across restarts once settled).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileStamp {
    len: u64,
    dev: u64,
    inode: u64,
    /// Modified time: seconds and nanoseconds since the Unix epoch.
    modified: (i64, i64),
    /// Status change time, as `modified`.
    changed: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file at `path` now.
    pub(crate) fn of(path: &Path) -> std::io::Result<FileStamp> {
        let meta = std::fs::metadata(path)?;
        Ok(FileStamp::from_metadata(&meta))
    }

    #[cfg(unix)]
    fn from_metadata(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            len: meta.len(),
            dev: meta.dev(),
            inode: meta.ino(),
            modified: (meta.mtime(), meta.mtime_nsec()),
            changed: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Without a changed time the stamp is never trusted across restarts.
    #[cfg(not(unix))]
    fn from_metadata(meta: &std::fs::Metadata) -> FileStamp {
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or((0, 0), |d| {
                (d.as_secs() as i64, i64::from(d.subsec_nanos()))
            });
        FileStamp {
            len: meta.len(),
            dev: 0,
            inode: 0,
            modified,
            changed: (i64::MAX, 0),
        }
    }

    /// The file's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file had been left alone for [`SETTLE_TIME`] at `read_at`
    /// (a time taken before the file was stamped and read). A file whose
    /// times are in the future never settles.
    pub(crate) fn settled_at(&self, read_at: SystemTime) -> bool {
        let Some(limit) = read_at
            .checked_sub(SETTLE_TIME)
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            return false;
        };
        let before = |(secs, nanos): (i64, i64)| {
            let Ok(secs) = u64::try_from(secs) else {
                return true;
            };
            let nanos = u32::try_from(nanos).unwrap_or(0);
            Duration::new(secs, 0).saturating_add(Duration::from_nanos(u64::from(nanos))) < limit
        };
        before(self.modified) && before(self.changed)
    }
}

/// The saved index: each `.wasm`'s [`key`] to its stamp and digest.
pub(crate) type Known = HashMap<PathBuf, (FileStamp, Digest)>;

/// How the index names a `.wasm`: its file name, so that the apps directory
/// spelled another way (relative, through a link) still finds it. The
/// stamp's device and inode pin the file itself.
pub(crate) fn key(wasm: &Path) -> &Path {
    wasm.file_name().map_or(wasm, Path::new)
}

#[derive(Serialize, Deserialize)]
struct IndexFile {
    files: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    /// The file's [`key`].
    path: PathBuf,
    stamp: FileStamp,
    sha256: Digest,
}

/// The index saved at `path`; empty if there is none (a first start) or it
/// cannot be used (logged).
pub(crate) fn load(path: &Path) -> Known {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Known::new(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the apps directory's index; every app's file is read");
            return Known::new();
        }
    };
    match serde_json::from_slice::<IndexFile>(&bytes) {
        Ok(index) => index
            .files
            .into_iter()
            .map(|entry| (entry.path, (entry.stamp, entry.sha256)))
            .collect(),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "the apps directory's index is unreadable; every app's file is read");
            Known::new()
        }
    }
}

/// Saves `entries` at `path` (creating its directory), replacing the file
/// in one step. A failure is logged.
pub(crate) fn save<'a>(
    path: &Path,
    entries: impl Iterator<Item = (&'a Path, &'a FileStamp, &'a Digest)>,
) {
    let index = IndexFile {
        files: entries
            .map(|(path, stamp, digest)| Entry {
                path: path.to_owned(),
                stamp: stamp.clone(),
                sha256: *digest,
            })
            .collect(),
    };
    if let Err(e) = try_save(path, &index) {
        tracing::warn!(file = %path.display(), error = %e, "cannot save the apps directory's index; the next start reads every app's file");
    }
}

fn try_save(path: &Path, index: &IndexFile) -> std::io::Result<()> {
    let json = serde_json::to_vec(index).map_err(std::io::Error::other)?;
    crate::atomic_file::replace(path, &json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm code").unwrap();
        let stamp = FileStamp::of(&wasm).unwrap();
        let digest = Digest::of(b"\0asm code");
        let path = dir.path().join("data").join(INDEX_FILE);
        save(&path, std::iter::once((key(&wasm), &stamp, &digest)));
        let known = load(&path);
        assert_eq!(known.len(), 1);
        // Found by file name, wherever the directory is.
        let elsewhere = Path::new("/srv/apps/hello.wasm");
        assert_eq!(known.get(key(elsewhere)), Some(&(stamp, digest)));
    }

    #[test]
    fn a_missing_or_broken_index_knows_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INDEX_FILE);
        assert!(load(&path).is_empty());
        std::fs::write(&path, b"{ not json").unwrap();
        assert!(load(&path).is_empty());
    }

    #[test]
    fn a_rewrite_in_place_with_the_old_modified_time_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"first").unwrap();
        let file = std::fs::File::options().write(true).open(&wasm).unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        file.set_modified(old).unwrap();
        let before = FileStamp::of(&wasm).unwrap();
        // Same size, same inode, the modified time set back: only the
        // changed time tells (it moves on the write and on the set-back).
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&wasm, b"other").unwrap();
        file.set_modified(old).unwrap();
        let after = FileStamp::of(&wasm).unwrap();
        assert_eq!(
            (before.len, before.inode, before.modified),
            (after.len, after.inode, after.modified)
        );
        assert_ne!(before, after);
    }

    #[test]
    fn only_a_file_left_alone_before_it_was_read_is_settled() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"code").unwrap();
        let stamp = FileStamp::of(&wasm).unwrap();
        let now = SystemTime::now();
        // Read just after it was written: its stamp may not tell a rewrite.
        assert!(!stamp.settled_at(now));
        assert!(stamp.settled_at(now + SETTLE_TIME + Duration::from_secs(1)));
        // A modified or changed time in the future never settles.
        let future = FileStamp {
            modified: (i64::MAX, 0),
            ..stamp.clone()
        };
        assert!(!future.settled_at(now + Duration::from_secs(3600)));
        let future = FileStamp {
            changed: (i64::MAX, 0),
            ..stamp
        };
        assert!(!future.settled_at(now + Duration::from_secs(3600)));
    }
}
