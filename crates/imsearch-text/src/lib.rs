//! Text encoders for imsearch: MiniLM sentence embeddings run in candle, and the TF-IDF
//! baseline of the original task.
//!
//! Where it sits: between the raw caption / query strings and the scorers. It turns text into
//! rows of `f32` ([`MiniLm`], 384-d, L2-normalised) or sparse TF-IDF rows ([`Tfidf`]).
//!
//! Architecture invariant: this crate takes weights, configs and tokenizers as paths, bytes or a
//! [`candle_nn::VarBuilder`] at its edge. It never depends on `imsearch-models` (fetching and
//! verifying weights) nor on any image or dataset crate; its only imsearch dependency is
//! `imsearch-types`. Model code does no network I/O.

mod bert;
mod error;
mod gemm;
mod minilm;
mod tfidf;

pub use bert::BertConfig;
pub use error::{Error, Result};
pub use gemm::ISA_ENV;
pub use minilm::{l2_normalize, mean_pool, MiniLm, MiniLmFiles, MiniLmOptions};
pub use tfidf::{tokenize, SparseRow, Tfidf, TfidfOptions};
