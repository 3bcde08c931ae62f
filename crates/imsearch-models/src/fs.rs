//! File helpers: sha256 digests. Atomic writes are imsearch-fsio's.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
