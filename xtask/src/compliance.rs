//! `cargo xtask compliance`: the compliance policies measured on the dataset, and the image
//! policy's checkpoint that the search commands load.
//!
//! What it measures:
//! - the text policy on training: the labelled pairs and captions the fusion model never sees
//!   (the same filter as `cargo xtask train`, cross-checked against it), and the images that
//!   leave training entirely;
//! - the text policy on the 500 test queries: how many are blocked, by which word, and a check
//!   for queries that may name a child in words the lexicon leaves out (see [`review_test_queries`]);
//! - the image policy on the 100 test images, scored once: ROC-AUC, recall and precision at the
//!   threshold chosen on validation.
//!
//! How the image policy is made ([`load_or_train_image_policy`]):
//! - **Features**: every image encoder's features side by side, as the fusion model reads them.
//! - **Labels**: a train image shows a child when a caption names one (the text policy) and that
//!   caption is either its own (`<image>#n` in `train_dataset.csv`) or is paired with it with an
//!   aggregated label of at least 0.5 (the caption describes the picture). Most train images have
//!   a single caption of their own, while a test image's ground truth reads five, so captions
//!   alone miss children; the graded pairs add that evidence. Whether training on the richer
//!   labels helps is decided on validation ([`LabelRule`]).
//! - **Validation**: the train images are split by image with the same seed and fraction as the
//!   fusion model. Every candidate (label rule x learning rate x L2 penalty) is fitted on the
//!   train side and scored on the validation side against the richer labels (the closest to
//!   the test ground truth we can build without test data). The library's default learning
//!   rate of 0.5 diverges over 2560 correlated features, and 700 images for 2560 features call
//!   for a strong penalty, hence the grids. The candidate with the best ROC-AUC wins (ties: the
//!   earlier one; AUC is steadier than precision at a single threshold); the threshold is the
//!   highest score that keeps `--recall-target` of the validation positives blocked.
//! - **Final fit**: the winning options are refitted on every train image and the validation
//!   threshold is kept. The features are standardised and the penalty is per example, so the
//!   score scale of a fit on 1000 images matches that of a fit on 700; the 0.97 target leaves a
//!   margin over the 0.95 the test figures must reach.
//!
//! The checkpoint `<workdir>/checkpoints/compliance-seed<seed>.json` carries a fingerprint of
//! everything it was made from (features, labels, settings); a checkpoint whose fingerprint
//! differs is refitted, never used.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use imsearch_compliance::{
    threshold_for_recall, BlockReason, Decision, ImagePolicy, TextPolicy, TrainOptions, LEXICON,
};
use imsearch_data::{aggregate, Aggregation, Dataset, ImageSplit};
use imsearch_types::{GradedPair, ImageId, QueryId, Split};
use imsearch_vision::EncoderKind;
use serde::{Deserialize, Serialize};

use crate::{
    embed::{self, EmbedOpts, Embeddings},
    models::ModelsArg,
    paths,
    train::{self, Prepared, TrainOpts},
};

/// The recall and precision the image policy must reach on the test images.
const TARGET_RECALL: f64 = 0.95;
const TARGET_PRECISION: f64 = 0.60;

/// L2 penalties tried on validation.
const L2_GRID: [f32; 7] = [1e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0, 30.0];

/// Learning rates tried on validation. Over 2560 standardised, correlated features full-batch
/// gradient descent diverges at the library's default of 0.5.
const LR_GRID: [f32; 3] = [0.1, 0.03, 0.01];

/// Pairs whose weight decay per step (`learning_rate * l2`) exceeds this are not tried: on top of
/// the loss's own curvature the steps overshoot (validation AUC fell at 0.1 x 3; 0.1 x 10 and
/// 0.1 x 30 diverged).
const MAX_DECAY_PER_STEP: f32 = 0.1;

/// Bumped whenever the checkpoint layout or the way candidates are chosen changes.
const CHECKPOINT_FORMAT: u32 = 1;

/// A pair whose aggregated label reaches this says its caption describes its image.
const PAIR_MATCH: f32 = 0.5;

/// Words the lexicon deliberately leaves out (ambiguous or adult) but that may name a child in a
/// given caption; an allowed test query of a child's image that uses one is listed for review.
const REVIEW_WORDS: &[&str] = &[
    "young",
    "younger",
    "little",
    "small",
    "tiny",
    "student",
    "students",
    "pupil",
    "pupils",
    "lad",
    "lads",
    "junior",
    "juniors",
    "juvenile",
    "juveniles",
    "minor",
    "minors",
    "tyke",
    "tykes",
    "school",
    "scout",
    "scouts",
];

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The dataset directory (default: $IMSEARCH_DATA, else ../shared/data/dsplus_integrated_project_4).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    #[command(flatten)]
    models: ModelsArg,
    #[command(flatten)]
    embed: EmbedOpts,
    /// Seed of the split of the train images into train and validation (the split `cargo xtask
    /// train` uses with the same seed); also names the checkpoint.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Share of the train images the image policy is fitted on while its options and threshold
    /// are chosen; the rest validate. The final policy is refitted on all of them.
    #[arg(long, default_value_t = 0.7)]
    train_fraction: f64,
    #[command(flatten)]
    policy: PolicyOpts,
}

/// How the image policy is chosen; flatten into any command that loads it.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct PolicyOpts {
    /// Share of the validation images showing a child that the image policy must block; its
    /// threshold is the highest score that reaches this share.
    #[arg(long, default_value_t = 0.97, value_name = "SHARE")]
    pub(crate) recall_target: f32,
    /// Fit the image policy again even when its checkpoint matches the data and settings.
    #[arg(long)]
    pub(crate) retrain_policy: bool,
    /// Image encoders whose features the image policy reads (a subset of --image-encoders).
    /// The default was chosen on the validation split: at recall 0.973 it blocks with precision
    /// 0.538, against 0.512 with EfficientNet-Lite2's features added.
    #[arg(long, value_delimiter = ',', default_value = "mobilenet-v2,efficientnet-lite0")]
    pub(crate) policy_encoders: Vec<String>,
}

