//! A photo collection kept in Milvus, past one machine: the rows an indexing worker upserts
//! (an image's key, content hash, file stamp, compliance decision, the engine's prepared state
//! and its "more like this" vector), read and searched by any number of servers; and the
//! pinned Milvus standalone server ([`server`]) for a laptop and the tests.
//!
//! **Architecture Invariant:** knows nothing of the engine, the encoders or the dataset: a
//! row's engine state is bytes and its vector plain `f32`s. Depends on no imsearch crate.

pub mod collection;
pub mod server;

pub use collection::{CollectionSpec, Error, MilvusStore, Result, Stamp, StoreUrl, StoredRow, VectorIndex};
