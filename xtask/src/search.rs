//! `cargo xtask search "two dogs play in the snow"`: ranks the photos of a folder by the
//! engine's score for a text query, with the compliance policies applied. The index and the
//! searcher are imsearch-engine's; this job opens them with the options and prints.
//!
//! - **Index**: the folder's image files (`.jpg`, `.jpeg`, `.png`, recursively, hidden entries
//!   skipped) are encoded by every image encoder into one embedding cache per encoder under
//!   `<workdir>/index/<hash of the folder's canonical path>/<model id>.safetensors`. A rerun
//!   re-encodes only new and changed files and drops deleted ones; a file that cannot be read
//!   or decoded is a counted, reported skip.
//! - **Engine**: the saved engine of `cargo xtask eval` for these options (the ensemble of fusion
//!   models, caption neighbours and class bridge), built from the default recipe when absent (not
//!   with `--json`, whose stdout carries nothing but the JSON object).
//! - **Compliance**: a query the text policy blocks gets the disclaimer and no results. A result
//!   the image policy blocks keeps its rank and score, and the disclaimer replaces its path. The
//!   image policy is the checkpoint `cargo xtask compliance` (or the demo) saves; search checks
//!   that it reads this feature layout. Without a usable policy every result is blocked (fail
//!   closed).

use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use candle::Device;
use imsearch_compliance::{BlockReason, Decision, TextPolicy, DISCLAIMER};
use imsearch_data::Dataset;
use imsearch_engine::{FolderIndex, ImagePolicySource, IndexOptions, IndexSummary, Ranked, Searcher, IMAGE_EXTENSIONS};
use imsearch_store::StoreUrl;
use imsearch_text::MiniLm;
use serde::Serialize;

use crate::{
    compliance::{self, PolicyCheckpoint, PolicyOpts},
    embed, engine, paths,
    train::Pipeline,
};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// What to look for, e.g. "two dogs play in the snow".
    #[arg(required_unless_present = "like")]
    query: Option<String>,
    /// More like this photo: rank the folder by likeness to PATH (a photo in the folder or
    /// anywhere else) instead of a text query. A photo the image policy blocks gets the
    /// disclaimer and no results; the photo itself is left out of its results.
    #[arg(long, value_name = "PATH", conflicts_with = "query")]
    like: Option<PathBuf>,
    /// How many results to show.
    #[arg(short = 'k', long = "top", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    k: u32,
    /// Show only photos whose probability of matching the query is at least P (0 to 1): the
    /// score is calibrated on graded pairs, so 0.5 means "as likely a match as not" in the
    /// experts' and the crowd's judgement. Possibly none: "no photo matches well enough". The
    /// best 4k photos by rank are considered. Not with `--like`.
    #[arg(long, value_name = "P", value_parser = min_score, conflicts_with = "like")]
    min_score: Option<f32>,
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
    /// Search the collection in Milvus at milvus://HOST:PORT/COLLECTION (filled by `cargo
    /// xtask index --store`) instead of indexing --images here; --images is then the library's
    /// root, where the photos are shown from.
    #[arg(long, value_name = "URL", env = crate::milvus::STORE_ENV)]
    pub(crate) store: Option<StoreUrl>,
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
    /// The text query, or the example photo's path with `--like`.
    query: String,
    /// `--like`: the results are photos like this one; `blocked` says the policy hides it.
    #[serde(skip_serializing_if = "Option::is_none")]
    like: Option<PathBuf>,
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