impl PolicyOpts {
    /// The model ids (as in [`Embeddings::images`]) of the policy's encoders, in `embed`'s
    /// order; an error when one of them is not among `embed`'s encoders.
    pub(crate) fn model_ids(&self, embed: &EmbedOpts) -> Result<Vec<String>> {
        let kinds = embed.kinds()?;
        for id in &self.policy_encoders {
            let kind = EncoderKind::from_id(id).with_context(|| {
                format!("unknown policy encoder {id:?} (known: mobilenet-v2, efficientnet-lite0, efficientnet-lite2)")
            })?;
            if !kinds.contains(&kind) {
                bail!(
                    "the image policy reads {id}, which is not among the image encoders ({}); add it to --image-encoders or change --policy-encoders",
                    embed.image_encoders.join(",")
                );
            }
        }
        Ok(kinds
            .into_iter()
            .filter(|k| self.policy_encoders.iter().any(|id| id == k.id()))
            .map(|k| embed.image_model_id(k))
            .collect())
    }

    /// The embeddings with only the policy's image encoders (the texts kept).
    pub(crate) fn restrict(&self, emb: &Embeddings, embed: &EmbedOpts) -> Result<Embeddings> {
        let ids = self.model_ids(embed)?;
        let images = emb.images.iter().filter(|(id, _, _)| ids.contains(id)).cloned().collect::<Vec<_>>();
        if images.len() != ids.len() {
            bail!("the embeddings lack some of the image policy's encoders ({})", ids.join(", "));
        }
        Ok(Embeddings { dir: emb.dir.clone(), images, texts: emb.texts.clone() })
    }
}

/// Which train images count as showing a child when the image policy is fitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum LabelRule {
    /// One of the image's own captions names a child.
    Captions,
    /// As `Captions`, or a caption naming a child is paired with the image with label >= 0.5.
    CaptionsAndPairs,
}

impl LabelRule {
    const ALL: [LabelRule; 2] = [LabelRule::Captions, LabelRule::CaptionsAndPairs];

    fn name(self) -> &'static str {
        match self {
            LabelRule::Captions => "captions",
            LabelRule::CaptionsAndPairs => "captions-and-pairs",
        }
    }
}

/// Images the text evidence says show a child.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ChildEvidence {
    /// One of the image's own captions names a child.
    pub(crate) by_caption: BTreeSet<ImageId>,
    /// A caption naming a child is paired with the image with label >= [`PAIR_MATCH`].
    pub(crate) by_pair: BTreeSet<ImageId>,
}

impl ChildEvidence {
    pub(crate) fn new(captions: &BTreeMap<QueryId, &str>, pairs: &[GradedPair], policy: &TextPolicy) -> Self {
        let names_child = |q: &QueryId| captions.get(q).is_some_and(|t| policy.matched(t).is_some());
        ChildEvidence {
            by_caption: captions.keys().filter(|q| names_child(q)).map(|q| q.source_image().clone()).collect(),
            by_pair: pairs
                .iter()
                .filter(|p| p.label.get() >= PAIR_MATCH && names_child(&p.query))
                .map(|p| p.image.clone())
                .collect(),
        }
    }

    fn from_dataset(ds: &Dataset, policy: &TextPolicy) -> Result<Self> {
        let captions = ds.train_captions();
        let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q))
            .context("failed to aggregate the labels")?;
        Ok(ChildEvidence::new(&captions, &labels.pairs, policy))
    }

    pub(crate) fn label(&self, image: &ImageId, rule: LabelRule) -> bool {
        self.by_caption.contains(image) || (rule == LabelRule::CaptionsAndPairs && self.by_pair.contains(image))
    }

    fn labels(&self, ids: &[ImageId], rule: LabelRule) -> Vec<bool> {
        ids.iter().map(|i| self.label(i, rule)).collect()
    }
}

/// One candidate's figures on the validation images.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Candidate {
    pub(crate) labels: LabelRule,
    pub(crate) l2: f32,
    pub(crate) learning_rate: f32,
    /// Train-side images labelled positive under `labels`.
    pub(crate) train_positives: usize,
    pub(crate) roc_auc: Option<f64>,
    /// The highest score that blocks the recall target of the validation positives.
    pub(crate) threshold: f32,
    pub(crate) recall: Option<f64>,
    pub(crate) precision: Option<f64>,
}

impl Candidate {
    fn same_options(&self, other: &Candidate) -> bool {
        self.labels == other.labels
            && self.l2.to_bits() == other.l2.to_bits()
            && self.learning_rate.to_bits() == other.learning_rate.to_bits()
    }
}

/// How the image policy was chosen.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ValidationReport {
    pub(crate) train_images: usize,
    pub(crate) validation_images: usize,
    /// Validation images showing a child by captions and pairs: the validation ground truth.
    pub(crate) validation_positives: usize,
    pub(crate) ground_truth: LabelRule,
    pub(crate) chosen: Candidate,
    pub(crate) candidates: Vec<Candidate>,
}

/// The image policy as saved beside the fusion checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyCheckpoint {
    pub(crate) format: u32,
    /// The feature layout: image encoder ids (with views) joined by `+`, as `train_image_matrix`.
    pub(crate) image_encoder: String,
    pub(crate) seed: u64,
    pub(crate) train_fraction: f64,
    pub(crate) recall_target: f32,
    /// FNV-1a 64 of the features, labels and settings the policy was made from.
    pub(crate) fingerprint: String,
    /// Train images the final policy was fitted on, and those labelled positive.
    pub(crate) train_images: usize,
    pub(crate) train_positives: usize,
    pub(crate) labels: LabelRule,
    pub(crate) options: TrainOptions,
    pub(crate) validation: ValidationReport,
    pub(crate) policy: ImagePolicy,
}

/// Where the image policy of `seed` is kept.
pub(crate) fn policy_path(embed: &EmbedOpts, seed: u64) -> PathBuf {
    paths::resolve(&embed.workdir).join("checkpoints").join(format!("compliance-seed{seed}.json"))
}

