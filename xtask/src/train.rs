//! `cargo xtask train`: the fusion model trained on the aggregated labels, split by image, after
//! the compliance filter, with early stopping on the validation split.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    time::Instant,
};

use anyhow::{bail, Context, Result};
use candle::Tensor;
use imsearch_compliance::TextPolicy;
use imsearch_data::{aggregate, Aggregation, Dataset, ImageSplit};
use imsearch_fusion::{FusionConfig, FusionModel, PairSet, TrainConfig, TrainReport};
use imsearch_types::{GradedPair, ImageId, QueryId};
use serde::Serialize;

use crate::{
    embed::{self, EmbedOpts, Embeddings},
    models::ModelsArg,
    paths,
};

/// Labels at or above this (experts' majority grade 3 of 4, or better) make a pair a positive
/// for the contrastive term as well.
pub(crate) const CONFIRMED: f32 = 0.66;

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TrainOpts {
    /// Seed of the split, the initial weights and the batch order.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Share of the training images used for training; the rest validate.
    #[arg(long, default_value_t = 0.7)]
    pub(crate) train_fraction: f64,
    /// Most epochs; training stops earlier when validation MRR stops improving.
    #[arg(long, default_value_t = 20)]
    pub(crate) epochs: usize,
    /// Width of the shared space.
    #[arg(long, default_value_t = 256)]
    pub(crate) shared_dim: usize,
    /// Width of each projection's hidden layer (0: linear projections).
    #[arg(long, default_value_t = 512)]
    pub(crate) hidden_dim: usize,
    /// Weight of the contrastive term against the label cross-entropy (4 was best on validation
    /// among 0, 1 and 4).
    #[arg(long, default_value_t = 4.0)]
    pub(crate) contrastive_weight: f64,
    #[arg(long, default_value_t = 1e-3)]
    pub(crate) learning_rate: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = TrainConfig::default().weight_decay)]
    pub(crate) weight_decay: f64,
    /// Temperature of the contrastive softmax.
    #[arg(long, default_value_t = TrainConfig::default().temperature)]
    pub(crate) temperature: f64,
    /// Distinct images (one caption each) per contrastive step.
    #[arg(long, default_value_t = TrainConfig::default().contrastive_batch)]
    pub(crate) contrastive_batch: usize,
    /// Share of the input features zeroed in each training row.
    #[arg(long, default_value_t = TrainConfig::default().input_dropout)]
    pub(crate) input_dropout: f64,
    /// Keep the text side in MiniLM's space (no text projection; the shared space is 384-d and
    /// --shared-dim is ignored).
    #[arg(long)]
    pub(crate) locked_text: bool,
}

/// The dataset, the model cache and the embedding and training options: what every job that
/// trains or loads the fusion model reads. Flatten into its arguments.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Pipeline {
    /// The dataset directory (default: $IMSEARCH_DATA, else ../shared/data/dsplus_integrated_project_4).
    #[arg(long, value_name = "DIR")]
    pub(crate) data: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) models: ModelsArg,
    #[command(flatten)]
    pub(crate) embed: EmbedOpts,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
}

/// `cargo xtask train` reads the pipeline and nothing else.
pub(crate) type Args = Pipeline;

pub(crate) fn run(args: &Args) -> Result<()> {
    let data = paths::data_dir(args.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &args.models.store()?, &args.embed)?;
    let prepared = Prepared::new(&ds, &emb, &args.train)?;
    prepared.print_counts();
    let (_, report, dir) = train_and_save(&prepared, &args.embed, &args.train)?;
    println!(
        "best epoch {} of {}, validation MRR {:.3}; checkpoint in {}",
        report.best_epoch,
        report.epochs.len(),
        report.best_validation_mrr,
        dir.display()
    );
    Ok(())
}

/// Counts of what went into training, for the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DataCounts {
    pub(crate) labelled_pairs: usize,
    pub(crate) pairs_removed_by_compliance: usize,
    pub(crate) images_affected_by_compliance: usize,
    pub(crate) pairs_without_embedding: usize,
    pub(crate) train_pairs: usize,
    pub(crate) validation_pairs: usize,
    pub(crate) train_images: usize,
    pub(crate) validation_images: usize,
    pub(crate) train_positives: usize,
    pub(crate) validation_positives: usize,
}

/// Embeddings as tensors and the pairs as rows of them, split by image.
pub(crate) struct Prepared {
    pub(crate) image_encoder: String,
    /// `(n_train_images, sum of encoder dims)`.
    pub(crate) images: Tensor,
    /// Query ids of every caption and test query, in row order of `texts`.
    pub(crate) text_ids: Vec<String>,
    pub(crate) texts: Tensor,
    pub(crate) train: PairSet,
    pub(crate) validation: PairSet,
    /// The labelled validation pairs with their sources, parallel to `validation.pairs`.
    pub(crate) validation_pairs: Vec<GradedPair>,
    pub(crate) counts: DataCounts,
    /// Each image encoder's id and width, in column order of `images`.
    pub(crate) image_parts: Vec<(String, usize)>,
}