/// Indexes the folder (incrementally), loads the engine, the text encoder and the image policy.
/// With `may_train`, a missing engine or image policy is built from the dataset; without, it is
/// an error.
pub(crate) fn open(setup: &Setup, may_train: bool) -> Result<Searcher> {
    if let Some(url) = &setup.store {
        return open_store(setup, may_train, url);
    }
    let index = open_index(setup, None)?;
    if index.is_empty() {
        let summary = &index.summary;
        bail!(
            "no image in {} could be indexed ({} image files skipped, {} other files ignored; looked for {})",
            summary.images_dir.display(),
            summary.skipped.len(),
            summary.ignored_files,
            IMAGE_EXTENSIONS.map(|e| format!(".{e}")).join(", ")
        );
    }
    let (engine, dir, _) = engine::ensure(&setup.pipeline, may_train, None)?;
    let (policy, text_model) = policy_and_text(setup, may_train, &index.parts)?;
    Searcher::new(index, engine, text_model, policy)
        .with_context(|| format!("failed to open the engine in {}", dir.display()))
}

/// The folder's index (`--images`, default the test images), refreshed incrementally with a
/// progress bar per encoder; with `shard`, only that worker's share of the files.
pub(crate) fn open_index(setup: &Setup, shard: Option<imsearch_engine::Shard>) -> Result<FolderIndex> {
    let store = setup.pipeline.models.store()?;
    let folder = match &setup.images {
        Some(dir) => dir.clone(),
        None => paths::data_dir(setup.pipeline.data.as_deref())?.join("test_images"),
    };
    let mut options = index_options(setup)?;
    options.shard = shard;
    let load_encoder = |kind| load_encoder(&store, kind);
    let bar = RefCell::new(None::<(String, indicatif::ProgressBar)>);
    let progress = |encoder: &str, done: usize, total: usize| {
        let mut bar = bar.borrow_mut();
        if bar.as_ref().is_none_or(|(e, _)| e != encoder) {
            if let Some((_, old)) = bar.take() {
                old.finish_and_clear();
            }
            let label = match shard {
                Some(shard) => format!("shard {shard}: indexing ({encoder})"),
                None => format!("indexing ({encoder})"),
            };
            *bar = Some((encoder.to_owned(), crate::progress::bar(total as u64, &label, "images")));
        }
        if let Some((_, b)) = bar.as_ref() {
            b.set_position(done as u64);
        }
    };
    let index = FolderIndex::open(&folder, &options, &load_encoder, &progress);
    if let Some((_, b)) = bar.take() {
        b.finish_and_clear();
    }
    index.with_context(|| format!("failed to index {}", folder.display()))
}

/// The image policy for the feature `parts` (`None`, with a warning, when none is usable: every
/// result is blocked) and the text encoder.
pub(crate) fn policy_and_text(
    setup: &Setup,
    may_train: bool,
    parts: &[imsearch_engine::ImagePart],
) -> Result<(Option<ImagePolicySource>, MiniLm)> {
    let embed = &setup.pipeline.embed;
    let store = setup.pipeline.models.store()?;
    // The image policy reads its own encoders' slices of each row.
    let policy_ids = setup.policy.model_ids(embed)?;
    let policy_dim: usize = parts.iter().filter(|p| policy_ids.contains(&p.id)).map(|p| p.dim).sum();
    let policy = match image_policy(setup, may_train, &policy_ids.join("+"), policy_dim) {
        Ok((ckpt, path)) => Some(ImagePolicySource { policy: ckpt.policy, parts: policy_ids, path }),
        Err(e) => {
            eprintln!("warning: no usable image policy ({e:#}); every result is blocked (fail closed)");
            None
        }
    };
    let minilm = crate::models::ensure(&store, embed::TEXT_MODEL)?;
    let text_model = MiniLm::load(&minilm.dir, &Device::Cpu).context("failed to load MiniLM")?;
    Ok((policy, text_model))
}