/// The image policy for these embeddings (restricted to the policy's encoders with
/// [`PolicyOpts::restrict`]), split and recall target: loaded from
/// [`policy_path`] when its fingerprint matches (and `retrain_policy` is off), else chosen on
/// validation, refitted on every train image and saved there atomically. Returns the policy,
/// its path and whether it was fitted now.
pub(crate) fn load_or_train_image_policy(
    ds: &Dataset,
    emb: &Embeddings,
    embed: &EmbedOpts,
    seed: u64,
    train_fraction: f64,
    opts: &PolicyOpts,
) -> Result<(PolicyCheckpoint, PathBuf, bool)> {
    check_recall_target(opts.recall_target)?;
    let path = policy_path(embed, seed);
    let data = PolicyData::new(ds, emb)?;
    let fingerprint = data.fingerprint(seed, train_fraction, opts.recall_target);
    if !opts.retrain_policy {
        match read_checkpoint(&path) {
            Ok(Some(ckpt)) if ckpt.fingerprint == fingerprint && ckpt.policy.dim == data.dim => {
                println!("image policy: reusing {}", path.display());
                return Ok((ckpt, path, false));
            }
            Ok(Some(_)) => println!(
                "image policy: {} was made from other features, labels or settings; fitting again",
                path.display()
            ),
            Ok(None) => {}
            Err(e) => println!("image policy: ignoring {} ({e:#}); fitting again", path.display()),
        }
    }
    let ckpt = data.fit(seed, train_fraction, opts.recall_target, fingerprint)?;
    let json = serde_json::to_string_pretty(&ckpt)?;
    paths::write_atomic(&path, json.as_bytes())?;
    Ok((ckpt, path, true))
}

/// Which collection of an [`Embeddings`] an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Collection {
    Train,
    Test,
}

/// The image's features of every encoder side by side, in the layout the policy was fitted on;
/// `None` when an encoder has no embedding for it.
pub(crate) fn image_features(emb: &Embeddings, collection: Collection, key: &str) -> Option<Vec<f32>> {
    let mut out = Vec::new();
    for (_, train, test) in &emb.images {
        let cache = match collection {
            Collection::Train => train,
            Collection::Test => test,
        };
        out.extend_from_slice(cache.get(key)?);
    }
    Some(out)
}

/// The image policy's decision on one image; an image without features is blocked (fail
/// closed), and so is every image when the embeddings' layout differs from the policy's.
pub(crate) fn image_decision(ckpt: &PolicyCheckpoint, emb: &Embeddings, collection: Collection, key: &str) -> Decision {
    let layout = layout_name(emb);
    if layout != ckpt.image_encoder {
        return Decision::Block(BlockReason::Unscored {
            why: format!("features of {layout}, but the policy reads {}", ckpt.image_encoder),
        });
    }
    ckpt.policy.decide(image_features(emb, collection, key).as_deref())
}

#[derive(Debug, Serialize)]
struct TextFigures {
    lexicon_words: usize,
    train_captions: usize,
    train_captions_removed: usize,
    train_pairs_labelled: usize,
    train_pairs_removed: usize,
    /// Images with at least one removed pair (what `cargo xtask train` prints).
    train_images_affected: usize,
    /// Images with a pair or a caption of their own before the filter and none after it.
    train_images_removed: usize,
    test_queries: usize,
    test_queries_blocked: usize,
    test_queries_blocked_by_word: BTreeMap<String, usize>,
    /// Test images one of whose captions names a child.
    test_child_images: usize,
    /// Allowed test queries written for those images (most say "a person", "two people").
    test_child_image_queries_allowed: usize,
    /// Those that use a word the lexicon leaves out on purpose: to be read by a person.
    test_queries_to_review: Vec<ReviewQuery>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
struct ReviewQuery {
    query: String,
    text: String,
    word: String,
}

#[derive(Debug, Serialize)]
struct TestFigures {
    test_images: usize,
    positives: usize,
    /// Images without features (blocked: fail closed).
    unscored: usize,
    roc_auc: Option<f64>,
    recall: Option<f64>,
    precision: Option<f64>,
    threshold: f32,
    blocked: usize,
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
    targets_met: bool,
    /// Train images the final policy blocks (in-sample: it was fitted on them).
    train_images_blocked: usize,
    train_images: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    train_fraction: f64,
    recall_target: f32,
    train_pairs_removed: usize,
    train_images_removed: usize,
    test_queries_blocked: usize,
    text_policy: TextFigures,
    image_policy: TestFigures,
    image_policy_checkpoint: PathBuf,
    image_encoder: String,
    image_policy_labels: LabelRule,
    image_policy_options: TrainOptions,
    validation: ValidationReport,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    check_recall_target(args.policy.recall_target)?;
    if !(args.train_fraction > 0.0 && args.train_fraction < 1.0) {
        bail!(
            "--train-fraction must be in (0, 1): the image policy's threshold is chosen on the other side, got {}",
            args.train_fraction
        );
    }
    let data = paths::data_dir(args.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &args.models.store()?, &args.embed)?;
    let split = split_opts(args.seed, args.train_fraction)?;
    let prepared = Prepared::new(&ds, &emb, &split)?;
    let text = text_figures(&ds, &prepared)?;

    let emb = args.policy.restrict(&emb, &args.embed)?;
    let (ckpt, ckpt_path, _) =
        load_or_train_image_policy(&ds, &emb, &args.embed, args.seed, args.train_fraction, &args.policy)?;
    let test = test_figures(&ds, &emb, &ckpt)?;

    let report = Report {
        seed: args.seed,
        train_fraction: args.train_fraction,
        recall_target: args.policy.recall_target,
        train_pairs_removed: text.train_pairs_removed,
        train_images_removed: text.train_images_removed,
        test_queries_blocked: text.test_queries_blocked,
        image_policy_checkpoint: ckpt_path,
        image_encoder: ckpt.image_encoder.clone(),
        image_policy_labels: ckpt.labels,
        image_policy_options: ckpt.options,
        validation: ckpt.validation.clone(),
        text_policy: text,
        image_policy: test,
    };
    print_report(&report);
    let path = paths::resolve(&args.embed.workdir).join("compliance.json");
    paths::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("\nwrote {}", path.display());
    Ok(())
}

fn check_recall_target(target: f32) -> Result<()> {
    if !(target > 0.0 && target <= 1.0) {
        bail!("--recall-target must be in (0, 1], got {target}");
    }
    Ok(())
}

/// `TrainOpts` with its defaults, but this seed and fraction (the only fields the split reads).
fn split_opts(seed: u64, train_fraction: f64) -> Result<TrainOpts> {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        train: TrainOpts,
    }
    let mut opts = Defaults::try_parse_from(["compliance"]).context("failed to build the training defaults")?.train;
    opts.seed = seed;
    opts.train_fraction = train_fraction;
    Ok(opts)
}

