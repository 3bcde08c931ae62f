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
    /// An image file was read but is not a JPEG, PNG, WebP, GIF, BMP or TIFF this crate can
    /// decode (empty, corrupt, truncated or of another format).
    #[error("failed to decode image {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// An image declares a size this crate refuses to decode: more than `max_side` pixels wide
    /// or tall, or more than `max_bytes` once decoded (a decompression bomb or a broken header).
    #[error(
        "image {path} is too large to decode: {width}x{height} pixels, {bytes} bytes decoded \
         (the limits are {max_side} pixels a side and {max_bytes} bytes)"
    )]
    TooLarge { path: PathBuf, width: u32, height: u32, bytes: u64, max_side: u32, max_bytes: u64 },
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
