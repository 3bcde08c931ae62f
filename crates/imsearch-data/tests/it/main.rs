//! Integration tests of imsearch-data: the committed fixture dataset, malformed copies of it,
//! and the real dataset (found through `IMSEARCH_DATA` or `../shared/data/...`).

mod fixture;
mod malformed;
mod real;

use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture_dir() -> PathBuf {
    workspace_root().join("fixtures/tiny")
}

/// The real dataset, or `None` outside CI when it is absent. In CI (`CI` set) its absence fails.
fn real_data_dir() -> Option<PathBuf> {
    // An empty variable is unset, as for the commands.
    let dir = std::env::var_os(imsearch_data::DATA_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("../shared/data/dsplus_integrated_project_4"));
    if dir.join("train_dataset.csv").is_file() {
        return Some(dir);
    }
    if std::env::var_os("CI").is_some() {
        panic!("the real dataset is not at {} (set {}); CI needs it", dir.display(), imsearch_data::DATA_ENV);
    }
    eprintln!("SKIPPED: the real dataset is not at {}; set {}", dir.display(), imsearch_data::DATA_ENV);
    None
}

/// A scratch copy of a dataset: annotation files copied, image folders linked.
fn scratch_copy(src: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for name in imsearch_data::files::ANNOTATIONS {
        std::fs::copy(src.join(name), tmp.path().join(name)).unwrap();
    }
    for dir in [imsearch_data::files::TRAIN_IMAGE_DIR, imsearch_data::files::TEST_IMAGE_DIR] {
        std::os::unix::fs::symlink(src.join(dir).canonicalize().unwrap(), tmp.path().join(dir)).unwrap();
    }
    tmp
}
