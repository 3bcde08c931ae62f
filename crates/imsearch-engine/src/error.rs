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
