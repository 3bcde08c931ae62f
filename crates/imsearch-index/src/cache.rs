//! The on-disk embedding cache: one safetensors file holding the matrix and, in its metadata,
//! the model id and each row's key and content hash.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to save {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: imsearch_fsio::Error,
    },
    #[error("{path} is not a valid embedding cache: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{key}: the encoder returned {found} values, expected dimension {expected}")]
    Dimension { key: String, expected: usize, found: usize },
}

impl From<imsearch_fsio::Error> for Error {
    fn from(source: imsearch_fsio::Error) -> Self {
        Error::Save { path: source.path().to_owned(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Something to embed: a stable key (e.g. a file name or a query id) and its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub key: String,
    pub content: Content,
}

/// Where an item's content is: a file, or a text held in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    File(PathBuf),
    Text(String),
}

impl Item {
    pub fn file(key: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Item { key: key.into(), content: Content::File(path.into()) }
    }

    pub fn text(key: impl Into<String>, text: impl Into<String>) -> Self {
        Item { key: key.into(), content: Content::Text(text.into()) }
    }

    /// The sha256 of the content, in hex.
    pub fn content_hash(&self) -> Result<String> {
        match &self.content {
            Content::File(path) => content_hash(path),
            Content::Text(text) => Ok(hex(&Sha256::digest(text.as_bytes()))),
        }
    }
}

/// What [`EmbeddingCache::refresh`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    pub reused: usize,
    pub encoded: usize,
    pub removed: usize,
    /// Files reused by their size and modification time alone, without reading them (a subset
    /// of `reused`).
    pub unread: usize,
    /// Items reused from another key's row with the same content hash (a renamed or copied
    /// file; a subset of `reused`).
    pub moved: usize,
    /// Files whose size or modification time changed but whose bytes did not (hashed, reused,
    /// their new stamp recorded; a subset of `reused`).
    pub restamped: usize,
    /// Times the cache was saved while encoding (see [`Checkpoint`]), the end not counted.
    pub checkpoints: usize,
    /// Items that could not be read or encoded, with the reason; they have no row.
    pub failed: Vec<(String, String)>,
}

impl CacheStats {
    /// Whether the refreshed cache differs from the one loaded, so it is worth saving.
    pub fn changed(&self) -> bool {
        self.encoded > 0 || self.removed > 0 || self.moved > 0 || self.restamped > 0
    }
}

/// The layout version of the cache's metadata. Version 1 had no `format` field and no stamps;
/// such a cache still loads (its files are hashed once to fill the stamps in).
pub const CACHE_FORMAT: u32 = 2;

fn format_v1() -> u32 {
    1
}

/// A file's size and modification time: when both are unchanged, the file is taken to be
/// unchanged and is not read (as rsync and photo managers do; a rewrite that keeps both is
/// missed until one of them changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub size: u64,
    /// Nanoseconds since the Unix epoch.
    pub modified_ns: u64,
}

impl Stamp {
    /// The stamp of the file at `path` (links followed).
    pub fn of(path: &Path) -> Result<Stamp> {
        let read = |source| Error::Read { path: path.to_owned(), source };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(read(std::io::Error::other("not a regular file")));
        }
        let modified = meta.modified().map_err(read)?;
        let modified_ns = modified.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Ok(Stamp { size: meta.len(), modified_ns })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    #[serde(default = "format_v1")]
    format: u32,
    model: String,
    dim: usize,
    keys: Vec<String>,
    hashes: Vec<String>,
    /// Per row: the file's stamp when it was hashed; `None` for texts and version-1 rows.
    #[serde(default)]
    stamps: Vec<Option<Stamp>>,
}

/// Embeddings of a collection under one model: row `i` is the embedding of `keys()[i]`.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    meta: Meta,
    data: Vec<f32>,
    /// Row of each key: lookups and inserts in constant time.
    index: HashMap<String, usize>,
}

impl PartialEq for EmbeddingCache {
    fn eq(&self, other: &Self) -> bool {
        self.meta == other.meta && self.data == other.data
    }
}

