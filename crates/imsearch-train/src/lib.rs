//! Training and model selection: from the dataset and its embedding caches to the fusion
//! models, the engine and the figures that chose it.
//!
//! - [`TrainingData`]: the aggregated labels after the compliance text policy, as rows of one
//!   image matrix and one text matrix ([`Embeddings`]: the caches, borrowed), split by image.
//! - [`Checkpoints`]: the fusion models of one configuration ([`TrainOptions`]), each in a
//!   folder named by the seed and a digest of the options, trained on the split or on every
//!   training image, reused when saved.
//! - [`build`]: the engine of a [`Recipe`](imsearch_engine::Recipe), its members trained or
//!   reused; [`default_recipe`] for a layout.
//! - [`evaluate`]: every model and baseline on validation, the recipe chosen on the validation
//!   captions of several splits pooled, the engine built with it, the test queries scored once
//!   ([`Metrics`]).
//!
//! Progress comes back as [`Event`]s (each displays as the line a command prints) through a
//! callback; nothing here prints.
//!
//! Where it sits: above the engine, below the binaries. It reads the dataset (imsearch-data)
//! and takes the embeddings and classifier heads its caller computed: it never runs an encoder
//! nor fetches weights (no imsearch-models), and depends on neither imsearch-report nor
//! imsearch-web (checked in ci). It chooses no location: the caller names the checkpoint and
//! engine folders. The engine does not depend on it.

mod build;
mod checkpoints;
mod data;
mod error;
mod evaluate;
mod event;
mod select;

pub use build::{build, caption_bank, default_recipe, neighbours_of, Sources};
pub use checkpoints::{Checkpoints, TrainOptions};
pub use data::{rows, DataCounts, Embeddings, ImageEmbeddings, TrainingData, CONFIRMED};
pub use error::{Error, Result};
pub use evaluate::{evaluate, EvalConfig, Metrics, ModelMetrics, Validation};
pub use event::Event;
pub use select::{CalibrationFigures, CalibrationReport};
