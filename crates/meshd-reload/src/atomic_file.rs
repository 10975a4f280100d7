//! Small state files in the data directory, replaced in one step: written
//! to a temporary file beside the target, flushed to disk, then renamed over
//! it, so a crash leaves the old file or the new one, never half of one.

use std::path::Path;

/// Replaces the file at `path` with `bytes` (creating its directory).
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
