//! A folder's index, the engine with its image-side work done once, the text encoder and the
//! compliance policies: everything a query needs, loaded once.

use std::{path::PathBuf, sync::OnceLock};

use candle::{Device, Tensor};
use imsearch_compliance::{BlockReason, Decision, ImagePolicy, TextPolicy};
use imsearch_text::MiniLm;

use crate::{
    engine::{layout_name, Engine},
    folder::{FolderIndex, IndexSummary},
    scorer::{Prepared, Scorer},
    Error, Result,
};

/// One ranked image of a [`Searcher`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// The image's row in the index ([`Searcher::path`]).
    pub row: usize,
    pub score: f32,
    /// The image policy blocks it (or could not score it: fail closed).
    pub blocked: bool,
}

/// The image policy a searcher applies: the policy and the feature parts it reads (ids of the
/// index's parts), with where it came from for reports.
#[derive(Debug, Clone)]
pub struct ImagePolicySource {
    pub policy: ImagePolicy,
    pub parts: Vec<String>,
    pub path: PathBuf,
}

pub struct Searcher {
    index: FolderIndex,
    engine: Engine,
    prepared: Prepared,
    /// Per prepared row, its index row (the prepared rows come from the folder's saved
    /// preparation first, then the images prepared now).
    order: Vec<usize>,
    /// Rows of the preparation read back from the folder's saved one.
    reused_rows: usize,
    text_model: MiniLm,
    text_policy: TextPolicy,
    /// Per index row: why the image policy blocks it (`None`: shown).
    blocked: Vec<Option<BlockReason>>,
    /// The image policy, for photos from outside the index used as examples.
    policy: Option<ImagePolicySource>,
    /// [`crate::space_norms`] of `prepared`, made by the first "more like this".
    norms: OnceLock<Vec<Vec<f32>>>,
    /// Where the image policy came from; `None` when none was usable (every image blocked).
    policy_path: Option<PathBuf>,
}

impl std::fmt::Debug for Searcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Searcher").field("index", &self.index.summary).field("engine", &self.engine).finish()
    }
}

impl Searcher {
    /// Prepares the index for the engine (its image-side work, once) and takes each image's
    /// decision from `policy`; without one every image is blocked (fail closed), as is an image
    /// the policy cannot score. An index of another layout than the engine's is an error.
    pub fn new(
        index: FolderIndex,
        engine: Engine,
        text_model: MiniLm,
        policy: Option<ImagePolicySource>,
    ) -> Result<Self> {
        if index.is_empty() {
            return Err(Error::Invalid(format!("no image indexed in {}", index.summary.images_dir.display())));
        }
        let layout = layout_name(&index.parts);
        if layout != engine.layout() {
            return Err(Error::Invalid(format!(
                "the index holds features of {layout}, but the engine reads {}",
                engine.layout()
            )));
        }
        // A search reads the scorers' state alone: the raw rows are dropped here.
        let (prepared, order, reused_rows) = prepare_folder(engine.scorer().as_ref(), engine.fingerprint(), &index)?;
        let blocked = (0..index.len())
            .map(|row| match &policy {
                Some(p) => p.policy.decide(Some(&index.slices(row, &p.parts))),
                None => Decision::Block(no_policy()),
            })
            .map(|d| match d {
                Decision::Block(reason) => Some(reason),
                Decision::Allow => None,
            })
            .collect();
        let policy_path = policy.as_ref().map(|p| p.path.clone());
        // The index keeps only the keys and the summary.
        let mut index = index;
        index.features = Vec::new();
        Ok(Searcher {
            index,
            engine,
            prepared,
            order,
            reused_rows,
            text_model,
            text_policy: TextPolicy::default(),
            blocked,
            policy,
            norms: OnceLock::new(),
            policy_path,
        })
    }

    /// A searcher over images prepared elsewhere (the rows of a collection kept in a vector
    /// database): `index` holds their keys (no features), `prepared` row `i` is the engine's
    /// preparation of `index` row `i` and `blocked[i]` the image policy's decision on it, made
    /// when it was indexed. `policy` decides on photos from outside (more like this).
    pub fn from_prepared(
        index: FolderIndex,
        prepared: Prepared,
        blocked: Vec<Option<BlockReason>>,
        engine: Engine,
        text_model: MiniLm,
        policy: Option<ImagePolicySource>,
    ) -> Result<Self> {
        if index.is_empty() {
            return Err(Error::Invalid(format!("no image indexed for {}", index.summary.images_dir.display())));
        }
        if prepared.len() != index.len() || blocked.len() != index.len() {
            return Err(Error::Invalid(format!(
                "{} images, but {} prepared rows and {} decisions",
                index.len(),
                prepared.len(),
                blocked.len()
            )));
        }
        let order = (0..index.len()).collect();
        let policy_path = policy.as_ref().map(|p| p.path.clone());
        let reused_rows = index.len();
        Ok(Searcher {
            index,
            engine,
            prepared,
            order,
            reused_rows,
            text_model,
            text_policy: TextPolicy::default(),
            blocked,
            policy,
            norms: OnceLock::new(),
            policy_path,
        })
    }

