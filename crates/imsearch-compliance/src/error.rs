//! The crate's error type: bad training input, a fit that cannot be made, and checkpoint files
//! that cannot be read or written.

use std::{io, path::PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{features} feature values do not form rows of dimension {dim} for {labels} labels")]
    Shape { features: usize, dim: usize, labels: usize },
    #[error("training needs both positive and negative images, got {positives} of {total}")]
    OneClass { positives: usize, total: usize },
    #[error("feature values must be finite")]
    NotFinite,
    #[error("the split gives a side to {sides} images, but there are {images}")]
    Sides { sides: usize, images: usize },
    #[error("the recall target must be in (0, 1], got {target}")]
    RecallTarget { target: f32 },
    #[error("the split leaves no validation images to choose the threshold on")]
    NoValidationImages,
    #[error("no validation image shows a child by its captions and pairs")]
    NoValidationPositives,
    #[error("no candidate image policy could be fitted on the train side (each needs both classes)")]
    NoCandidate,
    #[error("refitting the image policy on every train image diverged (learning rate {learning_rate}, l2 {l2})")]
    RefitDiverged { learning_rate: f32, l2: f32 },
    #[error("the image policy reads {policy_layout} ({policy_dim}-d), not {layout} ({dim}-d)")]
    Layout { policy_layout: String, policy_dim: usize, layout: String, dim: usize },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an image policy checkpoint")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path} is an image policy checkpoint of format {found}; this build reads format {expected}")]
    Format { path: PathBuf, found: u32, expected: u32 },
    #[error("failed to encode the image policy checkpoint for {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },
}
