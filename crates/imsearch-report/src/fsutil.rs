//! Atomic file writes and PNG encoding shared by the plot, sheet and html modules.

use std::fs;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use image::{ImageFormat, RgbImage};

use crate::{Error, Result};

/// Distinguishes temporary names of concurrent writes from the same process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically: into `.<name>.<pid>.<n>.tmp` next to it, then renamed
/// over `path`. A reader never sees a half-written file; the temporary is removed on failure.
/// The parent directory must exist.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let write_err = |source| Error::Write { path: path.to_owned(), source };
    let tmp = temp_name(path);
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: the temporary may not exist if `create` failed.
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

fn temp_name(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".to_owned());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{name}.{}.{n}.tmp", std::process::id());
    match path.parent() {
        Some(dir) => dir.join(tmp),
        None => PathBuf::from(tmp),
    }
}

/// Encodes `img` as PNG and writes it atomically to `path`.
pub(crate) fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png).map_err(|source| Error::Encode { path: path.to_owned(), source })?;
    write_atomic(path, bytes.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"first").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn write_into_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.txt");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(matches!(&err, Error::Write { path: p, .. } if p == &path));
        assert!(err.to_string().contains("a.txt"), "{err}");
    }
}
