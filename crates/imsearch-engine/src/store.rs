//! The engine over a collection kept in Milvus (feature `milvus`): indexing workers write each
//! image's prepared row, policy decision and "more like this" vector ([`index_into_store`]);
//! any number of searchers read the rows back ([`Searcher::from_store`]) and rank exactly as a
//! searcher over the same folder does.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Instant, UNIX_EPOCH},
};

use candle::{Device, Tensor};
use imsearch_compliance::{BlockReason, Decision};
use imsearch_store::{CollectionSpec, MilvusStore, Stamp, StoredRow};
use imsearch_text::MiniLm;
use serde::Serialize;

use crate::{
    engine::Engine,
    folder::{key_bucket, FolderIndex, IndexSummary, Shard},
    scorer::{prepare_for_search, Prepared},
    searcher::{ImagePolicySource, Searcher},
    Error, Result,
};

/// Rows prepared and written per request: a worker killed part-way loses at most this many.
const ROWS_PER_WRITE: usize = 256;

/// What a collection's rows were made by: the engine (its fingerprint and feature layout) and
/// the image policy whose decisions they carry. A collection holds rows of one spec only.
pub fn collection_spec(engine: &Engine, policy: Option<&ImagePolicySource>) -> Result<CollectionSpec> {
    let Some(fingerprint) = engine.fingerprint() else {
        return Err(Error::Invalid("an engine assembled in memory cannot fill a collection: save it first".into()));
    };
    let policy = match policy {
        Some(p) => {
            let json = serde_json::to_string(&(&p.policy, &p.parts))
                .map_err(|e| Error::Invalid(format!("cannot describe the image policy: {e}")))?;
            let digest = imsearch_index::Item::text("", json).content_hash()?;
            format!("image policy {}", &digest[..16])
        }
        None => "no image policy (every image blocked)".to_owned(),
    };
    // The vector's length, from a zero row of the layout.
    let dim: usize = engine.image_layout().iter().map(|p| p.dim).sum();
    let zero = Tensor::zeros((1, dim), candle::DType::F32, &Device::Cpu)?;
    let like_dim = engine.scorer().prepare(&zero)?.like_vector(0)?.len();
    Ok(CollectionSpec {
        like_dim,
        // The rows' format too: rows of another format (f16 before 8-bit codes) do not read.
        made_by: format!("engine {} over {} (8-bit rows), {policy}", &fingerprint[..16], engine.layout()),
    })
}

/// What [`index_into_store`] did.
#[derive(Debug, Clone, Serialize)]
pub struct StoreSummary {
    pub collection: String,
    pub shard: String,
    /// The worker's folder index (its share of the files).
    pub index: IndexSummary,
    /// Rows written now (new or changed files), rows already in the collection with the same
    /// content, rows deleted (files gone from the worker's share).
    pub written: usize,
    pub unchanged: usize,
    pub deleted: usize,
    /// Rows written now that the image policy hides.
    pub blocked: usize,
    /// Seconds spent preparing and writing (not indexing the folder).
    pub seconds: f64,
}

impl std::fmt::Display for StoreSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shard {} of {}: {} rows written ({} hidden by the image policy), {} unchanged, {} deleted in {:.1} s",
            self.shard, self.collection, self.written, self.blocked, self.unchanged, self.deleted, self.seconds
        )
    }
}