/// The layout name of the image features, as `train::train_image_matrix` builds it.
fn layout_name(emb: &Embeddings) -> String {
    emb.images.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>().join("+")
}

/// What an image policy is fitted on: every train image's features and its child evidence.
struct PolicyData {
    /// The feature layout, as `train::train_image_matrix` names it.
    layout: String,
    ids: Vec<ImageId>,
    /// Row-major, `ids.len()` rows of `dim`.
    features: Vec<f32>,
    dim: usize,
    evidence: ChildEvidence,
}

impl PolicyData {
    fn new(ds: &Dataset, emb: &Embeddings) -> Result<Self> {
        let (layout, ids, matrix) = train::train_image_matrix(emb)?;
        let (n, dim) = matrix.dims2()?;
        if n == 0 || dim == 0 {
            bail!("no train image has an embedding; run `cargo xtask embed` and check its report");
        }
        let features = matrix.flatten_all()?.to_vec1::<f32>()?;
        let evidence = ChildEvidence::from_dataset(ds, &TextPolicy::default())?;
        Ok(PolicyData { layout, ids, features, dim, evidence })
    }

    fn rows(&self, rows: &[usize]) -> Vec<f32> {
        rows.iter().flat_map(|&r| &self.features[r * self.dim..(r + 1) * self.dim]).copied().collect()
    }

    /// FNV-1a 64 over everything a policy is made from, in hex.
    fn fingerprint(&self, seed: u64, train_fraction: f64, recall_target: f32) -> String {
        let mut h = Fnv::default();
        h.write(&CHECKPOINT_FORMAT.to_le_bytes());
        h.write(self.layout.as_bytes());
        h.write(&[0]);
        for id in &self.ids {
            h.write(id.as_str().as_bytes());
            let e = &self.evidence;
            h.write(&[0, u8::from(e.by_caption.contains(id)), u8::from(e.by_pair.contains(id))]);
        }
        h.write(&(self.dim as u64).to_le_bytes());
        for v in &self.features {
            h.write(&v.to_bits().to_le_bytes());
        }
        for v in L2_GRID.iter().chain(&LR_GRID).chain([&MAX_DECAY_PER_STEP]) {
            h.write(&v.to_bits().to_le_bytes());
        }
        h.write(&seed.to_le_bytes());
        h.write(&train_fraction.to_bits().to_le_bytes());
        h.write(&recall_target.to_bits().to_le_bytes());
        h.write(&PAIR_MATCH.to_bits().to_le_bytes());
        for word in LEXICON {
            h.write(word.as_bytes());
            h.write(&[0]);
        }
        format!("{:016x}", h.0)
    }

    /// Chooses the label rule and L2 penalty on validation, then refits on every train image
    /// and keeps the validation threshold.
    fn fit(&self, seed: u64, train_fraction: f64, recall_target: f32, fingerprint: String) -> Result<PolicyCheckpoint> {
        let split = ImageSplit::new(self.ids.iter().cloned(), train_fraction, seed)
            .context("failed to split the train images")?;
        let (mut train_rows, mut val_rows) = (Vec::new(), Vec::new());
        for (r, id) in self.ids.iter().enumerate() {
            match split.side(id) {
                Some(Split::Train) => train_rows.push(r),
                Some(Split::Validation) => val_rows.push(r),
                None => {}
            }
        }
        if val_rows.is_empty() {
            bail!("--train-fraction {train_fraction} leaves no validation images to choose the threshold on");
        }
        let train_ids: Vec<ImageId> = train_rows.iter().map(|&r| self.ids[r].clone()).collect();
        let val_ids: Vec<ImageId> = val_rows.iter().map(|&r| self.ids[r].clone()).collect();
        let (x_train, x_val) = (self.rows(&train_rows), self.rows(&val_rows));
        let truth = LabelRule::CaptionsAndPairs;
        let y_val = self.evidence.labels(&val_ids, truth);
        let val_positives = y_val.iter().filter(|&&y| y).count();
        if val_positives == 0 {
            bail!(
                "no validation image shows a child by its captions and pairs; try another --seed or --train-fraction"
            );
        }

        println!(
            "image policy: choosing on validation ({} images fit, {} validate, {val_positives} of them with a \
             child by captions and pairs), {} features",
            train_rows.len(),
            val_rows.len(),
            self.dim
        );
        let grid: Vec<(LabelRule, f32, f32)> = LabelRule::ALL
            .iter()
            .flat_map(|&rule| LR_GRID.iter().flat_map(move |&lr| L2_GRID.iter().map(move |&l2| (rule, lr, l2))))
            .filter(|&(_, lr, l2)| lr * l2 <= MAX_DECAY_PER_STEP * (1.0 + 1e-4))
            .collect();
        let bar = crate::progress::bar(grid.len() as u64 + 1, "image policy", "fits");
        let start = Instant::now();
        let mut candidates = Vec::with_capacity(grid.len());
        for (rule, learning_rate, l2) in grid {
            bar.inc(1);
            let y_train = self.evidence.labels(&train_ids, rule);
            let options = TrainOptions { l2, learning_rate, ..TrainOptions::default() };
            let policy = match ImagePolicy::train(&x_train, &y_train, options) {
                Ok(policy) => policy,
                Err(e) => {
                    bar.suspend(|| {
                        println!("  skipped {} labels, l2 {l2}, learning rate {learning_rate}: {e}", rule.name())
                    });
                    continue;
                }
            };
            let scores = score_rows(&policy, &x_val, self.dim);
            if scores.iter().any(|s| !s.is_finite()) {
                bar.suspend(|| {
                    println!("  skipped {} labels, l2 {l2}, learning rate {learning_rate}: diverged", rule.name())
                });
                continue;
            }
            let threshold = threshold_for_recall(&scores, &y_val, recall_target).context("no validation positives")?;
            let c = confusion(&scores, &y_val, threshold);
            candidates.push(Candidate {
                labels: rule,
                l2,
                learning_rate,
                train_positives: y_train.iter().filter(|&&y| y).count(),
                roc_auc: auc(&scores, &y_val),
                threshold,
                recall: c.recall(),
                precision: c.precision(),
            });
        }
        let Some(chosen) = best_candidate(&candidates).cloned() else {
            bail!("no candidate image policy could be fitted on the train side (each needs both classes)");
        };

        let y_all = self.evidence.labels(&self.ids, chosen.labels);
        let options = TrainOptions { l2: chosen.l2, learning_rate: chosen.learning_rate, ..TrainOptions::default() };
        let mut policy = ImagePolicy::train(&self.features, &y_all, options)
            .context("failed to refit the image policy on every train image")?;
        if !(policy.bias.is_finite() && policy.weights.iter().all(|w| w.is_finite())) {
            bail!(
                "refitting the image policy on every train image diverged (learning rate {}, l2 {})",
                options.learning_rate,
                options.l2
            );
        }
        policy.threshold = chosen.threshold;
        bar.finish_and_clear();
        println!("image policy: {} fits in {:.1} s", candidates.len() + 1, start.elapsed().as_secs_f64());
        Ok(PolicyCheckpoint {
            format: CHECKPOINT_FORMAT,
            image_encoder: self.layout.clone(),
            seed,
            train_fraction,
            recall_target,
            fingerprint,
            train_images: self.ids.len(),
            train_positives: y_all.iter().filter(|&&y| y).count(),
            labels: chosen.labels,
            options,
            validation: ValidationReport {
                train_images: train_rows.len(),
                validation_images: val_rows.len(),
                validation_positives: val_positives,
                ground_truth: truth,
                chosen,
                candidates,
            },
            policy,
        })
    }
}