    /// The text policy's decision on `query`: a query that names a child gets no results.
    pub fn gate(&self, query: &str) -> Decision {
        self.text_policy.decide(query)
    }

    /// The `k` best images for `query`, best first, with the image policy's decision; `Err`
    /// with the reason when the text policy blocks the query. An empty query is an error.
    pub fn search(&self, query: &str, k: usize) -> Result<std::result::Result<Vec<Ranked>, BlockReason>> {
        match self.gate(query) {
            Decision::Block(reason) => Ok(Err(reason)),
            Decision::Allow => self.rank(query, k).map(Ok),
        }
    }

    /// The `k` best images for `query` (not checked against the text policy: see
    /// [`Searcher::search`]), best first by the engine's ranking score, each with the
    /// calibrated probability that it matches ([`Engine::match_probabilities`]) as its score
    /// and the image policy's decision.
    pub fn rank(&self, query: &str, k: usize) -> Result<Vec<Ranked>> {
        let query = query.trim();
        if query.is_empty() {
            return Err(Error::Invalid("the query is empty".into()));
        }
        let q = self.text_model.encode(&[query])?;
        let q = Tensor::from_vec(q.as_slice().to_vec(), (1, q.dim()), &Device::Cpu)?;
        let scores = self.engine.scorer().matrix(&self.prepared, &q)?.remove(0);
        let top = imsearch_index::top_k(&scores, k);
        // The ranking is the ensemble's (relative to this collection); the score shown is the
        // calibrated probability of a match, which depends on the pair alone.
        let rows: Vec<usize> = top.iter().map(|hit| hit.row).collect();
        let probabilities = self.engine.match_probabilities(&self.prepared.select(&rows)?, &q)?.remove(0);
        Ok(rows
            .iter()
            .zip(probabilities)
            .map(|(&r, score)| {
                let row = self.order[r];
                Ranked { row, score, blocked: self.blocked[row].is_some() }
            })
            .collect())
    }

    /// Of the best `CANDIDATES_PER_RESULT * k` images for `query` in rank order, the first `k`
    /// whose probability of a match is at least `min_score`: possibly none ("no photo matches
    /// well enough"). Not checked against the text policy (see [`Searcher::search`]).
    pub fn rank_matching(&self, query: &str, k: usize, min_score: f32) -> Result<Vec<Ranked>> {
        let mut ranked = self.rank(query, k.saturating_mul(CANDIDATES_PER_RESULT))?;
        ranked.retain(|r| r.score >= min_score);
        ranked.truncate(k);
        Ok(ranked)
    }

    /// Images whose preparation for the engine was read back from the folder's saved one
    /// (the rest were prepared now, and the saved one updated).
    pub fn reused_preparations(&self) -> usize {
        self.reused_rows
    }

    /// Images searched.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The file of index row `row`, whatever the policy says of it.
    pub fn path(&self, row: usize) -> Option<PathBuf> {
        self.index.path(row)
    }

    /// The image policy blocks index row `row` (`None`: no such row).
    pub fn is_blocked(&self, row: usize) -> Option<bool> {
        self.blocked.get(row).map(Option::is_some)
    }

    /// The `k` images most like index row `row` (itself left out), best first, scored by
    /// [`crate::likeness`] (-1 to 1) in the engine's spaces, with the image policy's decision.
    /// `Err` with the reason when the policy blocks the example: a photo that is never shown
    /// is not searched with either. A row past the end is an error.
    pub fn similar(&self, row: usize, k: usize) -> Result<std::result::Result<Vec<Ranked>, BlockReason>> {
        let Some(decision) = self.blocked.get(row) else {
            return Err(Error::Invalid(format!("no image at row {row} of an index of {}", self.len())));
        };
        if let Some(reason) = decision {
            return Ok(Err(reason.clone()));
        }
        let Some(prepared_row) = self.order.iter().position(|&r| r == row) else {
            return Err(Error::Invalid(format!("image {row} was not prepared for the engine")));
        };
        self.most_like(&self.prepared, prepared_row, k).map(Ok)
    }