/// Brings worker `shard`'s rows of the collection in line with its folder index (opened with
/// the same shard): rows for new and changed files (by content hash) are prepared by the
/// engine, decided by the image policy and written whole, a few hundred at a time; rows of
/// the worker's files that are gone are deleted. Other workers' rows are not touched.
/// `progress(done, total)` reports the rows written.
pub fn index_into_store(
    store: &MilvusStore,
    engine: &Engine,
    index: &FolderIndex,
    policy: Option<&ImagePolicySource>,
    shard: Shard,
    progress: &dyn Fn(usize, usize),
) -> Result<StoreSummary> {
    let started = Instant::now();
    let spec = collection_spec(engine, policy)?;
    store.create_or_open(&spec)?;
    let stored: HashMap<String, String> =
        store.stamps(Some((shard.worker, shard.workers)))?.into_iter().map(|(key, hash, _)| (key, hash)).collect();
    if index.hashes.len() != index.len() {
        return Err(Error::Invalid("the folder index has no content hashes".into()));
    }
    let todo: Vec<usize> = (0..index.len()).filter(|&r| stored.get(&index.keys[r]) != Some(&index.hashes[r])).collect();
    let mut written = 0;
    let mut blocked = 0;
    progress(0, todo.len());
    for rows in todo.chunks(ROWS_PER_WRITE) {
        let mut data = Vec::with_capacity(rows.len() * index.dim);
        for &r in rows {
            data.extend_from_slice(&index.features[r * index.dim..(r + 1) * index.dim]);
        }
        let prepared = prepare_for_search(
            engine.scorer().as_ref(),
            &Tensor::from_vec(data, (rows.len(), index.dim), &Device::Cpu)?,
        )?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, &r) in rows.iter().enumerate() {
            let key = &index.keys[r];
            let decision = match policy {
                Some(p) => p.policy.decide(Some(&index.slices(r, &p.parts))),
                None => Decision::Block(BlockReason::Unscored { why: "no usable image policy".into() }),
            };
            let reason = match decision {
                Decision::Allow => None,
                Decision::Block(reason) => {
                    blocked += 1;
                    Some(serde_json::to_string(&reason).map_err(|e| Error::Invalid(e.to_string()))?)
                }
            };
            out.push(StoredRow {
                key: key.clone(),
                hash: index.hashes[r].clone(),
                bucket: key_bucket(key),
                stamp: stamp(&index.summary.images_dir.join(key)),
                blocked: reason,
                state: prepared.row_bytes(i)?,
                like: prepared.like_vector(i)?,
            });
        }
        store.upsert(&out, &spec)?;
        written += out.len();
        progress(written, todo.len());
    }
    let present: std::collections::HashSet<&str> = index.keys.iter().map(String::as_str).collect();
    let gone: Vec<String> = stored.keys().filter(|k| !present.contains(k.as_str())).cloned().collect();
    store.delete(&gone)?;
    if written > 0 || !gone.is_empty() {
        store.flush()?;
    }
    Ok(StoreSummary {
        collection: store.url().to_string(),
        shard: shard.to_string(),
        index: index.summary.clone(),
        written,
        unchanged: index.len() - todo.len(),
        deleted: gone.len(),
        blocked,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The file's size and modification time (zero where they cannot be read).
fn stamp(path: &Path) -> Stamp {
    let Ok(meta) = std::fs::metadata(path) else { return Stamp::default() };
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    Stamp { size: meta.len(), mtime_ns }
}

impl Searcher {
    /// A searcher over every row of the collection, whose files are under `root` (the library
    /// as this machine sees it); `cache_dir` is where it may keep files of its own (thumbnails).
    /// The collection must have been made by this engine and image policy
    /// ([`collection_spec`]); a row whose stored decision does not read is blocked (fail
    /// closed).
    pub fn from_store(
        store: &MilvusStore,
        root: &Path,
        cache_dir: PathBuf,
        engine: Engine,
        text_model: MiniLm,
        policy: Option<ImagePolicySource>,
    ) -> Result<Searcher> {
        let spec = collection_spec(&engine, policy.as_ref())?;
        match store.spec()? {
            None => return Err(Error::Invalid(format!("there is no collection at {}: index into it first", store.url()))),
            Some(found) if found != spec => {
                return Err(Error::Invalid(format!(
                    "the collection at {} holds rows made by {}, but this search uses {}: index again into another collection",
                    store.url(),
                    found.made_by,
                    spec.made_by
                )))
            }
            Some(_) => {}
        }
        let rows = store.rows()?;
        let states: Vec<&[u8]> = rows.iter().map(|r| r.state.as_slice()).collect();
        let prepared = Prepared::from_row_bytes(&states)?;
        let blocked = rows
            .iter()
            .map(|r| {
                r.blocked.as_ref().map(|json| {
                    serde_json::from_str::<BlockReason>(json).unwrap_or_else(|_| BlockReason::Unscored {
                        why: format!("a stored decision that does not read: {json}"),
                    })
                })
            })
            .collect();
        let dim = engine.image_layout().iter().map(|p| p.dim).sum();
        let index = FolderIndex {
            keys: rows.iter().map(|r| r.key.clone()).collect(),
            hashes: rows.iter().map(|r| r.hash.clone()).collect(),
            features: Vec::new(),
            dim,
            parts: engine.image_layout().to_vec(),
            summary: IndexSummary {
                images_dir: root.to_owned(),
                cache_dir,
                indexed: rows.len(),
                encoded: 0,
                reused: rows.len(),
                removed: 0,
                skipped: Vec::new(),
                ignored_files: 0,
                rebuilt: Vec::new(),
            },
        };
        Searcher::from_prepared(index, prepared, blocked, engine, text_model, policy)
    }
}