/// The candidate with the highest validation ROC-AUC; the first of equals.
fn best_candidate(candidates: &[Candidate]) -> Option<&Candidate> {
    let key = |c: &Candidate| c.roc_auc.unwrap_or(f64::NEG_INFINITY);
    candidates.iter().fold(None, |best: Option<&Candidate>, c| match best {
        Some(b) if key(b) >= key(c) => Some(b),
        _ => Some(c),
    })
}

/// Scores of row-major `features`; a row that cannot be scored gets 1.0 (it would be blocked).
fn score_rows(policy: &ImagePolicy, features: &[f32], dim: usize) -> Vec<f32> {
    features.chunks_exact(dim).map(|row| policy.score(row).unwrap_or(1.0)).collect()
}

fn auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let scores: Vec<f64> = scores.iter().map(|&s| f64::from(s)).collect();
    imsearch_eval::roc_auc(&scores, labels)
}

/// Counts of a blocking rule (`score >= threshold`) against labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Confusion {
    true_positives: usize,
    false_positives: usize,
    false_negatives: usize,
    true_negatives: usize,
}

impl Confusion {
    fn from_blocked(blocked: &[bool], labels: &[bool]) -> Self {
        let mut c = Confusion::default();
        for (&b, &y) in blocked.iter().zip(labels) {
            match (b, y) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, true) => c.false_negatives += 1,
                (false, false) => c.true_negatives += 1,
            }
        }
        c
    }

    fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_negatives)
    }

    fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.true_positives + self.false_positives)
    }
}

fn confusion(scores: &[f32], labels: &[bool], threshold: f32) -> Confusion {
    let blocked: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
    Confusion::from_blocked(&blocked, labels)
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// The text policy's figures on training and on the test queries.
fn text_figures(ds: &Dataset, prepared: &Prepared) -> Result<TextFigures> {
    let policy = TextPolicy::default();
    let captions = ds.train_captions();
    let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q))
        .context("failed to aggregate the labels")?;
    let filter = TrainingFilter::new(&captions, &labels.pairs, &policy);
    let counts = &prepared.counts;
    if filter.pairs_removed != counts.pairs_removed_by_compliance
        || filter.images_affected != counts.images_affected_by_compliance
    {
        bail!(
            "the compliance counts disagree with training's: {} pairs / {} images here, {} / {} in `cargo xtask train`",
            filter.pairs_removed,
            filter.images_affected,
            counts.pairs_removed_by_compliance,
            counts.images_affected_by_compliance
        );
    }
    let mut by_word = BTreeMap::new();
    let mut child_images = BTreeSet::new();
    for q in &ds.test_queries {
        if let Some(word) = policy.matched(&q.text) {
            *by_word.entry(word.to_owned()).or_insert(0) += 1;
            child_images.insert(q.image.clone());
        }
    }
    let queries: Vec<(String, &str, &ImageId)> =
        ds.test_queries.iter().map(|q| (q.query.to_string(), q.text.as_str(), &q.image)).collect();
    let (allowed_of_child_images, review) = review_test_queries(&queries, &policy);
    Ok(TextFigures {
        lexicon_words: LEXICON.len(),
        train_captions: captions.len(),
        train_captions_removed: filter.captions_removed,
        train_pairs_labelled: labels.pairs.len(),
        train_pairs_removed: counts.pairs_removed_by_compliance,
        train_images_affected: counts.images_affected_by_compliance,
        train_images_removed: filter.images_removed,
        test_queries: ds.test_queries.len(),
        test_queries_blocked: by_word.values().sum(),
        test_queries_blocked_by_word: by_word,
        test_child_images: child_images.len(),
        test_child_image_queries_allowed: allowed_of_child_images,
        test_queries_to_review: review,
    })
}

/// What the text policy removes from training (the filter of `train::Prepared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TrainingFilter {
    pairs_removed: usize,
    captions_removed: usize,
    images_affected: usize,
    images_removed: usize,
}

impl TrainingFilter {
    fn new(captions: &BTreeMap<QueryId, &str>, pairs: &[GradedPair], policy: &TextPolicy) -> Self {
        let names_child = |q: &QueryId| captions.get(q).is_some_and(|t| policy.matched(t).is_some());
        let (mut before, mut after, mut affected) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut pairs_removed = 0;
        for p in pairs {
            before.insert(&p.image);
            if names_child(&p.query) {
                pairs_removed += 1;
                affected.insert(&p.image);
            } else {
                after.insert(&p.image);
            }
        }
        let mut captions_removed = 0;
        for q in captions.keys() {
            before.insert(q.source_image());
            if names_child(q) {
                captions_removed += 1;
            } else {
                after.insert(q.source_image());
            }
        }
        TrainingFilter {
            pairs_removed,
            captions_removed,
            images_affected: affected.len(),
            images_removed: before.difference(&after).count(),
        }
    }
}