    /// The `k` images most like a photo from outside the index, given as its feature row in the
    /// index's layout ([`crate::encode_file`]), best first; `Err` with the reason when the image
    /// policy blocks the example (or there is no policy: fail closed).
    pub fn similar_to(&self, features: &[f32], k: usize) -> Result<std::result::Result<Vec<Ranked>, BlockReason>> {
        let dim: usize = self.index.parts.iter().map(|p| p.dim).sum();
        if features.len() != dim {
            return Err(Error::Invalid(format!(
                "an example of {} features, but the index holds rows of {dim}",
                features.len()
            )));
        }
        let decision = match &self.policy {
            Some(p) => p.policy.decide(Some(&crate::folder::slices(&self.index.parts, features, &p.parts))),
            None => Decision::Block(no_policy()),
        };
        if let Decision::Block(reason) = decision {
            return Ok(Err(reason));
        }
        let example = self.engine.scorer().prepare(&Tensor::from_slice(features, (1, dim), &Device::Cpu)?)?;
        self.most_like(&example, 0, k).map(Ok)
    }

    /// The `k` best of the collection by likeness to row `row` of `example`; when `example` is
    /// the collection, that row itself is left out.
    fn most_like(&self, example: &Prepared, row: usize, k: usize) -> Result<Vec<Ranked>> {
        let norms = match self.norms.get() {
            Some(n) => n,
            None => {
                let n = crate::space_norms(&self.prepared)?;
                self.norms.get_or_init(|| n)
            }
        };
        let mut scores = crate::likeness(&self.prepared, norms, example, row)?;
        if std::ptr::eq(example, &self.prepared) {
            scores[row] = f32::NEG_INFINITY;
        }
        Ok(imsearch_index::top_k(&scores, k)
            .iter()
            .filter(|hit| hit.score.is_finite())
            .map(|hit| {
                let row = self.order[hit.row];
                Ranked { row, score: hit.score, blocked: self.blocked[row].is_some() }
            })
            .collect())
    }