/// When [`EmbeddingCache::refresh_saving`] saves the cache while it encodes: after `every_items`
/// newly encoded items or `every` of wall time since the last save, whichever comes first, so a
/// process killed part-way loses at most that much work.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    pub every_items: usize,
    pub every: std::time::Duration,
}

impl Checkpoint {
    /// Every 256 items or 10 seconds.
    pub fn to(path: impl Into<PathBuf>) -> Self {
        Checkpoint { path: path.into(), every_items: 256, every: std::time::Duration::from_secs(10) }
    }
}

/// The sha256 of a file's bytes, in hex.
pub fn content_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How one listed item gets its row.
enum Source {
    /// The row of the same key, unchanged.
    Same,
    /// Another key's row with the same content.
    Moved(Vec<f32>),
    /// To be encoded.
    Encode,
    /// Unreadable; reported.
    Failed,
}

impl EmbeddingCache {
    pub fn new(model: impl Into<String>, dim: usize) -> Self {
        EmbeddingCache {
            meta: Meta {
                format: CACHE_FORMAT,
                model: model.into(),
                dim,
                keys: Vec::new(),
                hashes: Vec::new(),
                stamps: Vec::new(),
            },
            data: Vec::new(),
            index: HashMap::new(),
        }
    }

    pub fn model(&self) -> &str {
        &self.meta.model
    }

    pub fn dim(&self) -> usize {
        self.meta.dim
    }

    pub fn len(&self) -> usize {
        self.meta.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.keys.is_empty()
    }

    pub fn keys(&self) -> &[String] {
        &self.meta.keys
    }

    /// The sha256 (hex) of each row's content, in the rows' order.
    pub fn hashes(&self) -> &[String] {
        &self.meta.hashes
    }

    /// The row-major `(len, dim)` matrix.
    pub fn matrix(&self) -> &[f32] {
        &self.data
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// The row of `key`, if cached (constant time).
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        self.index.get(key).map(|&i| self.row(i))
    }

    /// Adds or replaces one row (constant time).
    pub fn insert(&mut self, key: String, hash: String, embedding: &[f32]) -> Result<()> {
        self.insert_stamped(key, hash, None, embedding)
    }

    fn insert_stamped(&mut self, key: String, hash: String, stamp: Option<Stamp>, embedding: &[f32]) -> Result<()> {
        if embedding.len() != self.meta.dim {
            return Err(Error::Dimension { key, expected: self.meta.dim, found: embedding.len() });
        }
        match self.index.get(&key) {
            Some(&i) => {
                self.meta.hashes[i] = hash;
                self.meta.stamps[i] = stamp;
                let dim = self.meta.dim;
                self.data[i * dim..(i + 1) * dim].copy_from_slice(embedding);
            }
            None => {
                self.index.insert(key.clone(), self.meta.keys.len());
                self.meta.keys.push(key);
                self.meta.hashes.push(hash);
                self.meta.stamps.push(stamp);
                self.data.extend_from_slice(embedding);
            }
        }
        Ok(())
    }

    /// Loads the cache at `path` if it exists and was made by `model` with dimension `dim`;
    /// otherwise an empty cache (a cache for another model is not an error, it is stale). A
    /// corrupt cache is an error: see [`load_or_rebuild`](Self::load_or_rebuild) to start over.
    pub fn load_or_new(path: &Path, model: &str, dim: usize) -> Result<Self> {
        match Self::load(path)? {
            Some(c) if c.meta.model == model && c.meta.dim == dim => Ok(c),
            _ => Ok(Self::new(model, dim)),
        }
    }

    /// As [`load_or_new`](Self::load_or_new), but a cache that is corrupt or of a newer format
    /// gives an empty cache and the reason, for the caller to report; the next save replaces
    /// it. Only an I/O error other than a missing file is an error.
    pub fn load_or_rebuild(path: &Path, model: &str, dim: usize) -> Result<(Self, Option<Error>)> {
        match Self::load(path) {
            Ok(Some(c)) if c.meta.model == model && c.meta.dim == dim => Ok((c, None)),
            Ok(_) => Ok((Self::new(model, dim), None)),
            Err(e @ Error::Corrupt { .. }) => Ok((Self::new(model, dim), Some(e))),
            Err(e) => Err(e),
        }
    }

