//! The error type of imsearch-train.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
    #[error(transparent)]
    Data(#[from] imsearch_data::Error),
    #[error(transparent)]
    Fusion(#[from] imsearch_fusion::Error),
    #[error(transparent)]
    Engine(#[from] imsearch_engine::Error),
    #[error("failed to fit TF-IDF")]
    Tfidf(#[source] imsearch_text::Error),
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },
    #[error("failed to parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} has no best_epoch")]
    NoBestEpoch { path: PathBuf },
    #[error("no {model} embedding for {key}")]
    MissingEmbedding { model: String, key: String },
    #[error("test query {query} is written for {image}, which test_images.csv does not list")]
    UnlistedTestImage { query: String, image: String },
    #[error(
        "training with views needs the features of the view {view} for {encoders} (`cargo xtask embed --train-views`)"
    )]
    MissingView { encoders: String, view: String },
    #[error("no image encoder chosen")]
    NoImageEncoder,
    #[error("a fusion model needs at least one epoch of training")]
    NoEpochs,
    #[error(
        "the training options ask for class sentences as positives, but the training data has none \
         (fill them with TrainingData::with_class_positives and the encoders' ImageNet heads)"
    )]
    NoClassPositives,
    #[error("image encoder {part} is not in the layout ({encoders} encoders)")]
    NoSuchPart { part: usize, encoders: usize },
    #[error("the recipe's member on {0} has no features in this layout")]
    MemberNotInLayout(String),
    #[error("a fusion member reads every encoder or one, not {0}")]
    MemberEncoders(String),
    /// Nothing to measure: no validation captions, no test queries, every test query blocked.
    #[error("{0}")]
    Empty(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
