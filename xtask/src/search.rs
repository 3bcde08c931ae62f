//! `cargo xtask search "two dogs play in the snow"`: ranks the photos of a folder by the fusion
//! score for a text query, with the compliance policies applied.
//!
//! - **Index**: the folder's image files (`.jpg`, `.jpeg`, `.png`, recursively, hidden entries
//!   skipped) are encoded by every image encoder into one embedding cache per encoder under
//!   `<workdir>/index/<hash of the folder's canonical path>/<model id>.safetensors`. A rerun
//!   re-encodes only new and changed files and drops deleted ones; a file that cannot be read
//!   or decoded is a counted, reported skip.
//! - **Model**: the fusion checkpoint of `cargo xtask train` for these options, trained first
//!   when absent (not with `--json`, whose stdout carries nothing but the JSON object).
//! - **Compliance**: a query the text policy blocks gets the disclaimer and no results. A result
//!   the image policy blocks keeps its rank and score, and the disclaimer replaces its path. The
//!   image policy is the checkpoint `cargo xtask compliance` (or the demo) saves; search checks
//!   that it reads this feature layout. Without a usable policy every result is blocked (fail
//!   closed).

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use candle::{Device, Tensor};
use imsearch_compliance::{Decision, TextPolicy, DISCLAIMER};
use imsearch_data::Dataset;
use imsearch_fusion::FusionModel;
use imsearch_index::{EmbeddingCache, Item};
use imsearch_models::ModelStore;
use imsearch_text::MiniLm;
use imsearch_vision::{EncoderKind, ImageEncoder};
use serde::Serialize;

use crate::{
    compliance::{self, PolicyCheckpoint, PolicyOpts},
    embed::{self, EmbedOpts},
    paths,
    train::{self, Pipeline, Prepared},
};

/// File extensions indexed (the image decoders the workspace enables).
const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// What to look for, e.g. "two dogs play in the snow".
    query: String,
    /// How many results to show.
    #[arg(short = 'k', long = "top", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    /// Print one JSON object on stdout, for scripts (progress and notes go to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    setup: Setup,
}