    /// Loads the cache at `path`; `None` when there is no file.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Read { path: path.to_owned(), source }),
        };
        let corrupt = |reason: String| Error::Corrupt { path: path.to_owned(), reason };
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let meta_json = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get("imsearch"))
            .ok_or_else(|| corrupt("no imsearch metadata".into()))?;
        let mut meta: Meta = serde_json::from_str(meta_json).map_err(|e| corrupt(e.to_string()))?;
        if meta.format > CACHE_FORMAT {
            return Err(corrupt(format!("format {} is newer than this program's {CACHE_FORMAT}", meta.format)));
        }
        if meta.stamps.is_empty() {
            meta.stamps = vec![None; meta.keys.len()];
        }
        meta.format = CACHE_FORMAT;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let view = tensors.tensor("embeddings").map_err(|e| corrupt(e.to_string()))?;
        if view.dtype() != Dtype::F32
            || view.shape() != [meta.keys.len(), meta.dim]
            || meta.hashes.len() != meta.keys.len()
            || meta.stamps.len() != meta.keys.len()
        {
            return Err(corrupt(format!(
                "shape {:?} does not match {} keys of dimension {}",
                view.shape(),
                meta.keys.len(),
                meta.dim
            )));
        }
        let index: HashMap<String, usize> = meta.keys.iter().enumerate().map(|(i, k)| (k.clone(), i)).collect();
        if index.len() != meta.keys.len() {
            return Err(corrupt("a key is listed twice".into()));
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Some(EmbeddingCache { meta, data, index }))
    }

    /// Writes the cache to `path` atomically (imsearch-fsio: a temporary file in the same folder,
    /// then a rename), creating its folder.
    pub fn save(&self, path: &Path) -> Result<()> {
        let write_err = |source| Error::Write { path: path.to_owned(), source };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write_err)?;
        }
        let bytes: Vec<u8> = self.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![self.len(), self.dim()], &bytes)
            .map_err(|e| Error::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
        let meta = serde_json::to_string(&self.meta).expect("metadata serialises");
        let metadata: HashMap<String, String> = [("imsearch".to_owned(), meta)].into();
        let out = safetensors::serialize([("embeddings", view)], &Some(metadata))
            .map_err(|e| Error::Corrupt { path: path.to_owned(), reason: e.to_string() })?;
        Ok(imsearch_fsio::write_bytes_atomic(path, &out)?)
    }

    /// Brings the cache in line with `items`, keeping it only in memory: see
    /// [`refresh_saving`](Self::refresh_saving).
    pub fn refresh(
        &mut self,
        items: &[Item],
        batch: usize,
        encode: impl FnMut(&[Item]) -> Vec<Result<Vec<f32>, String>>,
        progress: impl FnMut(usize),
    ) -> Result<CacheStats> {
        self.refresh_saving(items, batch, None, encode, progress)
    }

    /// Brings the cache in line with `items`: a file whose size and modification time are
    /// those recorded is reused without being read; otherwise its content hash decides (the
    /// same bytes under the same key, or under another key, as for a renamed file, are
    /// reused); new or changed items are encoded in batches of `batch` with `encode`; rows of
    /// items no longer listed are dropped. Rows end up in the order of `items`.
    ///
    /// With a `checkpoint`, the cache (its old rows and every row encoded so far) is saved
    /// there atomically as encoding goes, so a process killed part-way resumes from the last
    /// save; the caller saves the final cache.
    ///
    /// `encode` gets a batch of items and returns one result per item; an item that fails to
    /// read or encode is reported in [`CacheStats::failed`] and gets no row. `progress` is
    /// called with the number of items done so far.
    pub fn refresh_saving(
        &mut self,
        items: &[Item],
        batch: usize,
        checkpoint: Option<&Checkpoint>,
        mut encode: impl FnMut(&[Item]) -> Vec<Result<Vec<f32>, String>>,
        progress: impl FnMut(usize),
    ) -> Result<CacheStats> {
        let stats = Self::refresh_together(
            std::slice::from_mut(self),
            items,
            batch,
            &[checkpoint],
            |batch, _| encode(batch).into_iter().map(|r| vec![r]).collect(),
            progress,
        )?;
        Ok(stats.into_iter().next().unwrap_or_default())
    }

    /// Brings several caches of the same items (one per encoder, say) in line with `items` in
    /// one pass, as [`refresh_saving`](Self::refresh_saving) does for one: each file's stamp is
    /// taken once and its content hashed at most once, whatever the number of caches, and an
    /// item that several caches lack is handed to `encode` once for all of them, so the encoder
    /// side can read and decode the file once.
    ///
    /// `checkpoints` has one entry per cache (missing entries: no checkpoint). `encode` gets a
    /// batch of items and the positions (in `caches`) of the caches that need them, the same
    /// for the whole batch, and returns per item one result per such cache, in that order.
    /// Returns each cache's statistics, in the caches' order.
    pub fn refresh_together(
        caches: &mut [EmbeddingCache],
        items: &[Item],
        batch: usize,
        checkpoints: &[Option<&Checkpoint>],
        mut encode: impl FnMut(&[Item], &[usize]) -> Vec<Vec<Result<Vec<f32>, String>>>,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<CacheStats>> {
        let m = caches.len();
        let mut stats = vec![CacheStats::default(); m];
        let fail = |stats: &mut [CacheStats], key: &str, e: &Error| {
            let cause = std::error::Error::source(e).map(|s| format!(": {s}")).unwrap_or_default();
            for s in stats.iter_mut() {
                s.failed.push((key.to_owned(), format!("{e}{cause}")));
            }
        };
        // Per item: its stamp, its hash (when some cache needed it) and each cache's source.
        let mut plans: Vec<Plan> = Vec::with_capacity(items.len());
        // Per item that some cache must encode: which caches.
        let mut todo: Vec<(usize, Vec<usize>)> = Vec::new();
        {
            let by_hash: Vec<HashMap<&str, usize>> = caches
                .iter()
                .map(|c| c.meta.hashes.iter().enumerate().map(|(i, h)| (h.as_str(), i)).collect())
                .collect();
            for (n, item) in items.iter().enumerate() {
                let stamp = match &item.content {
                    Content::File(path) => match Stamp::of(path) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            fail(&mut stats, &item.key, &e);
                            plans.push(Plan::failed());
                            continue;
                        }
                    },
                    Content::Text(_) => None,
                };
                let old: Vec<Option<usize>> = caches.iter().map(|c| c.index.get(item.key.as_str()).copied()).collect();
                let unchanged = |c: usize| match (old[c], stamp) {
                    (Some(i), Some(s)) => caches[c].meta.stamps[i] == Some(s),
                    _ => false,
                };
                let mut hash = None;
                if (0..m).any(|c| !unchanged(c)) {
                    match item.content_hash() {
                        Ok(h) => hash = Some(h),
                        Err(e) => {
                            fail(&mut stats, &item.key, &e);
                            plans.push(Plan::failed());
                            continue;
                        }
                    }
                }
                let mut sources = Vec::with_capacity(m);
                let mut hashes = Vec::with_capacity(m);
                let mut need = Vec::new();
                for c in 0..m {
                    let cache = &caches[c];
                    let (source, h) = match old[c] {
                        Some(i) if unchanged(c) => {
                            stats[c].unread += 1;
                            (Source::Same, cache.meta.hashes[i].clone())
                        }
                        old_row => {
                            // Hashed above: some cache (this one) saw a change.
                            let h = hash.clone().unwrap_or_default();
                            let source = match (old_row, by_hash[c].get(h.as_str())) {
                                (Some(i), _) if cache.meta.hashes[i] == h => {
                                    stats[c].restamped += usize::from(stamp.is_some());
                                    Source::Same
                                }
                                (_, Some(&j)) => {
                                    stats[c].moved += 1;
                                    Source::Moved(cache.row(j).to_vec())
                                }
                                _ => {
                                    need.push(c);
                                    Source::Encode
                                }
                            };
                            (source, h)
                        }
                    };
                    sources.push(source);
                    hashes.push(h);
                }
                if !need.is_empty() {
                    todo.push((n, need));
                }
                plans.push(Plan { sources, hashes, stamp, encoded: vec![false; m] });
            }
        }

        let mut done = items.len() - todo.len();
        progress(done);
        let mut since_save = vec![0usize; m];
        let mut last_save = vec![std::time::Instant::now(); m];
        // Items needing the same caches go together, in the items' order.
        let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for (n, need) in todo {
            match groups.iter_mut().find(|(g, _)| *g == need) {
                Some((_, members)) => members.push(n),
                None => groups.push((need, vec![n])),
            }
        }
        for (need, members) in &groups {
            for chunk in members.chunks(batch.max(1)) {
                let batch_items: Vec<Item> = chunk.iter().map(|&n| items[n].clone()).collect();
                let mut results = encode(&batch_items, need).into_iter();
                for &n in chunk {
                    let key = &items[n].key;
                    let mut per_cache = results.next().unwrap_or_default().into_iter();
                    for &c in need {
                        let cache = &mut caches[c];
                        match per_cache.next() {
                            Some(Ok(v)) if v.len() == cache.meta.dim => {
                                let plan = &mut plans[n];
                                cache.insert_stamped(key.clone(), plan.hashes[c].clone(), plan.stamp, &v)?;
                                plan.encoded[c] = true;
                                since_save[c] += 1;
                            }
                            Some(Ok(v)) => stats[c].failed.push((
                                key.clone(),
                                format!("encoder returned {} values, expected {}", v.len(), cache.meta.dim),
                            )),
                            Some(Err(reason)) => stats[c].failed.push((key.clone(), reason)),
                            None => stats[c].failed.push((key.clone(), "the encoder returned no result".into())),
                        }
                    }
                }
                done += chunk.len();
                progress(done);
                for c in 0..m {
                    if let Some(Some(cp)) = checkpoints.get(c) {
                        if since_save[c] > 0 && (since_save[c] >= cp.every_items || last_save[c].elapsed() >= cp.every)
                        {
                            caches[c].save(&cp.path)?;
                            stats[c].checkpoints += 1;
                            (since_save[c], last_save[c]) = (0, std::time::Instant::now());
                        }
                    }
                }
            }
        }

        let kept: std::collections::HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
        for (c, cache) in caches.iter_mut().enumerate() {
            let mut fresh = EmbeddingCache::new(cache.meta.model.clone(), cache.meta.dim);
            for (item, plan) in items.iter().zip(&mut plans) {
                let Some(source) = plan.sources.get_mut(c) else { continue };
                let row = match &*source {
                    Source::Failed => continue,
                    Source::Encode if !plan.encoded[c] => continue,
                    Source::Moved(v) => v.as_slice(),
                    Source::Same | Source::Encode => {
                        let Some(&i) = cache.index.get(item.key.as_str()) else { continue };
                        cache.row(i)
                    }
                };
                fresh.insert_stamped(item.key.clone(), std::mem::take(&mut plan.hashes[c]), plan.stamp, row)?;
                match source {
                    Source::Encode => stats[c].encoded += 1,
                    _ => stats[c].reused += 1,
                }
                // The moved row is copied; free it.
                *source = Source::Failed;
            }
            stats[c].removed = cache.meta.keys.iter().filter(|k| !kept.contains(k.as_str())).count();
            // Keys encoded now that were listed are kept; keys only in the old cache are removed.
            *cache = fresh;
        }
        Ok(stats)
    }
}

