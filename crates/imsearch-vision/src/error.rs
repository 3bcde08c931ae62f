//! The error type of `imsearch-vision`.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while loading images or encoders.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An image file could not be opened or read.
    #[error("failed to read image {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An image file was read but is not a JPEG or PNG this crate can decode (corrupt,
    /// truncated or of another format).
    #[error("failed to decode image {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A weight file could not be loaded, or its tensors do not fit the network.
    #[error("failed to load weights from {path}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle::Error,
    },
    /// A preprocessing setting that cannot work (zero size, crop larger than the resize, ...).
    #[error("invalid preprocessing config: {0}")]
    Config(String),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