/// `--store`: a searcher over every row of the collection, ranked by the same engine and policy
/// the workers indexed with; the photos are shown from `--images` (default: the dataset's
/// test_images/), the library's root as this machine sees it.
fn open_store(setup: &Setup, may_train: bool, url: &StoreUrl) -> Result<Searcher> {
    let root = match &setup.images {
        Some(dir) => dir.clone(),
        None => paths::data_dir(setup.pipeline.data.as_deref())?.join("test_images"),
    };
    let root = root.canonicalize().with_context(|| format!("failed to open the library root {}", root.display()))?;
    let (engine, dir, _) = engine::ensure(&setup.pipeline, may_train, None)?;
    let (policy, text_model) = policy_and_text(setup, may_train, engine.image_layout())?;
    let store = crate::milvus::connect(url)?;
    let cache_dir =
        setup.pipeline.embed.workdir().join("store").join(format!("{}-{}-{}", url.host, url.port, url.collection));
    Searcher::from_store(&store, &root, cache_dir, engine, text_model, policy)
        .with_context(|| format!("failed to open {url} with the engine in {}", dir.display()))
}

/// `--min-score`: a probability.
fn min_score(s: &str) -> Result<f32, String> {
    match s.trim().parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a probability from 0 to 1")),
    }
}

/// How [`open`] indexes a folder with these options.
pub(crate) fn index_options(setup: &Setup) -> Result<IndexOptions> {
    let embed = &setup.pipeline.embed;
    Ok(IndexOptions {
        encoders: embed.kinds()?.into_iter().map(|k| (k, embed.image_model_id(k))).collect(),
        views: embed.views()?,
        batch: embed.batch,
        cache_root: embed.workdir().join("index"),
        shard: None,
    })
}

/// The image encoder `kind`, its weights fetched if absent.
pub(crate) fn load_encoder(
    store: &imsearch_models::ModelStore,
    kind: imsearch_vision::EncoderKind,
) -> Result<Box<dyn imsearch_vision::ImageEncoder>, String> {
    let files = crate::models::ensure(store, kind.id()).map_err(|e| format!("{e:#}"))?;
    imsearch_vision::load(kind, &files.weights, &Device::Cpu).map_err(|e| format!("failed to load {kind}: {e}"))
}

/// `--like PATH`: the folder's photos most like PATH (its row when PATH is in the folder,
/// otherwise its features encoded now).
fn like(args: &Args, searcher: &Searcher, path: &Path) -> Result<std::result::Result<Vec<Ranked>, BlockReason>> {
    let wanted = path.canonicalize().with_context(|| format!("failed to open the example photo {}", path.display()))?;
    if let Some(row) = (0..searcher.len())
        .find(|&row| searcher.path(row).and_then(|p| p.canonicalize().ok()).as_ref() == Some(&wanted))
    {
        return Ok(searcher.similar(row, args.k as usize)?);
    }
    let store = args.setup.pipeline.models.store()?;
    let features =
        imsearch_engine::encode_file(&wanted, &index_options(&args.setup)?, &|kind| load_encoder(&store, kind))
            .with_context(|| format!("failed to encode the example photo {}", path.display()))?;
    Ok(searcher.similar_to(&features, args.k as usize)?)
}