    pub fn summary(&self) -> &IndexSummary {
        &self.index.summary
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Where the image policy came from; `None` when none was usable (every image blocked).
    pub fn policy_path(&self) -> Option<&PathBuf> {
        self.policy_path.as_ref()
    }
}

/// How many ranked images [`Searcher::rank_matching`] looks at per result asked for: a pair's
/// probability of a match mostly falls with its rank, not strictly.
pub const CANDIDATES_PER_RESULT: usize = 4;

/// Why every image is blocked when no image policy could be loaded.
fn no_policy() -> BlockReason {
    BlockReason::Unscored { why: "no usable image policy".into() }
}

/// The saved preparation's format: its tensors (`prepared.*`, see `Prepared::to_tensors`),
/// `ids` (per row the sha256, in hex, of the image's key and content hash) and `format`.
/// Format 1 kept f16 rows; 2 keeps 8-bit codes (a format 1 file is reported and rebuilt).
const PREPARED_FORMAT: u32 = 2;

/// The engine's preparation of the index's images for search, with each prepared row's index
/// row and how many rows came from the folder's saved preparation. The preparation is saved
/// beside the index caches (`prepared-<engine fingerprint>.safetensors`, atomically) and read
/// back for the images whose key and content are unchanged, so a search over an unchanged
/// folder prepares nothing. An engine assembled in memory (no fingerprint) prepares everything
/// and saves nothing; a saved preparation that cannot be read is reported and rebuilt.
fn prepare_folder(
    scorer: &dyn Scorer,
    fingerprint: Option<&str>,
    index: &FolderIndex,
) -> Result<(Prepared, Vec<usize>, usize)> {
    let features = |rows: &[usize]| -> Result<Tensor> {
        let mut data = Vec::with_capacity(rows.len() * index.dim);
        for &r in rows {
            data.extend_from_slice(&index.features[r * index.dim..(r + 1) * index.dim]);
        }
        Ok(Tensor::from_vec(data, (rows.len(), index.dim), &Device::Cpu)?)
    };
    let all: Vec<usize> = (0..index.len()).collect();
    let (Some(fingerprint), true) = (fingerprint, index.hashes.len() == index.len()) else {
        return Ok((crate::scorer::prepare_for_search(scorer, &features(&all)?)?, all, 0));
    };
    let ids: Vec<String> = index
        .keys
        .iter()
        .zip(&index.hashes)
        .map(|(k, h)| imsearch_index::Item::text("", format!("{k}\0{h}")).content_hash())
        .collect::<std::result::Result<_, _>>()?;
    let path = index.summary.cache_dir.join(format!("prepared-{}.safetensors", &fingerprint[..16]));
    let saved = match load_prepared(&path) {
        Ok(saved) => saved,
        Err(why) => {
            tracing::warn!("rebuilding the saved preparation {}: {why}", path.display());
            None
        }
    };
    let (mut reuse, mut reuse_rows, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    match &saved {
        Some((saved_ids, _)) => {
            let at: std::collections::HashMap<&str, usize> =
                saved_ids.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
            for (row, id) in ids.iter().enumerate() {
                match at.get(id.as_str()) {
                    Some(&i) => {
                        reuse.push(i);
                        reuse_rows.push(row);
                    }
                    None => fresh.push(row),
                }
            }
        }
        None => fresh = all.clone(),
    }
    let mut blocks = Vec::new();
    if let Some((_, prepared)) = &saved {
        if !reuse.is_empty() {
            blocks.push(if reuse.len() == prepared.len() && reuse.iter().enumerate().all(|(i, &r)| i == r) {
                prepared.clone()
            } else {
                prepared.select(&reuse)?
            });
        }
    }
    if !fresh.is_empty() {
        blocks.push(crate::scorer::prepare_for_search(scorer, &features(&fresh)?)?);
    }
    let (prepared, order) = match Prepared::concat(blocks) {
        Ok(p) => (p, reuse_rows.iter().chain(&fresh).copied().collect::<Vec<_>>()),
        Err(why) => {
            // A saved preparation of another shape: prepared again from the features.
            tracing::warn!("rebuilding the saved preparation {}: {why}", path.display());
            (reuse, fresh) = (Vec::new(), all.clone());
            (crate::scorer::prepare_for_search(scorer, &features(&all)?)?, all)
        }
    };
    let unchanged = fresh.is_empty() && saved.as_ref().is_some_and(|(s, _)| s.len() == reuse.len());
    if !unchanged {
        let ids_in_order: Vec<&str> = order.iter().map(|&r| ids[r].as_str()).collect();
        if let Err(why) = save_prepared(&path, &prepared, &ids_in_order) {
            // The search works without it; the next start prepares again.
            tracing::warn!("could not save the preparation {}: {why}", path.display());
        }
    }
    Ok((prepared, order, reuse.len()))
}

/// The saved preparation at `path` and its row ids; `None` when there is none.
fn load_prepared(path: &std::path::Path) -> Result<Option<(Vec<String>, Prepared)>> {
    if !path.is_file() {
        return Ok(None);
    }
    let tensors = candle::safetensors::load(path, &Device::Cpu)?;
    let corrupt = |what: &str| Error::Invalid(format!("{}: {what}", path.display()));
    let format: Vec<u32> = tensors.get("format").ok_or_else(|| corrupt("no format"))?.to_vec1()?;
    if format != [PREPARED_FORMAT] {
        return Err(corrupt(&format!("format {format:?}, expected {PREPARED_FORMAT}")));
    }
    let ids = tensors.get("ids").ok_or_else(|| corrupt("no ids"))?;
    let (rows, width) = ids.dims2()?;
    if width != 64 {
        return Err(corrupt("ids of the wrong width"));
    }
    let bytes: Vec<u8> = ids.flatten_all()?.to_vec1()?;
    let ids = bytes
        .chunks_exact(64)
        .map(|c| String::from_utf8(c.to_vec()).map_err(|_| corrupt("ids that are not text")))
        .collect::<Result<Vec<_>>>()?;
    let prepared =
        Prepared::from_tensors(&tensors, "prepared", rows).ok_or_else(|| corrupt("tensors of the wrong shape"))?;
    Ok(Some((ids, prepared)))
}

fn save_prepared(path: &std::path::Path, prepared: &Prepared, ids: &[&str]) -> Result<()> {
    let mut tensors = std::collections::HashMap::new();
    prepared.to_tensors("prepared", &mut tensors)?;
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.bytes()).collect();
    tensors.insert("ids".to_owned(), Tensor::from_vec(bytes, (ids.len(), 64), &Device::Cpu)?);
    tensors.insert("format".to_owned(), Tensor::new(&[PREPARED_FORMAT], &Device::Cpu)?);
    imsearch_fsio::write_atomic_via_path(path, |temp| candle::safetensors::save(&tensors, temp).map_err(Error::from))?;
    // Preparations for other engines are of no further use.
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name()) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let other = entry.file_name();
            let other = other.to_string_lossy();
            if other.starts_with("prepared-") && other.ends_with(".safetensors") && *other != *name.to_string_lossy() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::IndexSummary;

