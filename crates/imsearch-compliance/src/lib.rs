//! Compliance: in some markets the law forbids showing images of children under 16 without their
//! parents' consent. This crate decides, for a text and for an image, whether it may be shown.
//!
//! - [`TextPolicy`]: a lexicon of words that describe people under 16, matched on word
//!   boundaries, case-insensitively; used to remove training pairs and to refuse queries.
//! - [`ImagePolicy`]: a logistic regression over an image embedding, with a threshold chosen on
//!   a validation split for high recall; used to replace result images with the disclaimer.
//! - [`Decision`]: allow, or block with the reason. Fail closed: an image that cannot be scored
//!   is blocked.
//! - [`PolicyCheckpoint`]: the image policy with the feature layout it reads, as one JSON file
//!   (`PolicyCheckpoint::load`, `write`); [`PolicyData::fit`] makes it (the options and the
//!   threshold chosen on validation, see `fit.rs`).
//! - [`TextAudit`] and [`ImageAudit`]: the policies measured on a labelled collection (what the
//!   text policy removes from training, the queries it blocks and those a person should read;
//!   the image policy's recall and precision).
//!
//! Where it sits: after the encoders, beside the fusion model; it takes embeddings, captions and
//! graded pairs that others computed. Architecture invariant: plain Rust over `&[f32]`; depends
//! on `serde`, `serde_json`, `thiserror`, `imsearch-types` and `imsearch-eval` only (no candle, no
//! encoder, no dataset reader), so any service can apply the policies to embeddings it computed
//! elsewhere. The only I/O is reading and writing a checkpoint file.

mod audit;
mod checkpoint;
mod error;
mod fit;
mod image;
mod text;

pub use audit::{lexicon_evidence, ImageAudit, RuleEvidence, TextAudit, TrainingFilter};
pub use checkpoint::{PolicyCheckpoint, CHECKPOINT_FORMAT};
pub use error::{Error, Result};
pub use fit::{
    check_recall_target, Candidate, ChildEvidence, FitEvent, FitSettings, LabelRule, PolicyData, ValidationReport,
    L2_GRID, LR_GRID, MAX_DECAY_PER_STEP, PAIR_MATCH,
};
pub use image::{threshold_for_recall, ImagePolicy, TrainOptions};
pub use text::{TextPolicy, LEXICON, PHRASES};

use serde::{Deserialize, Serialize};

/// What is shown in place of a blocked image.
pub const DISCLAIMER: &str = "This image is unavailable in your country in compliance with local laws";

/// Why something is blocked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockReason {
    /// The text names a person under 16.
    Text { word: String },
    /// The image classifier's score reached the threshold.
    Image { score: f32, threshold: f32 },
    /// The image could not be scored (no embedding, wrong dimension, not finite): fail closed.
    Unscored { why: String },
}

impl std::fmt::Display for BlockReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlockReason::Text { word } => write!(f, "the text names a child ({word:?})"),
            BlockReason::Image { score, threshold } => {
                write!(f, "the image may show a child (score {score:.3} >= threshold {threshold:.3})")
            }
            BlockReason::Unscored { why } => write!(f, "the image could not be checked ({why})"),
        }
    }
}

/// Whether a text or an image may be shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Block(BlockReason),
}

impl Decision {
    pub fn is_blocked(&self) -> bool {
        matches!(self, Decision::Block(_))
    }
}