/// How one listed item gets its row in each cache of a refresh.
struct Plan {
    sources: Vec<Source>,
    hashes: Vec<String>,
    stamp: Option<Stamp>,
    /// Per cache: whether the item was encoded.
    encoded: Vec<bool>,
}

impl Plan {
    /// An item that could not be read: no row in any cache.
    fn failed() -> Self {
        Plan { sources: Vec::new(), hashes: Vec::new(), stamp: None, encoded: Vec::new() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(dir: &Path, names: &[(&str, &str)]) -> Vec<Item> {
        names
            .iter()
            .map(|(name, content)| {
                let path = dir.join(name);
                std::fs::write(&path, content).unwrap();
                Item::file(*name, path)
            })
            .collect()
    }

    /// A fake encoder: the content's length and first byte; fails on "bad".
    fn encode(batch: &[Item], calls: &mut usize) -> Vec<Result<Vec<f32>, String>> {
        *calls += batch.len();
        batch
            .iter()
            .map(|i| {
                let Content::File(path) = &i.content else { panic!("files only") };
                let c = std::fs::read(path).unwrap();
                if c == b"bad" {
                    Err("cannot decode".into())
                } else {
                    Ok(vec![c.len() as f32, c[0] as f32])
                }
            })
            .collect()
    }

    #[test]
    fn refresh_together_encodes_each_item_once_for_every_cache_that_lacks_it() {
        let dir = tempfile::tempdir().unwrap();
        let all = items(dir.path(), &[("a", "aaa"), ("b", "bb"), ("c", "c"), ("d", "bad")]);
        // Cache 0 already has a and b; cache 1 is new.
        let mut warm = EmbeddingCache::new("m0", 2);
        warm.refresh(&all[..2], 8, |b| encode(b, &mut 0), |_| {}).unwrap();
        let mut caches = vec![warm, EmbeddingCache::new("m1", 2)];
        let mut calls: Vec<(Vec<String>, Vec<usize>)> = Vec::new();
        let stats = EmbeddingCache::refresh_together(
            &mut caches,
            &all,
            8,
            &[None, None],
            |batch, need| {
                calls.push((batch.iter().map(|i| i.key.clone()).collect(), need.to_vec()));
                // Cache 1's rows differ from cache 0's: the first value doubled.
                encode(batch, &mut 0)
                    .into_iter()
                    .map(|r| {
                        need.iter()
                            .map(|&c| r.clone().map(|v| if c == 1 { vec![v[0] * 2.0, v[1]] } else { v }))
                            .collect()
                    })
                    .collect()
            },
            |_| {},
        )
        .unwrap();
        // a and b only for cache 1; c and d for both, in one call.
        assert_eq!(
            calls,
            [(vec!["a".to_owned(), "b".to_owned()], vec![1]), (vec!["c".to_owned(), "d".to_owned()], vec![0, 1]),]
        );
        assert_eq!((stats[0].encoded, stats[0].reused, stats[0].unread, stats[0].failed.len()), (1, 2, 2, 1));
        assert_eq!((stats[1].encoded, stats[1].reused, stats[1].failed.len()), (3, 0, 1));
        assert_eq!(caches[0].keys(), ["a", "b", "c"]);
        assert_eq!(caches[1].keys(), ["a", "b", "c"]);
        assert_eq!((caches[0].get("c"), caches[1].get("c")), (Some(&[1.0, 99.0][..]), Some(&[2.0, 99.0][..])));
        assert_eq!(caches[1].get("a"), Some(&[6.0, 97.0][..]));

        // Nothing changed: nothing is encoded and no file is read.
        let mut calls = 0;
        let stats = EmbeddingCache::refresh_together(
            &mut caches,
            &all[..3],
            8,
            &[None, None],
            |batch, _| {
                calls += batch.len();
                Vec::new()
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(calls, 0);
        assert!(stats.iter().all(|s| s.unread == 3 && s.reused == 3 && !s.changed()), "{stats:?}");
    }

    #[test]
    fn refresh_is_incremental_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/images.safetensors");
        let first = items(dir.path(), &[("a", "aaa"), ("b", "bb"), ("c", "bad")]);
        let mut calls = 0;
        let mut cache = EmbeddingCache::load_or_new(&path, "m", 2).unwrap();
        let stats = cache.refresh(&first, 2, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((stats.encoded, stats.reused, stats.removed, stats.failed.len()), (2, 0, 0, 1));
        assert_eq!(cache.get("a"), Some(&[3.0, 97.0][..]));
        cache.save(&path).unwrap();
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "a temporary was left behind");

        // Same content: nothing encoded but the failed item. Changed b, deleted a, new d.
        let mut cache = EmbeddingCache::load_or_new(&path, "m", 2).unwrap();
        assert_eq!(cache.len(), 2);
        calls = 0;
        let second = items(dir.path(), &[("b", "bbbb"), ("c", "bad"), ("d", "d")]);
        let stats = cache.refresh(&second, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!(calls, 3);
        assert_eq!((stats.encoded, stats.reused, stats.removed, stats.failed.len()), (2, 0, 1, 1));
        assert_eq!(cache.keys(), &["b".to_string(), "d".to_string()]);
        assert_eq!(cache.get("b"), Some(&[4.0, 98.0][..]));

        calls = 0;
        let stats = cache.refresh(&second[..1], 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((calls, stats.reused, stats.removed), (0, 1, 1));
    }

    #[test]
    fn texts_are_hashed_by_content() {
        let a = Item::text("q#0", "two dogs");
        assert_eq!(a.content_hash().unwrap(), Item::text("other", "two dogs").content_hash().unwrap());
        assert_ne!(a.content_hash().unwrap(), Item::text("q#0", "two cats").content_hash().unwrap());
    }

    #[test]
    fn another_model_starts_fresh_and_corruption_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let mut cache = EmbeddingCache::new("m", 1);
        cache.insert("k".into(), "h".into(), &[1.0]).unwrap();
        cache.save(&path).unwrap();
        assert_eq!(EmbeddingCache::load(&path).unwrap().unwrap(), cache);
        assert!(EmbeddingCache::load_or_new(&path, "other", 1).unwrap().is_empty());
        assert!(cache.insert("k".into(), "h".into(), &[1.0, 2.0]).is_err());
        std::fs::write(&path, b"not a cache").unwrap();
        let msg = EmbeddingCache::load(&path).unwrap_err().to_string();
        assert!(msg.contains("x.safetensors"), "{msg}");
        let missing = item_missing(dir.path());
        let mut calls = 0;
        let stats = cache.refresh(&[missing], 1, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!(stats.failed.len(), 1);
        assert!(cache.is_empty());
    }

    #[test]
    fn unchanged_stamps_skip_reading_and_renames_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = items(dir.path(), &[("a", "aaa"), ("b", "bb")]);
        let mut calls = 0;
        let mut cache = EmbeddingCache::new("m", 2);
        cache.refresh(&first, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!(calls, 2);

        // Same size and modification time: reused without reading, even though the bytes
        // changed behind the cache's back (the documented trade-off of metadata checks).
        let a = dir.path().join("a");
        let modified = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, "zzz").unwrap();
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(modified).unwrap();
        calls = 0;
        let stats = cache.refresh(&first, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((calls, stats.unread, stats.reused), (0, 2, 2));
        assert_eq!(cache.get("a"), Some(&[3.0, 97.0][..]), "the file was read");

        // A touched file with the same bytes is hashed, not encoded; a renamed one is found
        // by its hash under its new key.
        let later = modified + std::time::Duration::from_secs(5);
        std::fs::File::options().write(true).open(dir.path().join("b")).unwrap().set_modified(later).unwrap();
        std::fs::rename(dir.path().join("a"), dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c"), "aaa").unwrap();
        let second = vec![Item::file("b", dir.path().join("b")), Item::file("c", dir.path().join("c"))];
        calls = 0;
        let stats = cache.refresh(&second, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((calls, stats.unread, stats.moved, stats.reused, stats.removed), (0, 0, 1, 2, 1));
        assert_eq!(stats.restamped, 1, "b's new time is recorded");
        assert!(stats.changed());
        let stats = cache.refresh(&second, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((stats.unread, stats.restamped, stats.changed()), (2, 0, false));
        assert_eq!(cache.get("c"), Some(&[3.0, 97.0][..]));
        assert_eq!(cache.get("a"), None);
    }

    #[test]
    fn checkpoints_save_work_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.safetensors");
        let names: Vec<(String, String)> = (0..10).map(|i| (format!("f{i}"), "x".repeat(i + 1))).collect();
        let names: Vec<(&str, &str)> = names.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let all = items(dir.path(), &names);
        let checkpoint = Checkpoint { path: path.clone(), every_items: 4, every: std::time::Duration::from_secs(3600) };
        let mut cache = EmbeddingCache::new("m", 2);
        let mut saved_rows = Vec::new();
        let mut calls = 0;
        let stats = cache
            .refresh_saving(
                &all,
                2,
                Some(&checkpoint),
                |b| {
                    // What a killed process would leave: the last checkpoint on disk.
                    saved_rows.push(EmbeddingCache::load(&path).unwrap().map_or(0, |c| c.len()));
                    encode(b, &mut calls)
                },
                |_| {},
            )
            .unwrap();
        assert_eq!((stats.encoded, stats.checkpoints), (10, 2));
        assert_eq!(saved_rows, [0, 0, 4, 4, 8]);
        // A rerun from the last checkpoint encodes only the rest.
        let mut resumed = EmbeddingCache::load(&path).unwrap().unwrap();
        calls = 0;
        let stats = resumed.refresh(&all, 2, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((calls, stats.encoded, stats.reused), (2, 2, 8));
        assert_eq!(resumed, cache);
    }

    #[test]
    fn corrupt_or_newer_caches_are_reported_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let (cache, why) = EmbeddingCache::load_or_rebuild(&path, "m", 1).unwrap();
        assert!(cache.is_empty() && why.is_none());
        std::fs::write(&path, b"\x08\x00\x00\x00\x00\x00\x00\x00{}").unwrap();
        let (cache, why) = EmbeddingCache::load_or_rebuild(&path, "m", 1).unwrap();
        assert!(cache.is_empty());
        assert!(why.unwrap().to_string().contains("x.safetensors"));

        let mut newer = EmbeddingCache::new("m", 1);
        newer.insert("k".into(), "h".into(), &[1.0]).unwrap();
        newer.meta.format = CACHE_FORMAT + 1;
        newer.save(&path).unwrap();
        let (cache, why) = EmbeddingCache::load_or_rebuild(&path, "m", 1).unwrap();
        assert!(cache.is_empty());
        assert!(why.unwrap().to_string().contains("newer"), "the reason names the format");
    }

    #[test]
    fn version_1_caches_load_and_get_their_stamps_filled_in() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.safetensors");
        let all = items(dir.path(), &[("a", "aaa")]);
        let mut cache = EmbeddingCache::new("m", 2);
        let mut calls = 0;
        cache.refresh(&all, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        // Written as version 1 did: no format, no stamps.
        let meta = serde_json::json!({"model": "m", "dim": 2, "keys": ["a"], "hashes": [cache.meta.hashes[0]]});
        let bytes: Vec<u8> = cache.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = TensorView::new(Dtype::F32, vec![1, 2], &bytes).unwrap();
        let metadata: HashMap<String, String> = [("imsearch".to_owned(), meta.to_string())].into();
        std::fs::write(&path, safetensors::serialize([("embeddings", view)], &Some(metadata)).unwrap()).unwrap();
        let mut old = EmbeddingCache::load(&path).unwrap().unwrap();
        let stats = old.refresh(&all, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!((stats.reused, stats.unread, stats.encoded, stats.restamped), (1, 0, 0, 1));
        assert_eq!(old, cache);
        let stats = old.refresh(&all, 8, |b| encode(b, &mut calls), |_| {}).unwrap();
        assert_eq!(stats.unread, 1);
    }

    fn item_missing(dir: &Path) -> Item {
        Item::file("gone", dir.join("gone.jpg"))
    }
}