/// What a searcher searches with; flatten into any command that opens a [`Searcher`].
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Setup {
    /// The folder of photos to search (default: test_images/ of the dataset).
    #[arg(long, value_name = "DIR")]
    pub(crate) images: Option<PathBuf>,
    /// The dataset (for the default folder and to train a missing model), the models and the
    /// options of the fusion model searched with.
    #[command(flatten)]
    pub(crate) pipeline: Pipeline,
    #[command(flatten)]
    pub(crate) policy: PolicyOpts,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Output {
    query: String,
    /// The query names a child: no results, the disclaimer instead.
    blocked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<IndexSummary>,
    /// Where the image policy came from; `null` when none was usable (every result blocked).
    #[serde(skip_serializing_if = "Option::is_none")]
    image_policy: Option<Option<PathBuf>>,
    results: Vec<Hit>,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct IndexSummary {
    pub(crate) images_dir: PathBuf,
    cache_dir: PathBuf,
    /// Images with an embedding from every encoder: the ones searched.
    pub(crate) indexed: usize,
    /// Images encoded now, reused from the cache, dropped (deleted files); the most any encoder
    /// did (the fewest, for `reused`).
    encoded: usize,
    reused: usize,
    removed: usize,
    /// Files that could not be read or decoded, with the reason.
    pub(crate) skipped: Vec<Skipped>,
    /// Files that are not images by extension.
    ignored_files: usize,
}

impl std::fmt::Display for IndexSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images in {} ({} encoded, {} reused, {} removed; {} skipped, {} other files ignored); cache {}",
            self.indexed,
            self.images_dir.display(),
            self.encoded,
            self.reused,
            self.removed,
            self.skipped.len(),
            self.ignored_files,
            self.cache_dir.display()
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Skipped {
    pub(crate) file: String,
    pub(crate) reason: String,
}

#[derive(Debug, Serialize)]
struct Hit {
    rank: usize,
    score: f32,
    /// `null` when the image is blocked.
    path: Option<PathBuf>,
    blocked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    disclaimer: Option<&'static str>,
}

/// One ranked image of a [`Searcher`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ranked {
    /// The image's row in the index ([`Searcher::path`]).
    pub(crate) row: usize,
    pub(crate) score: f32,
    /// The image policy blocks it (or could not score it: fail closed).
    pub(crate) blocked: bool,
}

/// A folder's index, the fusion model with its image side applied once, the text encoder and the
/// image policy's decision for every image: everything a query needs, loaded once.
pub(crate) struct Searcher {
    index: FolderIndex,
    fusion: FusionModel,
    text_model: MiniLm,
    /// The images in the fusion model's shared space, row-major.
    shared_images: Vec<f32>,
    shared_dim: usize,
    calibration: (f32, f32),
    /// Per index row: the image policy blocks it.
    blocked: Vec<bool>,
    /// Where the image policy came from; `None` when none was usable (every image blocked).
    policy_path: Option<PathBuf>,
}

impl Searcher {
    /// Indexes the folder (incrementally) and loads the models. With `may_train`, a missing
    /// fusion model or image policy is trained from the dataset; without, it is an error.
    pub(crate) fn open(setup: &Setup, may_train: bool) -> Result<Searcher> {
        let store = setup.pipeline.models.store()?;
        let data = || paths::data_dir(setup.pipeline.data.as_deref());
        let folder = match &setup.images {
            Some(dir) => dir.clone(),
            None => data()?.join("test_images"),
        };
        let kinds = setup.pipeline.embed.kinds()?;
        let layout = kinds.iter().map(|&k| setup.pipeline.embed.image_model_id(k)).collect::<Vec<_>>().join("+");
        let index = index_folder(&folder, &setup.pipeline.embed, &kinds, &store)?;
        if index.keys.is_empty() {
            let summary = &index.summary;
            bail!(
                "no image in {} could be indexed ({} image files skipped, {} other files ignored; looked for {})",
                summary.images_dir.display(),
                summary.skipped.len(),
                summary.ignored_files,
                IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
            );
        }

        // The fusion model, and the image policy; training either needs the dataset.
        let mut prepared_data: Option<(Dataset, embed::Embeddings)> = None;
        let load_data = || -> Result<(Dataset, embed::Embeddings)> {
            let data = data()?;
            let ds = Dataset::load(&data, Default::default())
                .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
            let emb = embed::embed_all(&ds, &store, &setup.pipeline.embed)?;
            Ok((ds, emb))
        };
        let checkpoint = train::checkpoint_dir(&setup.pipeline.embed, &setup.pipeline.train);
        let fusion = match FusionModel::load(&checkpoint, &layout, embed::TEXT_MODEL, &Device::Cpu) {
            Ok(model) => model,
            Err(e) if !may_train => {
                return Err(anyhow::Error::new(e)).with_context(|| {
                    format!(
                        "no usable fusion model in {}; run `cargo xtask train` (or this search without --json) once",
                        checkpoint.display()
                    )
                })
            }
            Err(e) => {
                eprintln!("no usable fusion model in {} ({e}); training it", checkpoint.display());
                let (ds, emb) = prepared_data.insert(load_data()?);
                let prepared = Prepared::new(ds, emb, &setup.pipeline.train)?;
                prepared.print_counts();
                train::train_and_save(&prepared, &setup.pipeline.embed, &setup.pipeline.train)?.0
            }
        };
        // The image policy reads its own encoders' slices of each row.
        let policy_ids = setup.policy.model_ids(&setup.pipeline.embed)?;
        let policy_layout = policy_ids.join("+");
        let policy_dim: usize = index.parts.iter().filter(|p| policy_ids.contains(&p.0)).map(|p| p.2).sum();
        let policy = image_policy(setup, may_train, &policy_layout, policy_dim, &mut prepared_data, &load_data);
        let blocked: Vec<bool> = (0..index.keys.len())
            .map(|row| match &policy {
                Ok((ckpt, _)) => ckpt.policy.decide(Some(&index.slices(row, &policy_ids))).is_blocked(),
                Err(_) => true,
            })
            .collect();
        let policy_path = match policy {
            Ok((_, path)) => Some(path),
            Err(e) => {
                eprintln!("warning: no usable image policy ({e:#}); every result is blocked (fail closed)");
                None
            }
        };

        let minilm = crate::models::ensure(&store, embed::TEXT_MODEL)?;
        let text_model = MiniLm::load(&minilm.dir, &Device::Cpu).context("failed to load MiniLM")?;
        let images = Tensor::from_slice(&index.features, (index.keys.len(), index.dim), &Device::Cpu)?;
        let images = fusion.embed_images(&images)?;
        let shared_dim = images.dims2()?.1;
        let shared_images = images.flatten_all()?.to_vec1::<f32>()?;
        let calibration = fusion.calibration()?;
        Ok(Searcher { index, fusion, text_model, shared_images, shared_dim, calibration, blocked, policy_path })
    }

    /// The `k` best images for `query` (not checked against the text policy: see
    /// [`TextPolicy::decide`]), best first, with the image policy's decision.
    pub(crate) fn rank(&self, query: &str, k: usize) -> Result<Vec<Ranked>> {
        let q = self.text_model.encode(&[query]).context("failed to encode the query")?;
        let q = Tensor::from_vec(q.as_slice().to_vec(), (1, q.dim()), &Device::Cpu)?;
        let q = self.fusion.embed_texts(&q)?.flatten_all()?.to_vec1::<f32>()?;
        let mut cosines = Vec::new();
        imsearch_index::dot_scores(&self.shared_images, self.shared_dim, &q, &mut cosines);
        let (a, b) = self.calibration;
        let scores: Vec<f32> = cosines.iter().map(|c| 1.0 / (1.0 + (-(a * c + b)).exp())).collect();
        Ok(imsearch_index::top_k(&scores, k)
            .iter()
            .map(|hit| Ranked { row: hit.row, score: hit.score, blocked: self.blocked[hit.row] })
            .collect())
    }

    /// Images searched.
    pub(crate) fn len(&self) -> usize {
        self.index.keys.len()
    }

    /// The file of index row `row`, whatever the policy says of it.
    pub(crate) fn path(&self, row: usize) -> Option<PathBuf> {
        self.index.keys.get(row).map(|key| self.index.summary.images_dir.join(key))
    }

    /// The image policy blocks index row `row` (`None`: no such row).
    pub(crate) fn is_blocked(&self, row: usize) -> Option<bool> {
        self.blocked.get(row).copied()
    }

    pub(crate) fn summary(&self) -> &IndexSummary {
        &self.index.summary
    }
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let query = args.query.trim();
    if query.is_empty() {
        bail!("the query is empty: pass the text to look for, e.g. `cargo xtask search \"two dogs play in the snow\"`");
    }
    if let Decision::Block(reason) = TextPolicy::default().decide(query) {
        let out = Output {
            query: query.to_owned(),
            blocked: true,
            reason: Some(reason.to_string()),
            message: Some(DISCLAIMER),
            index: None,
            image_policy: None,
            results: Vec::new(),
        };
        if args.json {
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("query: {query:?}\nblocked: {reason}; no results\n{DISCLAIMER}");
        }
        return Ok(());
    }

    let searcher = Searcher::open(&args.setup, !args.json)?;
    let summary = searcher.summary().clone();
    if !args.json {
        for s in &summary.skipped {
            println!("skipped {}: {}", s.file, s.reason);
        }
    }
    let start = Instant::now();
    let ranked = searcher.rank(query, args.k as usize)?;
    let elapsed = start.elapsed();
    let results: Vec<Hit> = ranked
        .iter()
        .enumerate()
        .map(|(i, r)| Hit {
            rank: i + 1,
            score: r.score,
            path: if r.blocked { None } else { searcher.path(r.row) },
            blocked: r.blocked,
            disclaimer: r.blocked.then_some(DISCLAIMER),
        })
        .collect();

    if args.json {
        let out = Output {
            query: query.to_owned(),
            blocked: false,
            reason: None,
            message: None,
            index: Some(summary),
            image_policy: Some(searcher.policy_path.clone()),
            results,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("index: {summary}");
    println!("query: {query:?}, ranked by the fusion score in {:.0} ms\n", elapsed.as_secs_f64() * 1e3);
    println!("{:>4}  {:>6}  image", "rank", "score");
    for hit in &results {
        let shown = match &hit.path {
            Some(p) => p.display().to_string(),
            None => DISCLAIMER.to_owned(),
        };
        println!("{:>4}  {:>6.3}  {shown}", hit.rank, hit.score);
    }
    Ok(())
}

/// The image policy checkpoint for these options, read from where `cargo xtask compliance`
/// saves it when it reads this feature layout; otherwise fitted (with `may_train`).
fn image_policy(
    setup: &Setup,
    may_train: bool,
    layout: &str,
    dim: usize,
    data: &mut Option<(Dataset, embed::Embeddings)>,
    load_data: &dyn Fn() -> Result<(Dataset, embed::Embeddings)>,
) -> Result<(PolicyCheckpoint, PathBuf)> {
    let path = compliance::policy_path(&setup.pipeline.embed, setup.pipeline.train.seed);
    let saved = if setup.policy.retrain_policy { Ok(None) } else { read_policy(&path, layout, dim) };
    match saved {
        Ok(Some(ckpt)) => return Ok((ckpt, path)),
        Ok(None) if !may_train => bail!("no image policy at {}; run `cargo xtask compliance` once", path.display()),
        Err(e) if !may_train => return Err(e),
        Ok(None) => eprintln!("no image policy at {}; fitting it", path.display()),
        Err(e) => eprintln!("{e:#}; fitting the image policy again"),
    }
    let (ds, emb) = match data {
        Some(d) => d,
        None => data.insert(load_data()?),
    };
    let emb = setup.policy.restrict(emb, &setup.pipeline.embed)?;
    let (ckpt, path, _) = compliance::load_or_train_image_policy(
        ds,
        &emb,
        &setup.pipeline.embed,
        setup.pipeline.train.seed,
        setup.pipeline.train.train_fraction,
        &setup.policy,
    )?;
    if ckpt.image_encoder != layout || ckpt.policy.dim != dim {
        bail!(
            "the image policy in {} reads {} ({}-d), not {layout} ({dim}-d)",
            path.display(),
            ckpt.image_encoder,
            ckpt.policy.dim
        );
    }
    Ok((ckpt, path))
}

/// The policy checkpoint at `path`: `None` when there is none; an error when it is unreadable
/// or made for another feature layout.
fn read_policy(path: &Path, layout: &str, dim: usize) -> Result<Option<PolicyCheckpoint>> {
    let Some(ckpt) = compliance::read_checkpoint(path)? else { return Ok(None) };
    if ckpt.image_encoder != layout || ckpt.policy.dim != dim {
        bail!(
            "the image policy in {} reads {} ({}-d), not {layout} ({dim}-d)",
            path.display(),
            ckpt.image_encoder,
            ckpt.policy.dim
        );
    }
    Ok(Some(ckpt))
}

/// A folder's images with the features of every encoder side by side.
struct FolderIndex {
    /// Relative paths of the images with every encoder's features, sorted.
    keys: Vec<String>,
    /// Row-major `(keys.len(), dim)`.
    features: Vec<f32>,
    dim: usize,
    /// Each encoder's part of a row: (model id, offset, width), in order.
    parts: Vec<(String, usize, usize)>,
    summary: IndexSummary,
}

impl FolderIndex {
    /// Row `i`'s features of the encoders `ids` side by side, in the index's order.
    fn slices(&self, i: usize, ids: &[String]) -> Vec<f32> {
        let row = &self.features[i * self.dim..(i + 1) * self.dim];
        self.parts
            .iter()
            .filter(|p| ids.contains(&p.0))
            .flat_map(|&(_, at, width)| &row[at..at + width])
            .copied()
            .collect()
    }
}

/// Brings the folder's caches in line with its files and gathers the rows.
fn index_folder(folder: &Path, opts: &EmbedOpts, kinds: &[EncoderKind], store: &ModelStore) -> Result<FolderIndex> {
    if !folder.is_dir() {
        bail!("{} is not a folder", folder.display());
    }
    let root = folder.canonicalize().with_context(|| format!("failed to resolve {}", folder.display()))?;
    let (files, ignored) = list_images(&root)?;
    let items: Vec<Item> = files.iter().map(|(key, path)| Item::file(key.clone(), path.clone())).collect();
    let digest = root
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let cache_dir = paths::resolve(&opts.workdir).join("index").join(format!("{digest:016x}"));
    let views = opts.views()?;

    let mut caches = Vec::new();
    let mut skipped: BTreeMap<String, String> = BTreeMap::new();
    let (mut encoded, mut reused, mut removed) = (0, usize::MAX, 0);
    for &kind in kinds {
        let id = opts.image_model_id(kind);
        let path = cache_dir.join(format!("{id}.safetensors"));
        let load_encoder = || -> Result<Box<dyn ImageEncoder>> {
            let files = crate::models::ensure(store, kind.id())?;
            imsearch_vision::load(kind, &files.weights, &Device::Cpu).with_context(|| format!("failed to load {kind}"))
        };
        let mut encoder: Option<Box<dyn ImageEncoder>> = None;
        let mut cache = match EmbeddingCache::load(&path) {
            Ok(Some(cache)) if cache.model() == id => cache,
            other => {
                if let Err(e) = other {
                    eprintln!("note: rebuilding the index cache: {e}");
                }
                let enc = encoder.insert(load_encoder()?);
                EmbeddingCache::new(id.clone(), enc.dim())
            }
        };
        let bar = crate::progress::bar(items.len() as u64, &format!("indexing ({})", kind.id()), "images");
        let mut fatal = None;
        let stats = cache.refresh(
            &items,
            opts.batch,
            |batch| {
                let enc = match &encoder {
                    Some(e) => e,
                    None => match load_encoder() {
                        Ok(e) => encoder.insert(e),
                        Err(e) => {
                            let why = format!("{e:#}");
                            fatal.get_or_insert(e);
                            return batch.iter().map(|_| Err(why.clone())).collect();
                        }
                    },
                };
                embed::encode_images(enc.as_ref(), &views, batch)
            },
            |done| bar.set_position(done as u64),
        )?;
        bar.finish_and_clear();
        if let Some(e) = fatal {
            return Err(e);
        }
        if stats.encoded > 0 || stats.removed > 0 {
            cache.save(&path)?;
        }
        // Per image, not per encoder run: every encoder sees the same files.
        encoded = encoded.max(stats.encoded);
        reused = reused.min(stats.reused);
        removed = removed.max(stats.removed);
        for (key, why) in stats.failed {
            skipped.entry(key).or_insert(why);
        }
        caches.push(cache);
    }

    let rows: Vec<HashMap<&str, usize>> =
        caches.iter().map(|c| c.keys().iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect()).collect();
    let dim: usize = caches.iter().map(EmbeddingCache::dim).sum();
    let mut parts = Vec::new();
    let mut offset = 0;
    for cache in &caches {
        parts.push((cache.model().to_owned(), offset, cache.dim()));
        offset += cache.dim();
    }
    let mut keys = Vec::new();
    let mut features = Vec::new();
    for (key, _) in &files {
        let Some(found) = rows.iter().map(|r| r.get(key.as_str()).copied()).collect::<Option<Vec<usize>>>() else {
            continue;
        };
        for (cache, row) in caches.iter().zip(found) {
            features.extend_from_slice(cache.row(row));
        }
        keys.push(key.clone());
    }
    let summary = IndexSummary {
        images_dir: root,
        cache_dir,
        indexed: keys.len(),
        encoded,
        reused: if kinds.is_empty() { 0 } else { reused },
        removed,
        skipped: skipped.into_iter().map(|(file, reason)| Skipped { file, reason }).collect(),
        ignored_files: ignored,
    };
    Ok(FolderIndex { keys, features, dim, parts, summary })
}

/// The image files under `root` as (path relative to `root` with `/` separators, path), sorted,
/// and the number of other files. Hidden entries are skipped; symbolic links to folders are not
/// followed.
fn list_images(root: &Path) -> Result<(Vec<(String, PathBuf)>, usize)> {
    let mut images = Vec::new();
    let mut ignored = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let entries = fs::read_dir(&dir).with_context(|| format!("failed to list {}", dir.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("failed to list {}", dir.display()))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let kind = entry.file_type().with_context(|| format!("failed to inspect {}", path.display()))?;
            if kind.is_dir() {
                stack.push(path);
                continue;
            }
            if !(kind.is_file() || (kind.is_symlink() && path.is_file())) {
                continue;
            }
            let is_image = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
            if !is_image {
                ignored += 1;
                continue;
            }
            let relative = path.strip_prefix(root).unwrap_or(&path);
            let key = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
            images.push((key, path));
        }
    }
    images.sort();
    Ok((images, ignored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_images_recursively_and_counts_the_rest() {
        let dir = std::env::temp_dir().join(format!("imsearch-search-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::create_dir_all(dir.join(".hidden")).unwrap();
        for f in ["b.JPG", "a.png", "notes.txt", "sub/c.jpeg", ".hidden/d.jpg", ".e.jpg"] {
            fs::write(dir.join(f), b"x").unwrap();
        }
        let (images, ignored) = list_images(&dir).unwrap();
        let keys: Vec<&str> = images.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a.png", "b.JPG", "sub/c.jpeg"]);
        assert_eq!(ignored, 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
