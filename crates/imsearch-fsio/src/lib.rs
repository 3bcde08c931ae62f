//! Atomic file writes: the one helper every imsearch crate uses to write a file that may be read
//! while it is written (report pages and plots, model caches, checkpoints, embedding caches, job
//! outputs).
//!
//! A file is written to a temporary name in its own folder (`.NAME.PID.N.part`), flushed, synced,
//! then renamed over the target. A reader sees the old file or the new one, never half of one. On
//! failure (or a panic in the caller's writer) the temporary is removed and the target keeps its
//! old content or stays absent; only a killed process leaves a temporary behind, and
//! [`remove_leftovers`] recognises those by their name.
//!
//! Where it sits: the lowest crate of the workspace, below even imsearch-types. Architecture
//! invariant: std and `thiserror` only, no other imsearch crate and no candle, so that any crate
//! may depend on it (`cargo tree -p imsearch-fsio -e normal` shows `thiserror` and its macros).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The suffix of the temporary files; a leftover of a killed run is named `.NAME.PID.N.part`.
pub const TEMP_SUFFIX: &str = ".part";

/// What went wrong while writing a file atomically; every variant names the target file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The temporary file could not be created (a missing folder, permissions).
    #[error("failed to create a temporary file next to {path}")]
    CreateTemp {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Writing, flushing or syncing the temporary file failed.
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The temporary file could not be renamed over the target.
    #[error("failed to rename {temp} to {path}")]
    Rename {
        path: PathBuf,
        temp: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The file that was being written.
    pub fn path(&self) -> &Path {
        match self {
            Error::CreateTemp { path, .. } | Error::Write { path, .. } | Error::Rename { path, .. } => path,
        }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes `path` atomically: `write` fills a temporary file in the same folder through a
/// buffered writer, which is flushed, synced and renamed over `path` only if `write` returns
/// `Ok`. The parent folder must exist.
///
/// The error of `write` is returned unchanged, so a writer can abort with its own error (a
/// checksum mismatch, say) and leave `path` untouched; failures of the helper itself become `E`
/// through `From<Error>`.
pub fn write_atomic<E: From<Error>>(path: &Path, write: impl FnOnce(&mut dyn Write) -> Result<(), E>) -> Result<(), E> {
    let write_err = |source| Error::Write { path: path.to_owned(), source };
    let (temp, file) = Temp::create(path)?;
    let mut w = BufWriter::with_capacity(1 << 16, file);
    write(&mut w)?;
    let file = w.into_inner().map_err(|e| write_err(e.into_error()))?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    Ok(temp.persist(path)?)
}

/// Writes `bytes` to `path` atomically (see [`write_atomic`]).
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|source| Error::Write { path: path.to_owned(), source }))
}

/// [`write_atomic`] for writers that only take a path (e.g. `candle::safetensors::save`):
/// `write` gets the temporary path, already created and empty, and may truncate or replace it.
/// What is at the temporary path afterwards is synced and renamed over `path`.
pub fn write_atomic_via_path<E: From<Error>>(path: &Path, write: impl FnOnce(&Path) -> Result<(), E>) -> Result<(), E> {
    let write_err = |source| Error::Write { path: path.to_owned(), source };
    let (temp, file) = Temp::create(path)?;
    drop(file);
    write(&temp.path)?;
    // Open again: the writer may have replaced the file rather than written into ours.
    let file = OpenOptions::new().write(true).open(&temp.path).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    drop(file);
    Ok(temp.persist(path)?)
}

/// Removes the temporaries that killed writes left in `dir` (hidden files ending in
/// [`TEMP_SUFFIX`]) and returns their paths. Call it only when nothing else writes into `dir`:
/// the temporaries of writes in progress look the same.
pub fn remove_leftovers(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) && fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// Distinguishes the temporaries of concurrent writes from one process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temporary file beside its target; removed when dropped unless it was renamed.
struct Temp {
    path: PathBuf,
    persisted: bool,
}

