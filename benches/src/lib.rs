//! Shared set-up for the criterion benchmarks in `benches/`: where the weights and the dataset
//! are. A benchmark without its inputs stops with a message saying how to provide them.

use std::path::PathBuf;

use imsearch_models::{ModelFiles, ModelStore};

/// The stored files of model `id`; panics with instructions when they are absent.
pub fn model(id: &str) -> ModelFiles {
    let store = ModelStore::from_env_or_default().expect("a model cache location");
    store.get(id).unwrap_or_else(|e| panic!("{e}; run `cargo xtask fetch-models` first"))
}

/// The real dataset: `IMSEARCH_DATA`, else `../shared/data/dsplus_integrated_project_4`.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("IMSEARCH_DATA").filter(|v| !v.is_empty()).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/dsplus_integrated_project_4")
    });
    assert!(dir.join("train_images").is_dir(), "no dataset at {}; set IMSEARCH_DATA", dir.display());
    dir
}

/// The first `n` train images by file name, as the PyPI reference takes them.
pub fn train_images(n: usize) -> Vec<PathBuf> {
    let dir = data_dir().join("train_images");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    paths.sort();
    paths.truncate(n);
    paths
}

/// The 500 test query texts.
pub fn test_queries() -> Vec<String> {
    let path = data_dir().join("test_queries.csv");
    let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    // `|`-separated, text in the third column; quoted texts keep their `""` escapes, which does
    // not change the work of encoding them.
    body.lines().skip(1).filter_map(|l| l.split('|').nth(2)).map(|t| t.trim_matches('"').to_owned()).collect()
}
