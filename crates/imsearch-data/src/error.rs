//! Errors of imsearch-data: every variant that comes from a file names it, and a bad row names
//! its line and field.

use std::{io, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Csv { path: PathBuf, line: u64, message: String },
    #[error("{path}:{line}: field `{field}`: {message}")]
    Field { path: PathBuf, line: u64, field: &'static str, message: String },
    #[error("{path}:{line}: expected {expected} columns, found {found}")]
    Columns { path: PathBuf, line: u64, expected: usize, found: usize },
    #[error("{path}:1: expected header {expected:?}, found {found:?}")]
    Header { path: PathBuf, expected: Vec<&'static str>, found: Vec<String> },
    #[error("invalid option: {0}")]
    Config(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