impl Temp {
    /// Creates `.NAME.PID.N.part` next to `target`, with a fresh `N` if a leftover of an earlier
    /// process with the same id holds the name.
    fn create(target: &Path) -> Result<(Temp, File)> {
        let dir = parent(target);
        let name = target.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy());
        let pid = std::process::id();
        let mut attempts = 0;
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!(".{name}.{pid}.{n}{TEMP_SUFFIX}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((Temp { path, persisted: false }, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 100 => attempts += 1,
                Err(source) => return Err(Error::CreateTemp { path: target.to_owned(), source }),
            }
        }
    }

    /// Renames the temporary over `target` and makes the rename durable where the platform can.
    fn persist(mut self, target: &Path) -> Result<()> {
        fs::rename(&self.path, target).map_err(|source| Error::Rename {
            path: target.to_owned(),
            temp: self.path.clone(),
            source,
        })?;
        self.persisted = true;
        sync_dir(parent(target));
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: a writer given the path may already have removed it.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The folder `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Syncs a folder so that a rename in it survives a crash; best effort, Unix only.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sorted file names in `dir`.
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_bytes_atomic(&path, b"first").unwrap();
        write_bytes_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert_eq!(names(dir.path()), ["a.txt"]);
    }

    #[test]
    fn a_failing_writer_leaves_the_old_content_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        write_bytes_atomic(&path, b"first").unwrap();

        let err = write_atomic(&path, |w| {
            w.write_all(b"half of the secon").unwrap();
            Err(Error::Write { path: path.clone(), source: io::Error::other("disk full") })
        })
        .unwrap_err();
        assert!(matches!(err, Error::Write { .. }), "{err:?}");
        assert_eq!(fs::read(&path).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["model.safetensors"]);

        // Nor does a failed first write create the target.
        let fresh = dir.path().join("fresh.json");
        let err = write_atomic_via_path(&fresh, |temp| {
            fs::write(temp, b"{").unwrap();
            Err(Error::Write { path: fresh.clone(), source: io::Error::other("bad json") })
        });
        assert!(err.is_err());
        assert_eq!(names(dir.path()), ["model.safetensors"]);
    }

    #[test]
    fn a_panicking_writer_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        let result = std::panic::catch_unwind(|| {
            let _ = write_atomic::<Error>(&path, |_| panic!("writer panicked"));
        });
        assert!(result.is_err());
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn the_writer_sees_a_recognisable_temporary_in_the_target_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.safetensors");
        write_atomic::<Error>(&path, |w| {
            let during = names(dir.path());
            assert_eq!(during.len(), 1, "{during:?}");
            assert!(during[0].starts_with(".cache.safetensors.") && during[0].ends_with(TEMP_SUFFIX), "{during:?}");
            w.write_all(b"x").map_err(|source| Error::Write { path: path.clone(), source })
        })
        .unwrap();
        assert_eq!(names(dir.path()), ["cache.safetensors"]);
    }

    #[test]
    fn a_path_writer_may_replace_the_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fusion.safetensors");
        write_atomic_via_path::<Error>(&path, |temp| {
            fs::remove_file(temp).unwrap();
            fs::write(temp, b"weights").unwrap();
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"weights");
        assert_eq!(names(dir.path()), ["fusion.safetensors"]);
    }

    #[test]
    fn a_missing_folder_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.txt");
        let err = write_bytes_atomic(&path, b"x").unwrap_err();
        assert!(matches!(&err, Error::CreateTemp { path: p, .. } if p == &path), "{err:?}");
        assert_eq!(err.path(), path);
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn leftover_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(".model.safetensors.123.0.part"), b"x").unwrap();
        fs::write(dir.path().join("model.safetensors"), b"y").unwrap();
        fs::write(dir.path().join("notes.part"), b"z").unwrap();
        let removed = remove_leftovers(dir.path());
        assert_eq!(removed, [dir.path().join(".model.safetensors.123.0.part")]);
        assert_eq!(names(dir.path()), ["model.safetensors", "notes.part"]);
    }
}
