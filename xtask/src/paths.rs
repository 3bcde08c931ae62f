//! Where things are: the workspace root and the dataset directory; writing files atomically.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// The dataset's place next to a checkout, relative to the workspace root.
pub(crate) const DEFAULT_DATA: &str = "../shared/data/dsplus_integrated_project_4";

pub(crate) fn workspace_root() -> PathBuf {
    // xtask's manifest sits one level below the workspace root.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits inside the workspace").to_owned()
}

/// A directory flag's value. Unlike clap's own path parser it accepts an empty value, which
/// [`set`] then treats as unset: an environment variable set to nothing (`IMSEARCH_MODELS=`)
/// means the default, as it did before the flags read them.
pub(crate) fn dir_arg(value: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(value))
}

/// `flag` unless it is empty.
pub(crate) fn set(flag: Option<&Path>) -> Option<&Path> {
    flag.filter(|p| !p.as_os_str().is_empty())
}

/// The dataset directory: `--data`, else `IMSEARCH_DATA`, else [`DEFAULT_DATA`] when present.
pub(crate) fn data_dir(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = set(flag) {
        return checked(dir.to_owned(), "--data");
    }
    if let Some(dir) = std::env::var_os(imsearch_data::DATA_ENV).filter(|v| !v.is_empty()) {
        return checked(PathBuf::from(dir), imsearch_data::DATA_ENV);
    }
    let default = workspace_root().join(DEFAULT_DATA);
    if default.is_dir() {
        return Ok(default);
    }
    bail!(
        "no dataset found: pass --data DIR or set {} (the task's archive holds train_dataset.csv, \
         CrowdAnnotations.tsv, ExpertAnnotations.tsv, test_queries.csv, test_images.csv, train_images/ \
         and test_images/); looked for {}",
        imsearch_data::DATA_ENV,
        default.display()
    )
}

fn checked(dir: PathBuf, source: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("the dataset directory {} (from {source}) does not exist", dir.display());
    }
    Ok(dir)
}

/// The environment variable that overrides the default work directory (`--workdir` wins).
pub(crate) const WORKDIR_ENV: &str = "IMSEARCH_WORKDIR";

/// Where earlier versions kept the work directory, relative to the workspace root.
const OLD_WORKDIR: &str = "target/imsearch";

/// The work directory: `flag` (from `--workdir` or [`WORKDIR_ENV`]; relative to the workspace
/// root when relative), else `imsearch` in the user's data directory ($XDG_DATA_HOME or
/// ~/.local/share on Linux), else (no such directory on this platform) `target/imsearch`.
pub(crate) fn workdir(flag: Option<&Path>) -> PathBuf {
    if let Some(dir) = set(flag) {
        return resolve(dir);
    }
    let Some(data) = dirs::data_dir() else { return workspace_root().join(OLD_WORKDIR) };
    let dir = data.join("imsearch");
    let old = workspace_root().join(OLD_WORKDIR);
    if !dir.exists() && old.is_dir() {
        static NOTED: std::sync::Once = std::sync::Once::new();
        NOTED.call_once(|| {
            eprintln!(
                "note: the work directory is now {} (outside target/, so `cargo clean` keeps it); an older one is at \
                 {}: move it there to reuse its embeddings, indexes and models (`mv {} {}`), or pass --workdir {}",
                dir.display(),
                old.display(),
                old.display(),
                dir.display(),
                old.display()
            )
        });
    }
    dir
}

/// `path` made absolute against the workspace root when relative.
pub(crate) fn resolve(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        workspace_root().join(path)
    }
}

/// Writes `bytes` to `path` atomically (imsearch-fsio: a temporary file in the same directory,
/// then a rename), so a reader never sees half a file. Creates the parent directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    Ok(imsearch_fsio::write_bytes_atomic(path, bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_work_directory_is_the_flag_else_the_users_data_directory_never_target() {
        assert_eq!(workdir(Some(Path::new("/tmp/w"))), PathBuf::from("/tmp/w"));
        assert_eq!(workdir(Some(Path::new("rel"))), workspace_root().join("rel"));
        assert_eq!(workdir(Some(Path::new(""))), workdir(None), "an empty value is unset");
        let default = workdir(None);
        if let Some(data) = dirs::data_dir() {
            assert_eq!(default, data.join("imsearch"));
            assert!(!default.starts_with(workspace_root().join("target")), "{}", default.display());
        }
    }
}