impl Prepared {
    pub(crate) fn new(ds: &Dataset, emb: &Embeddings, opts: &TrainOpts) -> Result<Self> {
        let captions = ds.train_captions();
        let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q))?;
        let policy = TextPolicy::default();
        let mut removed_images = std::collections::BTreeSet::new();
        let mut kept = Vec::new();
        for pair in labels.pairs {
            if policy.matched(captions[&pair.query]).is_some() {
                removed_images.insert(pair.image.clone());
            } else {
                kept.push(pair);
            }
        }
        let removed = labels.report.labelled - kept.len();

        let (image_encoder, image_ids, images) = train_image_matrix(emb)?;
        let image_row: HashMap<&ImageId, usize> = image_ids.iter().enumerate().map(|(i, k)| (k, i)).collect();
        let text_ids: Vec<String> = emb.texts.keys().to_vec();
        let text_row: HashMap<&str, usize> = text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
        let texts = embed::rows(&emb.texts, &text_ids.iter().map(String::as_str).collect::<Vec<_>>())?;

        let split = ImageSplit::new(image_ids.iter().cloned(), opts.train_fraction, opts.seed)?;
        let mut train = PairSet::default();
        let mut validation = PairSet::default();
        let mut validation_pairs = Vec::new();
        let mut missing = 0;
        for pair in kept {
            let (Some(&i), Some(&t)) = (image_row.get(&pair.image), text_row.get(pair.query.to_string().as_str()))
            else {
                missing += 1;
                continue;
            };
            match split.side(&pair.image) {
                Some(imsearch_types::Split::Train) => {
                    train.pairs.push((i, t, pair.label.get()));
                    // A caption graded as describing another image is a positive for it too.
                    if pair.label.get() >= CONFIRMED && pair.query.source_image() != &pair.image {
                        train.positives.push((t, i));
                    }
                }
                Some(imsearch_types::Split::Validation) => {
                    validation.pairs.push((i, t, pair.label.get()));
                    validation_pairs.push(pair);
                }
                None => missing += 1,
            }
        }
        // Positives: each caption and the image it was written for, on that image's side.
        // Captions that name a child are left out here too.
        for (query, text) in &captions {
            if policy.matched(text).is_some() {
                continue;
            }
            let (Some(&i), Some(&t)) = (image_row.get(query.source_image()), text_row.get(query.to_string().as_str()))
            else {
                continue;
            };
            match split.side(query.source_image()) {
                Some(imsearch_types::Split::Train) => train.positives.push((t, i)),
                Some(imsearch_types::Split::Validation) => validation.positives.push((t, i)),
                None => {}
            }
        }
        train.candidates = split.train().iter().filter_map(|i| image_row.get(i).copied()).collect();
        validation.candidates = split.validation().iter().filter_map(|i| image_row.get(i).copied()).collect();
        let counts = DataCounts {
            labelled_pairs: labels.report.labelled,
            pairs_removed_by_compliance: removed,
            images_affected_by_compliance: removed_images.len(),
            pairs_without_embedding: missing,
            train_pairs: train.pairs.len(),
            validation_pairs: validation.pairs.len(),
            train_images: split.train().len(),
            validation_images: split.validation().len(),
            train_positives: train.positives.len(),
            validation_positives: validation.positives.len(),
        };
        let image_parts = emb.images.iter().map(|(id, train, _)| (id.clone(), train.dim())).collect();
        Ok(Prepared {
            image_encoder,
            images,
            text_ids,
            texts,
            train,
            validation,
            validation_pairs,
            counts,
            image_parts,
        })
    }

    /// The same pairs with the features of image encoder `part` alone (a member of the fusion
    /// ensemble), and the embedding options that name it (for its checkpoint).
    pub(crate) fn only(&self, part: usize, embed: &EmbedOpts) -> Result<(Prepared, EmbedOpts)> {
        let (offset, dim) = self.columns(part);
        let id = self.image_parts[part].0.clone();
        let p = Prepared {
            image_encoder: id.clone(),
            images: self.images.narrow(1, offset, dim)?.contiguous()?,
            text_ids: self.text_ids.clone(),
            texts: self.texts.clone(),
            train: self.train.clone(),
            validation: self.validation.clone(),
            validation_pairs: self.validation_pairs.clone(),
            counts: self.counts.clone(),
            image_parts: vec![(id, dim)],
        };
        let mut embed = embed.clone();
        embed.image_encoders = vec![embed.image_encoders[part].clone()];
        Ok((p, embed))
    }

    /// Where image encoder `part`'s columns start in `images`, and its width.
    pub(crate) fn columns(&self, part: usize) -> (usize, usize) {
        (self.image_parts[..part].iter().map(|p| p.1).sum(), self.image_parts[part].1)
    }

    pub(crate) fn print_counts(&self) {
        let c = &self.counts;
        println!(
            "pairs: {} labelled, {} removed by the compliance text policy (captions naming a child; \
             {} images affected), {} without an embedding; {} train / {} validation pairs over {} / {} images; \
             {} / {} caption-image positives",
            c.labelled_pairs,
            c.pairs_removed_by_compliance,
            c.images_affected_by_compliance,
            c.pairs_without_embedding,
            c.train_pairs,
            c.validation_pairs,
            c.train_images,
            c.validation_images,
            c.train_positives,
            c.validation_positives
        );
    }

    pub(crate) fn fusion_config(&self, opts: &TrainOpts) -> Result<FusionConfig> {
        Ok(FusionConfig {
            image_encoder: self.image_encoder.clone(),
            text_encoder: embed::TEXT_MODEL.to_owned(),
            image_dim: self.images.dims2()?.1,
            text_dim: self.texts.dims2()?.1,
            hidden_dim: opts.hidden_dim,
            shared_dim: if opts.locked_text { self.texts.dims2()?.1 } else { opts.shared_dim },
            locked_text: opts.locked_text,
        })
    }
}

