//! The engine's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
    #[error(transparent)]
    Fusion(#[from] imsearch_fusion::Error),
    #[error(transparent)]
    Index(#[from] imsearch_index::Error),
    #[error(transparent)]
    Text(#[from] imsearch_text::Error),
    #[error(transparent)]
    File(#[from] imsearch_fsio::Error),
    #[cfg(feature = "milvus")]
    #[error(transparent)]
    Store(#[from] imsearch_store::Error),
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid engine spec")]
    Spec {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the engine in {path} is format {found}; this build reads format {expected} (build it again)")]
    Format { path: PathBuf, found: u32, expected: u32 },
    #[error("the engine in {path} was made for {found}, not {expected}")]
    Layout { path: PathBuf, found: String, expected: String },
    #[error("the engine in {path} lacks {what}")]
    Missing { path: PathBuf, what: String },
    #[error("invalid input: {0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `e` and its causes joined by `: ` (as `anyhow` prints `{:#}`), for messages that cross into
/// strings (a skipped file's reason, a web error).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s += &format!(": {c}");
        cause = c.source();
    }
    s
}
