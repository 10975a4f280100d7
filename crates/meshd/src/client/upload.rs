//! What `deploy` and `canary` upload: a .wasm file, streamed from disk, and
//! the app's manifest if there is one; with a progress bar on a terminal.

use super::http::Failure;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};

/// Files smaller than this upload too fast for a progress bar to help.
const PROGRESS_FROM: u64 = 1024 * 1024;

/// Which manifest goes with the upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestChoice {
    /// `--manifest FILE`: that file, which must exist.
    Given(PathBuf),
    /// `--no-manifest`: none, even if FILE.toml exists.
    None,
    /// Neither flag: FILE with `.toml` instead of `.wasm`, if it exists.
    BesideTheWasm,
}

/// A manifest read whole (it is small text).
#[derive(Debug)]
pub struct Manifest {
    pub path: PathBuf,
    pub text: String,
}

/// A checked upload: the .wasm exists and is a file, the manifest is read.
#[derive(Debug)]
pub struct Upload {
    pub wasm: PathBuf,
    pub wasm_len: u64,
    pub manifest: Option<Manifest>,
}

/// The manifest `deploy FILE` sends when not told otherwise.
pub fn manifest_beside(wasm: &Path) -> PathBuf {
    wasm.with_extension("toml")
}

impl Upload {
    /// Checks the files before anything is sent.
    pub fn prepare(wasm: &Path, manifest: &ManifestChoice) -> Result<Upload, Failure> {
        let metadata = std::fs::metadata(wasm)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", wasm.display())))?;
        if !metadata.is_file() {
            return Err(Failure::Usage(format!("{} is not a file", wasm.display())));
        }
        let manifest_path = match manifest {
            ManifestChoice::Given(path) => Some(path.clone()),
            ManifestChoice::None => None,
            ManifestChoice::BesideTheWasm => {
                Some(manifest_beside(wasm)).filter(|path| path.is_file())
            }
        };
        let manifest = match manifest_path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    Failure::Usage(format!("cannot read the manifest {}: {e}", path.display()))
                })?;
                Some(Manifest { path, text })
            }
            None => None,
        };
        Ok(Upload {
            wasm: wasm.to_owned(),
            wasm_len: metadata.len(),
            manifest,
        })
    }

    /// The .wasm's file name, as the multipart part's filename.
    pub fn file_name(&self) -> String {
        self.wasm.file_name().map_or_else(
            || "app.wasm".to_owned(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Opens the .wasm for sending, behind a progress bar when one helps.
    pub fn open(&self) -> Result<Box<dyn Read + Send>, Failure> {
        let file = File::open(&self.wasm)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", self.wasm.display())))?;
        if !shows_progress(std::io::stderr().is_terminal(), self.wasm_len) {
            return Ok(Box::new(file));
        }
        let bar = ProgressBar::new(self.wasm_len).with_message(self.file_name());
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        Ok(Box::new(FinishOnEof {
            inner: bar.wrap_read(file),
            bar,
        }))
    }
}

/// A bar only on a terminal (never in a pipe or a log) and only for files
/// large enough to take a while.
pub fn shows_progress(stderr_is_terminal: bool, len: u64) -> bool {
    stderr_is_terminal && len >= PROGRESS_FROM
}

/// Clears the bar once the whole file is read, so the answer that follows
/// is not printed on the bar's line.
struct FinishOnEof<R> {
    inner: R,
    bar: ProgressBar,
}

impl<R: Read> Read for FinishOnEof<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.bar.finish_and_clear();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_on_a_terminal_and_for_large_files() {
        assert!(shows_progress(true, 5 * 1024 * 1024));
        assert!(shows_progress(true, PROGRESS_FROM));
        assert!(!shows_progress(true, PROGRESS_FROM - 1));
        assert!(!shows_progress(false, 5 * 1024 * 1024));
    }

    #[test]
    fn the_manifest_beside_the_wasm_is_used_only_if_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        std::fs::write(&wasm, b"\0asm").unwrap();

        let upload = Upload::prepare(&wasm, &ManifestChoice::BesideTheWasm).unwrap();
        assert!(upload.manifest.is_none());
        assert_eq!(upload.wasm_len, 4);

        std::fs::write(dir.path().join("hello.toml"), "route = \"/hi\"\n").unwrap();
        let upload = Upload::prepare(&wasm, &ManifestChoice::BesideTheWasm).unwrap();
        let manifest = upload.manifest.unwrap();
        assert_eq!(manifest.path, dir.path().join("hello.toml"));
        assert_eq!(manifest.text, "route = \"/hi\"\n");

        let upload = Upload::prepare(&wasm, &ManifestChoice::None).unwrap();
        assert!(upload.manifest.is_none());
    }

    #[test]
    fn missing_files_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let wasm = dir.path().join("hello.wasm");
        let failure = Upload::prepare(&wasm, &ManifestChoice::BesideTheWasm).unwrap_err();
        assert_eq!(failure.exit_code(), super::super::http::EXIT_USAGE);

        std::fs::write(&wasm, b"\0asm").unwrap();
        let given = ManifestChoice::Given(dir.path().join("other.toml"));
        let failure = Upload::prepare(&wasm, &given).unwrap_err();
        assert!(failure.to_string().contains("other.toml"), "{failure}");

        let failure = Upload::prepare(dir.path(), &ManifestChoice::None).unwrap_err();
        assert!(failure.to_string().contains("is not a file"), "{failure}");
    }
}