/// The train images' features of every encoder, side by side: `(n, sum of dims)`.
pub(crate) fn train_image_matrix(emb: &Embeddings) -> Result<(String, Vec<ImageId>, Tensor)> {
    let Some((_, first, _)) = emb.images.first() else { bail!("no image encoder chosen") };
    let ids: Vec<ImageId> = first.keys().iter().map(|k| ImageId(k.clone())).collect();
    let keys: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
    let parts = emb.images.iter().map(|(_, train, _)| embed::rows(train, &keys)).collect::<Result<Vec<_>>>()?;
    let name = emb.images.iter().map(|(id, _, _)| id.as_str()).collect::<Vec<_>>().join("+");
    Ok((name, ids, Tensor::cat(&parts, 1)?))
}

/// The test images' features of every encoder, side by side, rows in `ids` order.
pub(crate) fn test_image_matrix(emb: &Embeddings, ids: &[&str]) -> Result<Tensor> {
    let parts = emb.images.iter().map(|(_, _, test)| embed::rows(test, ids)).collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&parts, 1)?)
}

pub(crate) fn train_config(opts: &TrainOpts) -> TrainConfig {
    TrainConfig {
        seed: opts.seed,
        max_epochs: opts.epochs,
        contrastive_weight: opts.contrastive_weight,
        learning_rate: opts.learning_rate,
        weight_decay: opts.weight_decay,
        temperature: opts.temperature,
        contrastive_batch: opts.contrastive_batch,
        input_dropout: opts.input_dropout,
        ..TrainConfig::default()
    }
}

/// Trains, prints each epoch, saves the checkpoint under the work directory.
pub(crate) fn train_and_save(
    p: &Prepared,
    embed: &EmbedOpts,
    opts: &TrainOpts,
) -> Result<(FusionModel, TrainReport, PathBuf)> {
    train_and_save_with(p, embed, opts, opts.seed)
}

/// [`train_and_save`] with the initial weights and batch order drawn from `init_seed` (the
/// split still comes from `opts.seed`): another member of a seed ensemble.
pub(crate) fn train_and_save_with(
    p: &Prepared,
    embed: &EmbedOpts,
    opts: &TrainOpts,
    init_seed: u64,
) -> Result<(FusionModel, TrainReport, PathBuf)> {
    let config = p.fusion_config(opts)?;
    let start = Instant::now();
    let bar = crate::progress::bar(opts.epochs as u64, "training", "epochs");
    let tc = TrainConfig { seed: init_seed, ..train_config(opts) };
    let (model, tensors, report) =
        imsearch_fusion::train(config, &tc, &p.images, &p.texts, &p.train, &p.validation, |e| {
            bar.inc(1);
            bar.suspend(|| {
                println!(
                    "epoch {:>2}: train loss {:.4}, validation bce {:.4}, validation MRR {:.3}",
                    e.epoch, e.train_loss, e.validation_bce, e.validation_mrr
                )
            })
        })?;
    bar.finish_and_clear();
    println!("trained in {:.1} s", start.elapsed().as_secs_f64());
    let dir = checkpoint_dir_with(embed, opts, init_seed);
    model.save(&tensors, &dir)?;
    std::fs::write(dir.join("train_report.json"), serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("failed to write {}", dir.join("train_report.json").display()))?;
    Ok((model, report, dir))
}

