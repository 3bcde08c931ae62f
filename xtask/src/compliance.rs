//! `cargo xtask compliance`: the compliance policies measured on the dataset, and the image
//! policy's checkpoint (`<workdir>/checkpoints/compliance-seed<seed>.json`) that the search
//! commands load. Wiring only: the policies, the fit (`imsearch_compliance::PolicyData::fit`,
//! whose module doc says how the policy is chosen), the checkpoint and the figures
//! (`TextAudit`, `ImageAudit`) live in `imsearch-compliance`; this module reads the dataset and
//! the embeddings, splits the train images as the fusion model does, calls them and prints.
//!
//! It measures the text policy on training (cross-checked against `cargo xtask train`'s filter)
//! and on the 500 test queries, and the image policy on the 100 test images, once.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{bail, Context, Result};
use clap::Parser;
use imsearch_compliance::{
    check_recall_target, ChildEvidence, Decision, FitEvent, FitSettings, ImageAudit, LabelRule, PolicyData, TextAudit,
    TextPolicy, TrainOptions, ValidationReport,
};
use imsearch_data::{aggregate, Aggregation, Dataset, ImageSplit};
use imsearch_types::{GradedPair, ImageId, QueryId};
use imsearch_vision::EncoderKind;
use serde::Serialize;

use crate::{
    embed::{self, EmbedOpts, Embeddings},
    models::ModelsArg,
    paths,
    train::{self, TrainOpts},
};

pub(crate) use imsearch_compliance::PolicyCheckpoint;

/// The recall and precision the image policy must reach on the test images.
const TARGET_RECALL: f64 = 0.95;
const TARGET_PRECISION: f64 = 0.60;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The dataset directory (default: ../shared/data/dsplus_integrated_project_4 next to the checkout).
    #[arg(long, value_name = "DIR", env = imsearch_data::DATA_ENV, value_parser = crate::paths::dir_arg)]
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
    /// Also fit the image policy for the next seeds (--seed + 1, ...) and score each once on the
    /// test images: how much its figures depend on the split (`seeds` in compliance.json).
    #[arg(long, default_value_t = 4)]
    more_seeds: u64,
    #[command(flatten)]
    policy: PolicyOpts,
}

/// One seed's image policy on the test images.
#[derive(Debug, Serialize)]
struct SeedFigures {
    seed: u64,
    recall: Option<f64>,
    precision: Option<f64>,
    roc_auc: Option<f64>,
    blocked: usize,
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
        let train_views = images.iter().map(|_| Vec::new()).collect();
        Ok(Embeddings { dir: emb.dir.clone(), images, texts: emb.texts.clone(), train_views })
    }
}

/// Where the image policy of `seed` is kept.
pub(crate) fn policy_path(embed: &EmbedOpts, seed: u64) -> PathBuf {
    embed.workdir().join("checkpoints").join(format!("compliance-seed{seed}.json"))
}