/// The check that every test query naming a child is blocked: among the allowed queries
/// (`(id, text, image)`) written for an image that another query shows to be a child's, those
/// using a word of [`REVIEW_WORDS`]. Returns how many allowed queries such images have, and
/// the ones to review.
fn review_test_queries(queries: &[(String, &str, &ImageId)], policy: &TextPolicy) -> (usize, Vec<ReviewQuery>) {
    let child_images: BTreeSet<&ImageId> =
        queries.iter().filter(|(_, t, _)| policy.matched(t).is_some()).map(|&(_, _, i)| i).collect();
    let review_policy = TextPolicy::new(REVIEW_WORDS.iter().copied());
    let mut allowed = 0;
    let mut review = Vec::new();
    for (id, text, image) in queries {
        if !child_images.contains(image) || policy.matched(text).is_some() {
            continue;
        }
        allowed += 1;
        if let Some(word) = review_policy.matched(text) {
            review.push(ReviewQuery { query: id.clone(), text: (*text).to_owned(), word: word.to_owned() });
        }
    }
    (allowed, review)
}

/// The image policy on the test images, once. Ground truth: a query written for the image
/// names a child.
fn test_figures(ds: &Dataset, emb: &Embeddings, ckpt: &PolicyCheckpoint) -> Result<TestFigures> {
    let policy = TextPolicy::default();
    let mut truth: BTreeMap<&ImageId, bool> = ds.test_images.iter().map(|r| (&r.image, false)).collect();
    for q in &ds.test_queries {
        if policy.matched(&q.text).is_some() {
            if let Some(t) = truth.get_mut(&q.image) {
                *t = true;
            }
        }
    }
    if truth.is_empty() {
        bail!("test_images.csv lists no images");
    }
    let mut scores = Vec::with_capacity(truth.len());
    let mut blocked = Vec::with_capacity(truth.len());
    let mut labels = Vec::with_capacity(truth.len());
    let mut unscored = 0;
    for (image, &label) in &truth {
        let decision = image_decision(ckpt, emb, Collection::Test, image.as_str());
        let score = image_features(emb, Collection::Test, image.as_str()).and_then(|f| ckpt.policy.score(&f));
        if score.is_none() {
            unscored += 1;
        }
        scores.push(score.unwrap_or(1.0));
        blocked.push(decision.is_blocked());
        labels.push(label);
    }
    let c = Confusion::from_blocked(&blocked, &labels);
    let (recall, precision) = (c.recall(), c.precision());
    let train_keys = emb.images.first().map(|(_, train, _)| train.keys()).unwrap_or_default();
    let train_images_blocked =
        train_keys.iter().filter(|k| image_decision(ckpt, emb, Collection::Train, k).is_blocked()).count();
    Ok(TestFigures {
        test_images: truth.len(),
        positives: labels.iter().filter(|&&y| y).count(),
        unscored,
        roc_auc: auc(&scores, &labels),
        recall,
        precision,
        threshold: ckpt.policy.threshold,
        blocked: c.true_positives + c.false_positives,
        true_positives: c.true_positives,
        false_positives: c.false_positives,
        false_negatives: c.false_negatives,
        targets_met: recall.is_some_and(|r| r >= TARGET_RECALL) && precision.is_some_and(|p| p >= TARGET_PRECISION),
        train_images_blocked,
        train_images: train_keys.len(),
    })
}

fn print_report(r: &Report) {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    let t = &r.text_policy;
    println!("\ntext policy ({} lexicon words)", t.lexicon_words);
    println!(
        "  training: {} of {} labelled pairs removed (their caption names a child; {} images affected, \
         {} left out of training entirely); {} of {} captions removed",
        t.train_pairs_removed,
        t.train_pairs_labelled,
        t.train_images_affected,
        t.train_images_removed,
        t.train_captions_removed,
        t.train_captions
    );
    let words: Vec<String> = t.test_queries_blocked_by_word.iter().map(|(w, n)| format!("{w} {n}")).collect();
    println!("  test queries: {} of {} blocked ({})", t.test_queries_blocked, t.test_queries, words.join(", "));
    println!(
        "  check: {} test images have a query naming a child; their other {} queries are allowed, {} of them \
         using a word the lexicon leaves out:",
        t.test_child_images,
        t.test_child_image_queries_allowed,
        t.test_queries_to_review.len()
    );
    for q in &t.test_queries_to_review {
        println!("    {} ({:?}): {}", q.query, q.word, q.text);
    }

    let v = &r.validation;
    println!("\nimage policy (logistic regression over {})", r.image_encoder);
    println!(
        "  validation: fitted on {} train images, scored on {} ({} with a child by {}); threshold for recall >= {}",
        v.train_images,
        v.validation_images,
        v.validation_positives,
        v.ground_truth.name(),
        r.recall_target
    );
    println!(
        "    {:<20} {:>6} {:>6} {:>9} {:>7} {:>10} {:>7} {:>9}",
        "labels", "lr", "l2", "positives", "AUC", "threshold", "recall", "precision"
    );
    for c in &v.candidates {
        let mark = if c.same_options(&v.chosen) { " <- chosen" } else { "" };
        println!(
            "    {:<20} {:>6} {:>6} {:>9} {:>7} {:>10.4} {:>7} {:>9}{mark}",
            c.labels.name(),
            c.learning_rate,
            c.l2,
            c.train_positives,
            f(c.roc_auc),
            c.threshold,
            f(c.recall),
            f(c.precision)
        );
    }
    let i = &r.image_policy;
    println!(
        "  chosen: {} labels, learning rate {}, l2 {}; refitted on every train image (it blocks {} of {} of them); checkpoint {}",
        v.chosen.labels.name(),
        v.chosen.learning_rate,
        v.chosen.l2,
        i.train_images_blocked,
        i.train_images,
        r.image_policy_checkpoint.display()
    );
    println!(
        "  test ({} images, {} with a child by their queries{}): ROC-AUC {}, recall {} ({}/{}), precision {} ({}/{}), \
         threshold {:.4}",
        i.test_images,
        i.positives,
        if i.unscored > 0 { format!(", {} without features, blocked", i.unscored) } else { String::new() },
        f(i.roc_auc),
        f(i.recall),
        i.true_positives,
        i.true_positives + i.false_negatives,
        f(i.precision),
        i.true_positives,
        i.blocked,
        i.threshold
    );
    println!(
        "  targets (recall >= {TARGET_RECALL}, precision >= {TARGET_PRECISION}): {}",
        if i.targets_met { "met" } else { "NOT met" }
    );
}

