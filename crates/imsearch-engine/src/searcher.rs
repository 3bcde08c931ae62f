//! A folder's index, the engine with its image-side work done once, the text encoder and the
//! compliance policies: everything a query needs, loaded once.

use std::path::PathBuf;

use candle::{Device, Tensor};
use imsearch_compliance::{BlockReason, Decision, ImagePolicy, TextPolicy};
use imsearch_text::MiniLm;

use crate::{
    engine::{layout_name, Engine},
    folder::{FolderIndex, IndexSummary},
    scorer::Prepared,
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
    text_model: MiniLm,
    text_policy: TextPolicy,
    /// Per index row: the image policy blocks it.
    blocked: Vec<bool>,
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
        let images = Tensor::from_slice(&index.features, (index.len(), index.dim), &Device::Cpu)?;
        let prepared = engine.scorer().prepare(&images)?;
        let blocked = (0..index.len())
            .map(|row| match &policy {
                Some(p) => p.policy.decide(Some(&index.slices(row, &p.parts))).is_blocked(),
                None => true,
            })
            .collect();
        let policy_path = policy.map(|p| p.path);
        // The raw rows live on in `prepared`; the index keeps only the keys and the summary.
        let mut index = index;
        index.features = Vec::new();
        Ok(Searcher { index, engine, prepared, text_model, text_policy: TextPolicy::default(), blocked, policy_path })
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
    /// [`Searcher::search`]), best first, with the image policy's decision.
    pub fn rank(&self, query: &str, k: usize) -> Result<Vec<Ranked>> {
        let query = query.trim();
        if query.is_empty() {
            return Err(Error::Invalid("the query is empty".into()));
        }
        let q = self.text_model.encode(&[query])?;
        let q = Tensor::from_vec(q.as_slice().to_vec(), (1, q.dim()), &Device::Cpu)?;
        let scores = self.engine.scorer().matrix(&self.prepared, &q)?.remove(0);
        Ok(imsearch_index::top_k(&scores, k)
            .iter()
            .map(|hit| Ranked { row: hit.row, score: hit.score, blocked: self.blocked[hit.row] })
            .collect())
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
        self.blocked.get(row).copied()
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