/// The checkpoint at `path`; `None` when there is none, an error when it is unreadable or of
/// another format.
pub(crate) fn read_checkpoint(path: &Path) -> Result<Option<PolicyCheckpoint>> {
    Ok(PolicyCheckpoint::read(path)?)
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
    check_recall_target(opts.recall_target).context("invalid --recall-target")?;
    let path = policy_path(embed, seed);
    let data = policy_data(ds, emb)?;
    let settings = FitSettings { seed, train_fraction, recall_target: opts.recall_target };
    if !opts.retrain_policy {
        match read_checkpoint(&path) {
            Ok(Some(ckpt)) if data.made(&ckpt, &settings) => {
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
    let ckpt = fit(&data, &settings)?;
    ckpt.write(&path)?;
    Ok((ckpt, path, true))
}

/// Every train image's features (the layout of `imsearch_train::Embeddings::train_image_matrix`) and child evidence.
fn policy_data(ds: &Dataset, emb: &Embeddings) -> Result<PolicyData> {
    let (layout, ids, matrix) = train::caches(emb).train_image_matrix()?;
    let (n, dim) = matrix.dims2()?;
    if n == 0 || dim == 0 {
        bail!("no train image has an embedding; run `cargo xtask embed` and check its report");
    }
    let features = matrix.flatten_all()?.to_vec1::<f32>()?;
    Ok(PolicyData::new(layout, ids, features, dim, child_evidence(ds)?)?)
}

fn child_evidence(ds: &Dataset) -> Result<ChildEvidence> {
    let captions = ds.train_captions();
    Ok(ChildEvidence::new(&captions, &train_pairs(ds, &captions)?, &TextPolicy::default()))
}

/// The aggregated labels of the training pairs whose caption is known.
fn train_pairs(ds: &Dataset, captions: &BTreeMap<QueryId, &str>) -> Result<Vec<GradedPair>> {
    let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q))
        .context("failed to aggregate the labels")?;
    Ok(labels.pairs)
}

/// Splits the train images as the fusion model does and fits, with a progress bar.
fn fit(data: &PolicyData, settings: &FitSettings) -> Result<PolicyCheckpoint> {
    let split = ImageSplit::new(data.ids().iter().cloned(), settings.train_fraction, settings.seed)
        .context("failed to split the train images")?;
    let sides = data.ids().iter().map(|id| split.side(id).context("an image left out of its own split"));
    let sides = sides.collect::<Result<Vec<_>>>()?;
    let start = Instant::now();
    let mut bar = None;
    let fitted = data.fit(&sides, settings, &mut |event| match event {
        FitEvent::Start { train_images, validation_images, validation_positives, dim, candidates } => {
            println!(
                "image policy: choosing on validation ({train_images} images fit, {validation_images} validate, \
                 {validation_positives} of them with a child by captions and pairs), {dim} features"
            );
            bar = Some(crate::progress::bar(candidates as u64 + 1, "image policy", "fits"));
        }
        FitEvent::Candidate { .. } => bar.iter().for_each(|b| b.inc(1)),
        FitEvent::Skipped { labels, learning_rate, l2, why } => {
            let line = format!("  skipped {} labels, l2 {l2}, learning rate {learning_rate}: {why}", labels.name());
            bar.as_ref().map_or_else(|| println!("{line}"), |b| b.suspend(|| println!("{line}")));
        }
    });
    bar.iter().for_each(|b| b.finish_and_clear());
    let ckpt = fitted.context("failed to fit the image policy; try another --seed or --train-fraction")?;
    println!("image policy: {} fits in {:.1} s", ckpt.validation.candidates.len() + 1, start.elapsed().as_secs_f64());
    Ok(ckpt)
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
    ckpt.decide(&layout_name(emb), image_features(emb, collection, key).as_deref())
}

/// The layout name of the image features, as `imsearch_train::Embeddings::train_image_matrix` builds it.
fn layout_name(emb: &Embeddings) -> String {
    emb.images.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>().join("+")
}

#[derive(Debug, Serialize)]
struct Report {
    seed: u64,
    train_fraction: f64,
    recall_target: f32,
    train_pairs_removed: usize,
    train_images_removed: usize,
    test_queries_blocked: usize,
    text_policy: TextAudit,
    image_policy: ImageAudit,
    image_policy_checkpoint: PathBuf,
    image_encoder: String,
    image_policy_labels: LabelRule,
    image_policy_options: TrainOptions,
    validation: ValidationReport,
    /// The image policy of `seed` and of each of `--more-seeds` next seeds on the test images.
    seeds: Vec<SeedFigures>,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    check_recall_target(args.policy.recall_target).context("invalid --recall-target")?;
    if !(args.train_fraction > 0.0 && args.train_fraction < 1.0) {
        bail!(
            "--train-fraction must be in (0, 1): the image policy's threshold is chosen on the other side, got {}",
            args.train_fraction
        );
    }
    let data = paths::data_dir(args.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    // The policies read the two-view features only: the single views the dual-encoder members
    // train on are not encoded here.
    let two_views = EmbedOpts { train_views: vec!["none".into()], ..args.embed.clone() };
    let emb = embed::embed_all(&ds, &args.models.store()?, &two_views)?;
    let split = split_opts(args.seed, args.train_fraction)?;
    let prepared = train::prepare(&ds, &emb, &split)?;
    let text = text_figures(&ds, &prepared)?;

    let emb = args.policy.restrict(&emb, &args.embed)?;
    let (ckpt, ckpt_path, _) =
        load_or_train_image_policy(&ds, &emb, &args.embed, args.seed, args.train_fraction, &args.policy)?;
    let test = test_figures(&ds, &emb, &ckpt)?;
    let mut seeds = Vec::new();
    for seed in args.seed..=args.seed + args.more_seeds {
        let figures = if seed == args.seed {
            test.clone()
        } else {
            let (ckpt, _, _) =
                load_or_train_image_policy(&ds, &emb, &args.embed, seed, args.train_fraction, &args.policy)?;
            test_figures(&ds, &emb, &ckpt)?
        };
        let ImageAudit { recall, precision, roc_auc, blocked, .. } = figures;
        seeds.push(SeedFigures { seed, recall, precision, roc_auc, blocked });
    }

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
        seeds,
    };
    print_report(&report);
    let path = args.embed.workdir().join("compliance.json");
    paths::write_atomic(&path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    println!("\nwrote {}", path.display());
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

/// The text policy's figures on training (cross-checked against `cargo xtask train`'s filter)
/// and on the test queries.
fn text_figures(ds: &Dataset, prepared: &imsearch_train::TrainingData) -> Result<TextAudit> {
    let captions = ds.train_captions();
    let queries: Vec<(String, &str, &ImageId)> =
        ds.test_queries.iter().map(|q| (q.query.to_string(), q.text.as_str(), &q.image)).collect();
    let audit = TextAudit::new(&captions, &train_pairs(ds, &captions)?, &queries);
    let counts = &prepared.counts;
    if (audit.train_pairs_removed, audit.train_images_affected)
        != (counts.pairs_removed_by_compliance, counts.images_affected_by_compliance)
    {
        bail!(
            "the compliance counts disagree with training's: {} pairs / {} images here, {} / {} in `cargo xtask train`",
            audit.train_pairs_removed,
            audit.train_images_affected,
            counts.pairs_removed_by_compliance,
            counts.images_affected_by_compliance
        );
    }
    Ok(audit)
}

/// The image policy on the test images, once. Ground truth: a query written for the image
/// names a child.
fn test_figures(ds: &Dataset, emb: &Embeddings, ckpt: &PolicyCheckpoint) -> Result<ImageAudit> {
    let policy = TextPolicy::default();
    let mut truth: BTreeMap<&ImageId, bool> = ds.test_images.iter().map(|r| (&r.image, false)).collect();
    for q in ds.test_queries.iter().filter(|q| policy.matched(&q.text).is_some()) {
        if let Some(t) = truth.get_mut(&q.image) {
            *t = true;
        }
    }
    if truth.is_empty() {
        bail!("test_images.csv lists no images");
    }
    let test = truth.iter().map(|(i, &label)| (image_features(emb, Collection::Test, i.as_str()), label));
    let train_keys = emb.images.first().map(|(_, train, _)| train.keys()).unwrap_or_default();
    let train = train_keys.iter().map(|k| image_features(emb, Collection::Train, k));
    Ok(ImageAudit::new(ckpt, &layout_name(emb), test, train, (TARGET_RECALL, TARGET_PRECISION)))
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
        "  test images with a query naming a child: {}; their other {} queries are allowed (scored, never read to \
         decide a rule)",
        t.test_child_images, t.test_child_image_queries_allowed
    );
    println!("  the training captions each rule catches (the evidence a rule is kept for):");
    for e in t.lexicon.iter().filter(|e| e.train_captions > 0) {
        println!(
            "    {:<16} {:>4}  e.g. {:?}",
            e.rule,
            e.train_captions,
            e.examples.first().map_or("", String::as_str)
        );
    }
    let unused: Vec<&str> = t.lexicon.iter().filter(|e| e.train_captions == 0).map(|e| e.rule.as_str()).collect();
    println!("    catching no training caption ({}): {}", unused.len(), unused.join(", "));

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
    println!("  by seed (each seed's own split, choice and fit; the test images scored once each):");
    for s in &r.seeds {
        println!(
            "    seed {}: recall {}, precision {}, ROC-AUC {}, {} of {} test images hidden",
            s.seed,
            f(s.recall),
            f(s.precision),
            f(s.roc_auc),
            s.blocked,
            i.test_images
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> Dataset {
        Dataset::load(paths::workspace_root().join("fixtures/tiny"), Default::default()).expect("fixtures load")
    }

    #[test]
    fn evidence_on_the_fixtures() {
        let e = child_evidence(&fixtures()).unwrap();
        // "A little girl in a yellow dress ." is 1002_child.jpg's own caption; the experts
        // graded its pairing with 1003_bike.jpg 1, 1, 1, so that is no evidence.
        assert_eq!(e.by_caption, [ImageId::from("1002_child.jpg")].into_iter().collect());
        assert!(!e.label(&ImageId::from("1003_bike.jpg"), LabelRule::CaptionsAndPairs));
    }

    #[test]
    fn training_filter_matches_train_on_the_fixtures() {
        let ds = fixtures();
        let captions = ds.train_captions();
        let f = TextAudit::new(&captions, &train_pairs(&ds, &captions).unwrap(), &[]);
        assert_eq!(f.train_captions_removed, 1);
        assert!(f.train_pairs_removed >= 1, "{f:?}");
    }

    #[test]
    fn split_opts_keep_seed_and_fraction() {
        let o = split_opts(7, 0.6).unwrap();
        assert_eq!((o.seed, o.train_fraction), (7, 0.6));
    }
}