/// The checkpoint folder of one training configuration: the seed and a digest of every option
/// that changes the model, so a checkpoint is reused only for the same configuration.
pub(crate) fn checkpoint_dir(embed: &EmbedOpts, opts: &TrainOpts) -> PathBuf {
    checkpoint_dir_with(embed, opts, opts.seed)
}

/// [`checkpoint_dir`] of the model whose initial weights come from `init_seed`.
pub(crate) fn checkpoint_dir_with(embed: &EmbedOpts, opts: &TrainOpts, init_seed: u64) -> PathBuf {
    let dir = split_checkpoint_dir(embed, opts);
    if init_seed == opts.seed {
        return dir;
    }
    let name = dir.file_name().and_then(|n| n.to_str()).expect("a checkpoint folder name").to_owned();
    dir.with_file_name(format!("{name}-init{init_seed}"))
}

fn split_checkpoint_dir(embed: &EmbedOpts, opts: &TrainOpts) -> PathBuf {
    paths::resolve(&embed.workdir).join("checkpoints").join(format!(
        "fusion-seed{}-{}",
        opts.seed,
        options_digest(embed, opts)
    ))
}

/// A digest of every option that changes a model: the encoders, views, training options and
/// the compliance lexicon (which decides the pairs trained on).
pub(crate) fn options_digest(embed: &EmbedOpts, opts: &TrainOpts) -> String {
    let key = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        embed.image_encoders,
        embed.views,
        opts,
        TrainConfig::default(),
        imsearch_compliance::LEXICON,
        imsearch_compliance::PHRASES
    );
    let digest = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{digest:016x}")
}

/// The epoch early stopping chose for the split model of `init_seed` (its train report).
pub(crate) fn best_epoch(embed: &EmbedOpts, opts: &TrainOpts, init_seed: u64) -> Result<usize> {
    let path = checkpoint_dir_with(embed, opts, init_seed).join("train_report.json");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("failed to read {}", path.display()))?,
    )
    .with_context(|| format!("failed to parse {}", path.display()))?;
    Ok(report["best_epoch"].as_u64().with_context(|| format!("{} has no best_epoch", path.display()))? as usize)
}

/// Captions by query id, for callers that need texts.
pub(crate) fn caption_texts(ds: &Dataset) -> BTreeMap<QueryId, String> {
    ds.train_captions().into_iter().map(|(q, t)| (q, t.to_owned())).collect()
}

/// The configuration of `opts` retrained on every training image (both sides of the split) for
/// `epochs` epochs from `init_seed`; cached beside the split checkpoint. Returns the model and
/// its checkpoint folder.
pub(crate) fn load_or_train_all(
    p: &Prepared,
    embed: &EmbedOpts,
    opts: &TrainOpts,
    retrain: bool,
    init_seed: u64,
    epochs: usize,
) -> Result<(FusionModel, PathBuf)> {
    if epochs == 0 {
        bail!("a fusion model needs at least one epoch of training");
    }
    let split_dir = checkpoint_dir_with(embed, opts, init_seed);
    let name = split_dir.file_name().and_then(|n| n.to_str()).context("a checkpoint folder name")?;
    let dir = split_dir.with_file_name(format!("{name}-all-e{epochs}"));
    if !retrain {
        if let Ok(model) = FusionModel::load(&dir, &p.image_encoder, embed::TEXT_MODEL, &candle::Device::Cpu) {
            println!("reusing the all-images checkpoint in {}", dir.display());
            return Ok((model, dir));
        }
    }
    let mut all = p.train.clone();
    all.pairs.extend(&p.validation.pairs);
    all.positives.extend(&p.validation.positives);
    all.positives.extend(p.validation.pairs.iter().filter(|x| x.2 >= CONFIRMED).map(|&(i, t, _)| (t, i)));
    all.candidates.extend(&p.validation.candidates);
    let tc = TrainConfig { max_epochs: epochs, seed: init_seed, ..train_config(opts) };
    let start = Instant::now();
    let bar = crate::progress::bar(tc.max_epochs as u64, &format!("training {} on all", p.image_encoder), "epochs");
    let (model, tensors, _) =
        imsearch_fusion::train(p.fusion_config(opts)?, &tc, &p.images, &p.texts, &all, &PairSet::default(), |_| {
            bar.inc(1)
        })?;
    bar.finish_and_clear();
    println!(
        "retrained {} on all {} training images for {epochs} epochs in {:.1} s",
        p.image_encoder,
        p.images.dims2()?.0,
        start.elapsed().as_secs_f64()
    );
    model.save(&tensors, &dir)?;
    Ok((model, dir))
}
