//! The error type of imsearch-report: every variant that touches a file carries its path.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading an image or writing a report file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing an output file (a temporary file, then a rename) failed.
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },
    /// Opening or reading an input file failed (missing file, permissions).
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Creating an output folder failed.
    #[error("failed to create {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Removing a stale output file failed.
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// An input image could not be decoded (corrupt file, unsupported format).
    #[error("failed to decode image {path}")]
    Decode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// A rendered image could not be encoded as PNG.
    #[error("failed to encode png {path}")]
    Encode {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The drawing library failed while rendering the picture destined for `path`.
    #[error("failed to draw {path}")]
    Draw {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The data handed in cannot be drawn (zero bins, an empty range, NaN bar heights...).
    #[error("invalid input for {path}: {reason}")]
    InvalidInput { path: PathBuf, reason: String },
    /// The embedded font could not be registered with the drawing library.
    #[error("the embedded font could not be loaded")]
    Font,
}

impl From<imsearch_fsio::Error> for Error {
    fn from(source: imsearch_fsio::Error) -> Self {
        Error::Write { path: source.path().to_owned(), source }
    }
}

/// `Result` with this crate's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