    fn index(dir: &std::path::Path, features: &Tensor, hashes: Vec<String>) -> FolderIndex {
        let (n, dim) = features.dims2().unwrap();
        FolderIndex {
            keys: (0..n).map(|i| format!("photo{i}.jpg")).collect(),
            hashes,
            features: features.flatten_all().unwrap().to_vec1().unwrap(),
            dim,
            parts: Vec::new(),
            summary: IndexSummary {
                images_dir: dir.to_owned(),
                cache_dir: dir.to_owned(),
                indexed: n,
                encoded: 0,
                reused: n,
                removed: 0,
                skipped: Vec::new(),
                ignored_files: 0,
                rebuilt: Vec::new(),
            },
        }
    }

    #[test]
    fn a_folder_is_prepared_once_and_only_its_changed_images_again() {
        let dir = tempfile::tempdir().unwrap();
        let scorer = crate::scorer::tests::fusion(24);
        let features = crate::scorer::tests::random(50, 24, 9);
        let text = crate::scorer::tests::random(1, 12, 10);
        let hashes: Vec<String> = (0..50).map(|i| format!("{i:064x}")).collect();
        let scores_by_row = |(p, order, _): &(Prepared, Vec<usize>, usize)| {
            let s = scorer.matrix(p, &text).unwrap().remove(0);
            let mut by_row = vec![0.0; s.len()];
            for (i, &row) in order.iter().enumerate() {
                by_row[row] = s[i];
            }
            by_row
        };

        // Without a fingerprint nothing is saved.
        let plain = prepare_folder(&scorer, None, &index(dir.path(), &features, hashes.clone())).unwrap();
        assert_eq!(plain.2, 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let want = scores_by_row(&plain);

        let fp = "ab".repeat(32);
        let first = prepare_folder(&scorer, Some(&fp), &index(dir.path(), &features, hashes.clone())).unwrap();
        assert_eq!(first.2, 0);
        let again = prepare_folder(&scorer, Some(&fp), &index(dir.path(), &features, hashes.clone())).unwrap();
        assert_eq!(again.2, 50, "every row read back");
        assert_eq!(scores_by_row(&again), want);

        // Image 7's file changed (new hash, new features): only it is prepared again, and it
        // scores as its new features do.
        let mut changed = hashes.clone();
        changed[7] = format!("{:064x}", 999);
        let mut rows: Vec<f32> = features.flatten_all().unwrap().to_vec1().unwrap();
        rows[7 * 24..8 * 24].iter_mut().for_each(|v| *v = -*v);
        let new_features = Tensor::from_vec(rows, (50, 24), &Device::Cpu).unwrap();
        let third = prepare_folder(&scorer, Some(&fp), &index(dir.path(), &new_features, changed.clone())).unwrap();
        assert_eq!(third.2, 49);
        assert_eq!(*third.1.last().unwrap(), 7);
        let fresh = prepare_folder(&scorer, None, &index(dir.path(), &new_features, changed)).unwrap();
        let (got, want) = (scores_by_row(&third), scores_by_row(&fresh));
        // Image 7 was prepared alone: up to one 8-bit step of a projection from the full product.
        assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-3), "{got:?} against {want:?}");

        // A corrupt saved preparation is rebuilt, not an error.
        let saved = std::fs::read_dir(dir.path()).unwrap().next().unwrap().unwrap().path();
        std::fs::write(&saved, b"not a preparation").unwrap();
        let rebuilt = prepare_folder(&scorer, Some(&fp), &index(dir.path(), &features, hashes.clone())).unwrap();
        assert_eq!(rebuilt.2, 0);
        assert_eq!(scores_by_row(&rebuilt), scores_by_row(&plain));

        // So is one of an older format (format 1 kept f16 rows): its rows are not read.
        let mut tensors = candle::safetensors::load(&saved, &Device::Cpu).unwrap();
        tensors.insert("format".into(), Tensor::new(&[1u32], &Device::Cpu).unwrap());
        candle::safetensors::save(&tensors, &saved).unwrap();
        assert!(load_prepared(&saved).is_err());
        let again = prepare_folder(&scorer, Some(&fp), &index(dir.path(), &features, hashes)).unwrap();
        assert_eq!(again.2, 0);
        assert_eq!(scores_by_row(&again), scores_by_row(&plain));
    }
}
