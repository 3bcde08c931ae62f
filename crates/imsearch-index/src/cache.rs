//! The on-disk embedding cache: one safetensors file holding the matrix and, in its metadata,
//! the model id and each row's key and content hash.

use std::{
    collections::{BTreeMap, HashMap},
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
    /// Items that could not be read or encoded, with the reason; they have no row.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Meta {
    model: String,
    dim: usize,
    keys: Vec<String>,
    hashes: Vec<String>,
}

/// Embeddings of a collection under one model: row `i` is the embedding of `keys()[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingCache {
    meta: Meta,
    data: Vec<f32>,
}

/// The sha256 of a file's bytes, in hex.
pub fn content_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    Ok(hex(&Sha256::digest(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl EmbeddingCache {
    pub fn new(model: impl Into<String>, dim: usize) -> Self {
        EmbeddingCache {
            meta: Meta { model: model.into(), dim, keys: Vec::new(), hashes: Vec::new() },
            data: Vec::new(),
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

    /// The row-major `(len, dim)` matrix.
    pub fn matrix(&self) -> &[f32] {
        &self.data
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.meta.dim..(i + 1) * self.meta.dim]
    }

    /// The row of `key`, if cached.
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        self.meta.keys.iter().position(|k| k == key).map(|i| self.row(i))
    }

    /// Adds or replaces one row.
    pub fn insert(&mut self, key: String, hash: String, embedding: &[f32]) -> Result<()> {
        if embedding.len() != self.meta.dim {
            return Err(Error::Dimension { key, expected: self.meta.dim, found: embedding.len() });
        }
        match self.meta.keys.iter().position(|k| *k == key) {
            Some(i) => {
                self.meta.hashes[i] = hash;
                let dim = self.meta.dim;
                self.data[i * dim..(i + 1) * dim].copy_from_slice(embedding);
            }
            None => {
                self.meta.keys.push(key);
                self.meta.hashes.push(hash);
                self.data.extend_from_slice(embedding);
            }
        }
        Ok(())
    }

    /// Loads the cache at `path` if it exists and was made by `model` with dimension `dim`;
    /// otherwise an empty cache (a cache for another model is not an error, it is stale).
    pub fn load_or_new(path: &Path, model: &str, dim: usize) -> Result<Self> {
        match Self::load(path)? {
            Some(c) if c.meta.model == model && c.meta.dim == dim => Ok(c),
            _ => Ok(Self::new(model, dim)),
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
        let meta: Meta = serde_json::from_str(meta_json).map_err(|e| corrupt(e.to_string()))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
        let view = tensors.tensor("embeddings").map_err(|e| corrupt(e.to_string()))?;
        if view.dtype() != Dtype::F32
            || view.shape() != [meta.keys.len(), meta.dim]
            || meta.hashes.len() != meta.keys.len()
        {
            return Err(corrupt(format!(
                "shape {:?} does not match {} keys of dimension {}",
                view.shape(),
                meta.keys.len(),
                meta.dim
            )));
        }
        let data = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok(Some(EmbeddingCache { meta, data }))
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

    /// Brings the cache in line with `items`: rows of items whose content hash is unchanged are
    /// kept, new or changed items are encoded in batches of `batch` with `encode`, rows of
    /// items no longer listed are dropped. Rows end up in the order of `items`.
    ///
    /// `encode` gets a batch of items and returns one result per item; an item that fails to
    /// read or encode is reported in [`CacheStats::failed`] and gets no row. `progress` is
    /// called with the number of items done so far.
    pub fn refresh(
        &mut self,
        items: &[Item],
        batch: usize,
        mut encode: impl FnMut(&[Item]) -> Vec<Result<Vec<f32>, String>>,
        mut progress: impl FnMut(usize),
    ) -> Result<CacheStats> {
        let mut stats = CacheStats::default();
        let old: BTreeMap<&str, usize> = self.meta.keys.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let mut fresh = EmbeddingCache::new(self.meta.model.clone(), self.meta.dim);
        let mut todo: Vec<(Item, String)> = Vec::new();
        let mut hashes: Vec<Option<String>> = Vec::with_capacity(items.len());
        for item in items {
            match item.content_hash() {
                Ok(hash) => {
                    let reusable = old.get(item.key.as_str()).filter(|&&i| self.meta.hashes[i] == hash);
                    if reusable.is_none() {
                        todo.push((item.clone(), hash.clone()));
                    }
                    hashes.push(Some(hash));
                }
                Err(e) => {
                    let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
                    stats.failed.push((item.key.clone(), format!("{e}{cause}")));
                    hashes.push(None);
                }
            }
        }
        let mut encoded: HashMap<String, Vec<f32>> = HashMap::new();
        let mut done = items.len() - todo.len();
        progress(done);
        for chunk in todo.chunks(batch.max(1)) {
            let batch_items: Vec<Item> = chunk.iter().map(|(i, _)| i.clone()).collect();
            let results = encode(&batch_items);
            for ((item, _), result) in chunk.iter().zip(results) {
                match result {
                    Ok(v) if v.len() == self.meta.dim => {
                        encoded.insert(item.key.clone(), v);
                    }
                    Ok(v) => stats.failed.push((
                        item.key.clone(),
                        format!("encoder returned {} values, expected {}", v.len(), self.meta.dim),
                    )),
                    Err(reason) => stats.failed.push((item.key.clone(), reason)),
                }
            }
            done += chunk.len();
            progress(done);
        }
        for (item, hash) in items.iter().zip(hashes) {
            let Some(hash) = hash else { continue };
            if let Some(v) = encoded.remove(&item.key) {
                fresh.insert(item.key.clone(), hash, &v)?;
                stats.encoded += 1;
            } else if let Some(&i) = old.get(item.key.as_str()).filter(|&&i| self.meta.hashes[i] == hash) {
                let row = self.row(i).to_vec();
                fresh.insert(item.key.clone(), hash, &row)?;
                stats.reused += 1;
            }
        }
        let kept: std::collections::HashSet<&str> = items.iter().map(|i| i.key.as_str()).collect();
        stats.removed = self.meta.keys.iter().filter(|k| !kept.contains(k.as_str())).count();
        *self = fresh;
        Ok(stats)
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

    fn item_missing(dir: &Path) -> Item {
        Item::file("gone", dir.join("gone.jpg"))
    }
}
