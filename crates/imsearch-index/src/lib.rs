//! Embeddings of a collection of files (images, or texts keyed by id), cached on disk by model
//! id and content hash, updated incrementally, and searched exactly.
//!
//! - [`EmbeddingCache`]: one safetensors file per (collection, model): the `(n, dim)` f32
//!   matrix plus, in its metadata, each row's key and the sha256 of the content it was computed
//!   from. [`EmbeddingCache::refresh`] re-encodes only what is new or changed and drops what is
//!   gone.
//! - [`top_k`]: the `k` best rows for a query by a caller-supplied score, in one pass.
//! - [`dot_matrix`], [`dot_matrix_map`], [`dot_matrix_f16_map`]: a few queries against many
//!   rows (f32 or f16), each row read once, on every core: an exact search's cost is its
//!   memory traffic.
//! - [`I8Rows`]: rows kept as 8-bit codes with a scale per row (half the bytes of f16), with
//!   the same kind of dot products.
//!
//! Architecture invariant: no candle, no encoder. Encoding is a closure the caller passes in,
//! so any model (or a test double) can fill the cache.

mod cache;
mod quant;
mod search;

pub use cache::{
    content_hash, CacheStats, Checkpoint, Content, EmbeddingCache, Error, Item, Result, Stamp, CACHE_FORMAT,
};
pub use quant::I8Rows;
pub use search::{dot_matrix, dot_matrix_f16_map, dot_matrix_map, dot_scores, top_k, Hit};
