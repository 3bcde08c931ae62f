//! Reads a Flickr8k-derived image-query dataset in its published layout, validates every row,
//! aggregates expert and crowd grades into labels, and splits images into train and validation.
//! [`summary`] gives the counts and distributions a person looks at first (no plotting), and
//! [`fixtures`] writes a tiny dataset in the same layout (its images come as pixels for the
//! caller to encode).
//!
//! Pipeline position: the first stage. Everything downstream (encoders, fusion model,
//! evaluation) starts from a [`Dataset`].
//!
//! Architecture invariant: this crate depends on `imsearch-types`, `csv`, `serde` and `rand`
//! only. It never depends on candle, image decoding or any model code: it reads text files and
//! lists folders, and writes files only in [`fixtures::write()`].

mod dataset;
mod error;
pub mod fixtures;
pub mod labels;
mod read;
pub mod split;
pub mod summary;

pub use dataset::{Dataset, FileReport, LoadOptions, LoadReport, Skip, SkipReason};
pub use error::{Error, Result};
pub use labels::{aggregate, Aggregation, LabelReport, Labels};
pub use read::{column_names, CrowdRow, ExpertRow, OnBadRow, TestImageRow, TestQuery, TrainRow, FRACTION_TOLERANCE};
pub use split::{ImageSplit, Partition};
pub use summary::{file_rows, Distributions, FileRows, Summary};

/// The names of a dataset directory's parts.
pub mod files {
    pub const TRAIN_DATASET: &str = "train_dataset.csv";
    pub const CROWD: &str = "CrowdAnnotations.tsv";
    pub const EXPERT: &str = "ExpertAnnotations.tsv";
    pub const TEST_QUERIES: &str = "test_queries.csv";
    pub const TEST_IMAGES: &str = "test_images.csv";
    pub const TRAIN_IMAGE_DIR: &str = "train_images";
    pub const TEST_IMAGE_DIR: &str = "test_images";
    /// The annotation files, in the order they are read.
    pub const ANNOTATIONS: [&str; 5] = [TRAIN_DATASET, CROWD, EXPERT, TEST_QUERIES, TEST_IMAGES];
}

/// The environment variable that names the dataset directory when no `--data` is given.
pub const DATA_ENV: &str = "IMSEARCH_DATA";
