//! The fusion model: takes an image embedding and a text embedding and returns a calibrated
//! score in 0..1, how well the text describes the image.
//!
//! Both sides are projected into a shared space (a small MLP each), L2-normalised, and scored
//! as `sigmoid(a * cos + b)`. The score comes from the interaction of the two sides: a model
//! that adds an image term to a text term ranks the same images first for every query.
//! Training ([`train`]) mixes a soft-label binary cross-entropy on the aggregated labels with a
//! contrastive term (each caption against its own source image, with in-batch negatives).
//!
//! Pipeline position: after the encoders, before evaluation and search. Architecture
//! invariant: takes embeddings (`&[f32]` or `Tensor`), never an encoder crate; does no I/O
//! except [`FusionModel::save`] and [`FusionModel::load`].

mod model;
mod train;

pub use model::{FusionConfig, FusionModel, Projection};
pub use train::{train, train_with_views, EpochReport, PairSet, TrainConfig, TrainReport};

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle::Error),
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
    #[error("failed to save {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },
    #[error("{path}: invalid config")]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("checkpoint {path} was trained for {found}, not {expected}")]
    EncoderMismatch { path: PathBuf, expected: String, found: String },
    #[error("invalid training data: {0}")]
    Data(String),
}

impl From<imsearch_fsio::Error> for Error {
    fn from(source: imsearch_fsio::Error) -> Self {
        Error::Save { path: source.path().to_owned(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
