//! File helpers: sha256 digests and atomic writes (temporary name in the same folder, then rename).

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Suffix of the temporary files [`write_atomic`] creates; leftovers of a killed run end so.
pub(crate) const PART_SUFFIX: &str = ".part";

/// Lowercase hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The sha256 of `bytes` as lowercase hex.
pub(crate) fn sha256_bytes(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Streams `reader` to its end; returns the sha256 (lowercase hex) and the byte count.
pub(crate) fn sha256_reader(mut reader: impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&hasher.finalize()), n))
}

/// The sha256 (lowercase hex) and size of the file at `path`.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let read_err = |source| Error::Read { path: path.to_owned(), source };
    let file = File::open(path).map_err(read_err)?;
    sha256_reader(file).map_err(read_err)
}

/// `Ok` if `actual` is `expected`, else [`Error::ChecksumMismatch`] naming `path`.
pub(crate) fn check_digest(path: &Path, expected: &str, actual: &str) -> Result<()> {
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(Error::ChecksumMismatch { path: path.to_owned(), expected: expected.to_owned(), actual: actual.to_owned() })
    }
}

/// Checks the sha256 of the file at `path` against `expected`; returns the file size.
pub(crate) fn verify_file(path: &Path, expected: &str) -> Result<u64> {
    let (actual, n) = sha256_file(path)?;
    check_digest(path, expected, &actual)?;
    Ok(n)
}

/// Writes `path` atomically: `write` fills a temporary file in the same folder, which is synced
/// and renamed over `path` only if `write` succeeds. On any failure (or a crash) `path` keeps its
/// old content or stays absent; at worst a `.NAME.XXXX.part` file is left behind.
pub(crate) fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let write_err = |source| Error::Write { path: path.to_owned(), source };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(PART_SUFFIX)
        .tempfile_in(dir)
        .map_err(write_err)?;
    // tempfile creates files readable by their owner only; the cache is shared like any other.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(write_err)?;
    }
    {
        let mut w = BufWriter::with_capacity(1 << 16, tmp.as_file_mut());
        write(&mut w)?;
        w.flush().map_err(write_err)?;
    }
    tmp.as_file().sync_all().map_err(write_err)?;
    tmp.persist(path).map_err(|e| write_err(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes).map_err(|source| Error::Write { path: path.to_owned(), source }))
}

/// Makes a rename durable where the platform allows it; best effort.
fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Removes the `.part` leftovers of interrupted writes in `dir`; returns what it removed.
pub(crate) fn remove_partial_files(dir: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return removed };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(PART_SUFFIX) && std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let (d, n) = sha256_reader(&b"abc"[..]).unwrap();
        assert_eq!((d.as_str(), n), ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3));
    }

    #[test]
    fn checksum_mismatch_names_file_and_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weights.bin");
        std::fs::write(&path, b"abc").unwrap();
        let expected = "0000000000000000000000000000000000000000000000000000000000000000";
        let err = verify_file(&path, expected).unwrap_err();
        let Error::ChecksumMismatch { path: p, expected: e, actual: a } = &err else { panic!("{err:?}") };
        assert_eq!((p, e.as_str()), (&path, expected));
        assert_eq!(a, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let msg = err.to_string();
        assert!(msg.contains("weights.bin") && msg.contains(expected) && msg.contains(a.as_str()), "{msg}");
        assert_eq!(verify_file(&path, a).unwrap(), 3);
    }

    #[test]
    fn atomic_write_replaces_only_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");

        write_bytes_atomic(&path, b"first").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"first");

        // A writer that fails half way leaves the old content and no temporary file.
        let err = write_atomic(&path, |w| {
            w.write_all(b"half of the secon").unwrap();
            Err(Error::Write { path: path.clone(), source: io::Error::other("disk full") })
        })
        .unwrap_err();
        assert!(matches!(err, Error::Write { .. }));
        assert_eq!(std::fs::read(&path).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["model.safetensors"]);

        // Nor does a failed first write create the final name.
        let fresh = dir.path().join("fresh.json");
        let _ = write_atomic(&fresh, |_| Err(Error::NoCacheDir));
        assert!(!fresh.exists());
        assert_eq!(names(dir.path()), ["model.safetensors"]);

        write_bytes_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert_eq!(names(dir.path()), ["model.safetensors"]);
    }

    #[test]
    fn leftover_part_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".model.safetensors.abc123.part"), b"x").unwrap();
        std::fs::write(dir.path().join("model.safetensors"), b"y").unwrap();
        assert_eq!(remove_partial_files(dir.path()).len(), 1);
        assert_eq!(names(dir.path()), ["model.safetensors"]);
    }
}