pub(crate) fn run(args: &Args) -> Result<()> {
    if let Some(path) = &args.like {
        return run_like(args, path);
    }
    let query = args.query.as_deref().unwrap_or_default().trim();
    if query.is_empty() {
        bail!("the query is empty: pass the text to look for, e.g. `cargo xtask search \"two dogs play in the snow\"`");
    }
    if let Decision::Block(reason) = TextPolicy::default().decide(query) {
        let out = Output {
            query: query.to_owned(),
            like: None,
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

    let searcher = open(&args.setup, !args.json)?;
    let start = Instant::now();
    let ranked = match args.min_score {
        Some(p) => searcher.rank_matching(query, args.k as usize, p)?,
        None => searcher.rank(query, args.k as usize)?,
    };
    print_results(args, &searcher, query, None, Ok(ranked), start.elapsed())
}

/// `--like PATH`: the folder ranked by likeness to the photo at PATH.
fn run_like(args: &Args, path: &Path) -> Result<()> {
    let searcher = open(&args.setup, !args.json)?;
    let start = Instant::now();
    let answer = like(args, &searcher, path)?;
    print_results(args, &searcher, &path.display().to_string(), Some(path), answer, start.elapsed())
}

/// Prints what a search found: a table, or with `--json` one object.
fn print_results(
    args: &Args,
    searcher: &Searcher,
    query: &str,
    like: Option<&Path>,
    answer: std::result::Result<Vec<Ranked>, BlockReason>,
    elapsed: std::time::Duration,
) -> Result<()> {
    let summary = searcher.summary().clone();
    if !args.json {
        for s in &summary.skipped {
            println!("skipped {}: {}", s.file, s.reason);
        }
    }
    let (ranked, reason) = match answer {
        Ok(ranked) => (ranked, None),
        Err(reason) => (Vec::new(), Some(reason)),
    };
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
            like: like.map(Path::to_owned),
            blocked: reason.is_some(),
            message: reason.is_some().then_some(DISCLAIMER),
            reason: reason.map(|r| r.to_string()),
            index: Some(summary),
            image_policy: Some(searcher.policy_path().cloned()),
            results,
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("index: {summary}");
    println!(
        "prepared for the engine: {} of {} images read back from the folder's saved preparation",
        searcher.reused_preparations(),
        searcher.len()
    );
    if let Some(reason) = reason {
        println!("example photo: {query}\nblocked: {reason}; no results\n{DISCLAIMER}");
        return Ok(());
    }
    match like {
        Some(_) => println!(
            "photos like {query}, by likeness in the engine's spaces (1: the same picture), in {:.0} ms\n",
            elapsed.as_secs_f64() * 1e3
        ),
        None => println!(
            "query: {query:?}, ranked by the engine ({}) in {:.0} ms; match: the probability that the photo \
             matches, calibrated on graded pairs (estimated for each photo on its own, apart from the ranking: \
             it mostly falls with the rank, not strictly)\n",
            searcher.engine().name(),
            elapsed.as_secs_f64() * 1e3
        ),
    }
    if results.is_empty() {
        if let Some(p) = args.min_score {
            println!("no photo matches well enough: none of the best has a probability of a match of at least {p}");
            return Ok(());
        }
    }
    let column = if like.is_some() { "like" } else { "match" };
    println!("{:>4}  {column:>6}  image", "rank");
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
fn image_policy(setup: &Setup, may_train: bool, layout: &str, dim: usize) -> Result<(PolicyCheckpoint, PathBuf)> {
    let path = compliance::policy_path(&setup.pipeline.embed, setup.pipeline.train.seed);
    let saved = if setup.policy.retrain_policy { Ok(None) } else { read_policy(&path, layout, dim) };
    match saved {
        Ok(Some(ckpt)) => return Ok((ckpt, path)),
        Ok(None) if !may_train => bail!("no image policy at {}; run `cargo xtask compliance` once", path.display()),
        Err(e) if !may_train => return Err(e),
        Ok(None) => eprintln!("no image policy at {}; fitting it", path.display()),
        Err(e) => eprintln!("{e:#}; fitting the image policy again"),
    }
    let data = paths::data_dir(setup.pipeline.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &setup.pipeline.models.store()?, &setup.pipeline.embed)?;
    let emb = setup.policy.restrict(&emb, &setup.pipeline.embed)?;
    let (ckpt, path, _) = compliance::load_or_train_image_policy(
        &ds,
        &emb,
        &setup.pipeline.embed,
        setup.pipeline.train.seed,
        setup.pipeline.train.train_fraction,
        &setup.policy,
    )?;
    ckpt.check_layout(layout, dim).with_context(|| format!("the image policy in {}", path.display()))?;
    Ok((ckpt, path))
}

/// The policy checkpoint at `path`: `None` when there is none; an error when it is unreadable
/// or made for another feature layout.
fn read_policy(path: &Path, layout: &str, dim: usize) -> Result<Option<PolicyCheckpoint>> {
    let Some(ckpt) = compliance::read_checkpoint(path)? else { return Ok(None) };
    ckpt.check_layout(layout, dim).with_context(|| format!("the image policy in {}", path.display()))?;
    Ok(Some(ckpt))
}
