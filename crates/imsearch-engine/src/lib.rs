//! The search engine: everything between embeddings and a ranked list of photos.
//!
//! - [`Scorer`]s: the fusion models ([`Fusion`], one encoder's columns with [`Columns`]), the
//!   training-free caption neighbours ([`Neighbours`]) and ImageNet-class bridge ([`Bridge`]),
//!   query-bank normalisation ([`BankNormalised`]) and the per-query z-scored [`Ensemble`], plus
//!   the baselines ([`Random`], [`Regressor`]). Every scorer is `Send + Sync`; the work on the
//!   images alone is done once by [`Scorer::prepare`] and kept by the caller (the index) in a
//!   [`Prepared`], never in a cache inside the scorer.
//! - [`Engine`]: the best scorer as one directory, a versioned JSON spec (`engine.json`: members
//!   and their checkpoints, weights, neighbours, temperatures, class texts, feature layout, the
//!   [`Recipe`] it was built from) plus `engine.safetensors` (neighbour gallery, caption bank,
//!   class sentences, classifier heads). [`Engine::new`] assembles one from trained members and
//!   the training-free parts (imsearch-train builds them from a dataset and a recipe),
//!   [`Engine::save`] writes it, [`Engine::load`] reads it back.
//! - [`FolderIndex`] and [`Searcher`]: a folder of photos indexed incrementally by the image
//!   encoders, ranked for a text query by the engine, with the compliance policies applied (the
//!   text policy gates the query; the image policy's decision per image, fail closed).
//! - [`make_library`]: a synthetic photo library (the given photos re-encoded at other sizes,
//!   qualities and rotations in nested folders) for scale benchmarks.
//! - With the `web` feature, [`Searcher`] implements `imsearch_web::Backend`.
//!
//! Where it sits: the top of the library stack. It depends on the fusion, index, compliance,
//! eval, text and vision crates; it never fetches weights (`imsearch-models`) and never reads
//! the dataset (`imsearch-data`): callers hand it tensors, paths and pairs. No library crate but
//! imsearch-train (which builds engines) depends on it.

mod baselines;
mod bridge;
mod engine;
mod error;
mod folder;
mod library;
mod neighbours;
mod scorer;
mod searcher;
pub mod select;
#[cfg(feature = "milvus")]
mod store;
#[cfg(feature = "web")]
mod web;

pub use baselines::{Random, Regressor};
pub use bridge::{top_classes, Bridge, ClassifierHead};
pub use engine::{
    layout_name, match_features, Calibration, ClassTexts, Engine, EngineData, ImagePart, MemberRecipe, MemberSpec,
    Recipe, DUAL_ENCODER_VIEWS, ENGINE_FORMAT, ENGINE_SCORER,
};
pub use error::{Error, Result};
pub use folder::{
    encode_file, encode_image_outputs, encode_images, encode_images_all, key_bucket, list_images, list_images_detailed,
    EncodeTimes, FolderIndex, ImageListing, IndexOptions, IndexSummary, Shard, Skipped, IMAGE_EXTENSIONS,
};
pub use library::{library_path, make_library, LibrarySummary};
pub use neighbours::{Neighbourhood, Neighbours};
pub use scorer::{
    combine, likeness, prepare_for_search, space_norms, BankNormalised, Columns, Ensemble, Fusion, Prepared, Scorer,
    BANK_Z_RANGE, PREPARE_BLOCK,
};
pub use searcher::{ImagePolicySource, Ranked, Searcher, CANDIDATES_PER_RESULT};
#[cfg(feature = "milvus")]
pub use store::{collection_spec, index_into_store, StoreSummary};