/// A 64-bit FNV-1a hash.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// The checkpoint at `path`; `None` when there is none, an error when it is unreadable or of
/// another format.
pub(crate) fn read_checkpoint(path: &Path) -> Result<Option<PolicyCheckpoint>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    };
    let ckpt: PolicyCheckpoint =
        serde_json::from_str(&text).with_context(|| format!("{} is not an image policy checkpoint", path.display()))?;
    if ckpt.format != CHECKPOINT_FORMAT {
        bail!("{} has format {}, expected {CHECKPOINT_FORMAT}", path.display(), ckpt.format);
    }
    Ok(Some(ckpt))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> Dataset {
        Dataset::load(paths::workspace_root().join("fixtures/tiny"), Default::default()).expect("fixtures load")
    }

    fn q(s: &str) -> QueryId {
        QueryId::parse(s).unwrap()
    }

    fn pair(image: &str, query: &str, label: f32) -> GradedPair {
        GradedPair {
            image: ImageId::from(image),
            query: q(query),
            label: imsearch_types::Score::new(label).unwrap(),
            sources: Default::default(),
        }
    }

    #[test]
    fn evidence_from_captions_and_well_graded_pairs() {
        let captions: BTreeMap<QueryId, &str> =
            [(q("a.jpg#0"), "A boy runs"), (q("b.jpg#0"), "A dog runs"), (q("c.jpg#0"), "Two kids play")]
                .into_iter()
                .collect();
        let pairs = [
            pair("d.jpg", "a.jpg#0", 0.8), // a child's caption describes d: evidence
            pair("e.jpg", "a.jpg#0", 0.3), // it does not describe e
            pair("f.jpg", "b.jpg#0", 1.0), // no child named
            pair("g.jpg", "x.jpg#0", 1.0), // caption unknown
            pair("h.jpg", "c.jpg#0", 0.5), // exactly at the bar
        ];
        let e = ChildEvidence::new(&captions, &pairs, &TextPolicy::default());
        let set = |v: &[&str]| v.iter().map(|&s| ImageId::from(s)).collect::<BTreeSet<_>>();
        assert_eq!(e.by_caption, set(&["a.jpg", "c.jpg"]));
        assert_eq!(e.by_pair, set(&["d.jpg", "h.jpg"]));
        assert!(e.label(&ImageId::from("a.jpg"), LabelRule::Captions));
        assert!(!e.label(&ImageId::from("d.jpg"), LabelRule::Captions));
        assert!(e.label(&ImageId::from("d.jpg"), LabelRule::CaptionsAndPairs));
        assert!(!e.label(&ImageId::from("b.jpg"), LabelRule::CaptionsAndPairs));
    }

    #[test]
    fn evidence_on_the_fixtures() {
        let ds = fixtures();
        let e = ChildEvidence::from_dataset(&ds, &TextPolicy::default()).unwrap();
        // "A little girl in a yellow dress ." is 1002_child.jpg's own caption; the experts
        // graded its pairing with 1003_bike.jpg 1, 1, 1, so that is no evidence.
        assert_eq!(e.by_caption, [ImageId::from("1002_child.jpg")].into_iter().collect());
        assert!(!e.label(&ImageId::from("1003_bike.jpg"), LabelRule::CaptionsAndPairs));
    }

    #[test]
    fn training_filter_counts() {
        let captions: BTreeMap<QueryId, &str> =
            [(q("a.jpg#0"), "A girl"), (q("b.jpg#0"), "A dog")].into_iter().collect();
        let pairs = [
            pair("a.jpg", "a.jpg#0", 1.0),
            pair("b.jpg", "a.jpg#0", 0.0),
            pair("b.jpg", "b.jpg#0", 1.0),
            pair("c.jpg", "a.jpg#0", 0.3),
        ];
        let f = TrainingFilter::new(&captions, &pairs, &TextPolicy::default());
        // a.jpg loses its pair and its caption, c.jpg its only pair; b.jpg keeps one of each.
        assert_eq!(f, TrainingFilter { pairs_removed: 3, captions_removed: 1, images_affected: 3, images_removed: 2 });
    }

    #[test]
    fn training_filter_matches_train_on_the_fixtures() {
        let ds = fixtures();
        let captions = ds.train_captions();
        let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q)).unwrap();
        let f = TrainingFilter::new(&captions, &labels.pairs, &TextPolicy::default());
        assert_eq!(f.captions_removed, 1);
        assert!(f.pairs_removed >= 1, "{f:?}");
    }

    #[test]
    fn review_lists_allowed_queries_of_child_images_with_review_words() {
        let (a, b) = (ImageId::from("a.jpg"), ImageId::from("b.jpg"));
        let queries = vec![
            ("a.jpg#0".to_owned(), "A crowd of children", &a),
            ("a.jpg#1".to_owned(), "two young adults watch", &a),
            ("a.jpg#2".to_owned(), "people at a party", &a),
            ("b.jpg#0".to_owned(), "a young man climbs", &b),
        ];
        let (allowed, review) = review_test_queries(&queries, &TextPolicy::default());
        assert_eq!(allowed, 2);
        assert_eq!(
            review,
            vec![ReviewQuery { query: "a.jpg#1".into(), text: "two young adults watch".into(), word: "young".into() }]
        );
    }

    #[test]
    fn confusion_and_ratios() {
        let scores = [0.9, 0.8, 0.4, 0.3, 0.1];
        let labels = [true, false, true, false, true];
        let c = confusion(&scores, &labels, 0.4);
        assert_eq!(c, Confusion { true_positives: 2, false_positives: 1, false_negatives: 1, true_negatives: 1 });
        assert!((c.recall().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        assert!((c.precision().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let none = confusion(&scores, &labels, 2.0);
        assert_eq!(none.precision(), None);
        assert_eq!(none.recall(), Some(0.0));
    }

    fn candidate(l2: f32, roc_auc: Option<f64>) -> Candidate {
        Candidate {
            labels: LabelRule::Captions,
            l2,
            learning_rate: 0.5,
            train_positives: 1,
            roc_auc,
            threshold: 0.5,
            recall: None,
            precision: None,
        }
    }

    #[test]
    fn best_candidate_is_the_first_of_the_highest_auc() {
        let cs =
            [candidate(1.0, Some(0.8)), candidate(2.0, Some(0.9)), candidate(3.0, Some(0.9)), candidate(4.0, None)];
        assert_eq!(best_candidate(&cs).unwrap().l2, 2.0);
        assert_eq!(best_candidate(&[candidate(1.0, None)]).unwrap().l2, 1.0);
        assert!(best_candidate(&[]).is_none());
    }

    /// 40 images in 4-d: children around +1, the others around -1; half of the children are
    /// known by their caption, the rest by a pair.
    fn synthetic() -> PolicyData {
        let mut ids = Vec::new();
        let mut features = Vec::new();
        let mut evidence = ChildEvidence::default();
        for i in 0..40 {
            let id = ImageId(format!("{i:02}.jpg"));
            let child = i % 3 == 0;
            let c = if child { 1.0 } else { -1.0 };
            let j = (i as f32 * 0.61).sin() * 0.6;
            features.extend([c + j, c - j, j, 0.5 * c]);
            if child && i % 2 == 0 {
                evidence.by_caption.insert(id.clone());
            } else if child {
                evidence.by_pair.insert(id.clone());
            }
            ids.push(id);
        }
        PolicyData { layout: "m".into(), ids, features, dim: 4, evidence }
    }

    #[test]
    fn fit_is_deterministic_and_meets_the_validation_target() {
        let d = synthetic();
        let a = d.fit(3, 0.7, 0.97, d.fingerprint(3, 0.7, 0.97)).unwrap();
        let b = d.fit(3, 0.7, 0.97, d.fingerprint(3, 0.7, 0.97)).unwrap();
        assert_eq!(serde_json::to_string(&a).unwrap(), serde_json::to_string(&b).unwrap());
        assert!(!a.validation.candidates.is_empty());
        assert!(a.validation.chosen.recall.unwrap() >= 0.97);
        assert_eq!(a.policy.threshold.to_bits(), a.validation.chosen.threshold.to_bits());
        assert_eq!(a.train_images, 40);
        // Every child is caught by the refitted policy at the kept threshold.
        for (row, id) in d.features.chunks(4).zip(&d.ids) {
            if d.evidence.label(id, LabelRule::CaptionsAndPairs) {
                assert!(a.policy.decide(Some(row)).is_blocked(), "{id}");
            }
        }
    }

    #[test]
    fn fit_refuses_bad_splits() {
        let d = synthetic();
        let err = d.fit(3, 1.0, 0.97, String::new()).unwrap_err();
        assert!(format!("{err:#}").contains("no validation images"), "{err:#}");
        let err = d.fit(3, 0.0, 0.97, String::new()).unwrap_err();
        assert!(format!("{err:#}").contains("train fraction"), "{err:#}");
        let none = PolicyData { evidence: ChildEvidence::default(), ..synthetic() };
        let err = none.fit(3, 0.7, 0.97, String::new()).unwrap_err();
        assert!(format!("{err:#}").contains("no validation image shows a child"), "{err:#}");
    }

    #[test]
    fn fingerprint_changes_with_its_inputs() {
        let d = synthetic();
        let base = d.fingerprint(0, 0.7, 0.97);
        assert_eq!(base, synthetic().fingerprint(0, 0.7, 0.97));
        assert_ne!(base, PolicyData { layout: "n".into(), ..synthetic() }.fingerprint(0, 0.7, 0.97));
        assert_ne!(base, d.fingerprint(1, 0.7, 0.97));
        assert_ne!(base, d.fingerprint(0, 0.8, 0.97));
        assert_ne!(base, d.fingerprint(0, 0.7, 0.95));
        let mut changed = synthetic();
        changed.features[5] += 1e-3;
        assert_ne!(base, changed.fingerprint(0, 0.7, 0.97));
        let mut relabelled = synthetic();
        relabelled.evidence.by_pair.insert(relabelled.ids[1].clone());
        assert_ne!(base, relabelled.fingerprint(0, 0.7, 0.97));
    }

    #[test]
    fn checkpoint_round_trips_and_bad_files_are_errors() {
        let d = synthetic();
        let ckpt = d.fit(0, 0.7, 0.97, "f".into()).unwrap();
        let dir = std::env::temp_dir().join(format!("imsearch-compliance-test-{}", std::process::id()));
        let path = dir.join("sub").join("compliance-seed0.json");
        assert!(read_checkpoint(&path).unwrap().is_none());
        paths::write_atomic(&path, serde_json::to_string_pretty(&ckpt).unwrap().as_bytes()).unwrap();
        let back = read_checkpoint(&path).unwrap().unwrap();
        assert_eq!(back.policy, ckpt.policy);
        assert_eq!(serde_json::to_string(&back).unwrap(), serde_json::to_string(&ckpt).unwrap());
        fs::write(&path, "{ not json").unwrap();
        assert!(format!("{:#}", read_checkpoint(&path).unwrap_err()).contains("not an image policy checkpoint"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn recall_target_is_checked() {
        assert!(check_recall_target(0.97).is_ok());
        assert!(check_recall_target(1.0).is_ok());
        for bad in [0.0, -0.5, 1.5, f32::NAN] {
            assert!(check_recall_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn split_opts_keep_seed_and_fraction() {
        let o = split_opts(7, 0.6).unwrap();
        assert_eq!((o.seed, o.train_fraction), (7, 0.6));
    }
}
