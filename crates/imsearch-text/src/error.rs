//! The error type of `imsearch-text`.

use std::{io, path::PathBuf};

/// Everything that can go wrong while loading or running a text encoder.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to parse {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to load the tokenizer {path}")]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error("failed to load weights from {path}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle::Error,
    },
    #[error("failed to configure the tokenizer")]
    TokenizerSetup(#[source] tokenizers::Error),
    #[error("failed to tokenize a batch of {texts} texts")]
    Tokenize {
        texts: usize,
        #[source]
        source: tokenizers::Error,
    },
    #[error("text {index} is empty or whitespace only")]
    EmptyText { index: usize },
    #[error("max_seq_length {max_seq_length} is outside 3..={max_position_embeddings} (the model's positions)")]
    MaxSeqLength { max_seq_length: usize, max_position_embeddings: usize },
    #[error("unsupported model: {reason}")]
    UnsupportedModel { reason: String },
    #[error("{}={value:?} is not an instruction set: expected avx512, avx2 or portable", crate::ISA_ENV)]
    InvalidIsa { value: String },
    #[error("batch_size must be at least 1")]
    ZeroBatchSize,
    #[error("no term occurs in at least {min_df} of the {documents} training documents")]
    EmptyVocabulary { min_df: usize, documents: usize },
    #[error("invalid tf-idf model: {reason}")]
    InvalidTfidf { reason: String },
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
