//! `cargo xtask train`: the fusion model trained on the aggregated labels, split by image, after
//! the compliance filter, with early stopping on the validation split (imsearch-train); and
//! the flags every job that trains or loads the fusion model reads, as its configs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use imsearch_data::Dataset;
use imsearch_engine::ClassTexts;
use imsearch_train::{Checkpoints, Event, ImageEmbeddings, TrainOptions, TrainingData};
use indicatif::ProgressBar;

use crate::{
    embed::{self, EmbedOpts, Embeddings},
    models::ModelsArg,
    paths,
};

#[derive(clap::Args, Debug, Clone)]
pub(crate) struct TrainOpts {
    /// Seed of the split, the initial weights and the batch order.
    #[arg(long, default_value_t = TrainOptions::default().seed)]
    pub(crate) seed: u64,
    /// Share of the training images used for training; the rest validate.
    #[arg(long, default_value_t = TrainOptions::default().train_fraction)]
    pub(crate) train_fraction: f64,
    /// Most epochs; training stops earlier when validation MRR stops improving.
    #[arg(long, default_value_t = TrainOptions::default().epochs)]
    pub(crate) epochs: usize,
    /// Width of the shared space.
    #[arg(long, default_value_t = TrainOptions::default().shared_dim)]
    pub(crate) shared_dim: usize,
    /// Width of each projection's hidden layer (0: linear projections).
    #[arg(long, default_value_t = TrainOptions::default().hidden_dim)]
    pub(crate) hidden_dim: usize,
    /// Weight of the contrastive term against the label cross-entropy (4 was best on validation
    /// among 0, 1 and 4).
    #[arg(long, default_value_t = TrainOptions::default().contrastive_weight)]
    pub(crate) contrastive_weight: f64,
    #[arg(long, default_value_t = TrainOptions::default().learning_rate)]
    pub(crate) learning_rate: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = TrainOptions::default().weight_decay)]
    pub(crate) weight_decay: f64,
    /// Temperature of the contrastive softmax.
    #[arg(long, default_value_t = TrainOptions::default().temperature)]
    pub(crate) temperature: f64,
    /// Distinct images (one caption each) per contrastive step.
    #[arg(long, default_value_t = TrainOptions::default().contrastive_batch)]
    pub(crate) contrastive_batch: usize,
    /// Share of the input features zeroed in each training row.
    #[arg(long, default_value_t = TrainOptions::default().input_dropout)]
    pub(crate) input_dropout: f64,
    /// Keep the text side in MiniLM's space (no text projection; the shared space is 384-d and
    /// --shared-dim is ignored).
    #[arg(long)]
    pub(crate) locked_text: bool,
    /// The training recipe. `dual-encoder`: linear projections with input dropout 0.5, the
    /// single views of --train-views as augmentation, batches of positive pairs under a
    /// multi-positive contrastive loss, warm-up then cosine decay over 30 epochs (issue 16);
    /// it sets every training flag above but --seed and --train-fraction.
    #[arg(long, value_enum, default_value_t = Recipe::Fusion)]
    pub(crate) recipe: Recipe,
}

/// How `cargo xtask train` trains (`--recipe`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recipe {
    /// The flags above, as given.
    Fusion,
    /// The small-data dual-encoder recipe.
    DualEncoder,
}

impl TrainOpts {
    pub(crate) fn options(&self) -> TrainOptions {
        if self.recipe == Recipe::DualEncoder {
            return TrainOptions {
                train_fraction: self.train_fraction,
                ..TrainOptions::dual_encoder(self.seed, Vec::new())
            };
        }
        TrainOptions {
            seed: self.seed,
            train_fraction: self.train_fraction,
            epochs: self.epochs,
            shared_dim: self.shared_dim,
            hidden_dim: self.hidden_dim,
            contrastive_weight: self.contrastive_weight,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            contrastive_batch: self.contrastive_batch,
            input_dropout: self.input_dropout,
            locked_text: self.locked_text,
            ..TrainOptions::default()
        }
    }
}

/// The dataset, the model cache and the embedding and training options: what every job that
/// trains or loads the fusion model reads. Flatten into its arguments.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct Pipeline {
    /// The dataset directory (default: ../shared/data/dsplus_integrated_project_4 next to the checkout).
    #[arg(long, value_name = "DIR", env = imsearch_data::DATA_ENV, value_parser = crate::paths::dir_arg)]
    pub(crate) data: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) models: ModelsArg,
    #[command(flatten)]
    pub(crate) embed: EmbedOpts,
    #[command(flatten)]
    pub(crate) train: TrainOpts,
}

impl Pipeline {
    /// The fusion checkpoints of these options, under `<workdir>/checkpoints`.
    pub(crate) fn checkpoints(&self, retrain: bool) -> Checkpoints {
        Checkpoints {
            dir: self.embed.workdir().join("checkpoints"),
            image_encoders: self.embed.image_encoders.clone(),
            views: self.embed.views.clone(),
            options: self.options(),
            retrain,
        }
    }

    /// The training options: the flags, with the views of `--train-views` for the dual-encoder
    /// recipe.
    pub(crate) fn options(&self) -> TrainOptions {
        let mut options = self.train.options();
        if self.train.recipe == Recipe::DualEncoder {
            options.train_views = self.embed.train_view_names();
        }
        options
    }

    pub(crate) fn dataset(&self) -> Result<Dataset> {
        let data = paths::data_dir(self.data.as_deref())?;
        Dataset::load(&data, Default::default())
            .with_context(|| format!("failed to load the dataset at {}", data.display()))
    }
}

/// `cargo xtask train`: the pipeline, and whether the class sentences are positives too.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) pipeline: Pipeline,
    /// Each training image's most probable ImageNet class sentence (by the image encoders' own
    /// classifiers) as one more contrastive positive, as the engine's dual-encoder members
    /// train (issue 16; docs/results.md).
    #[arg(long)]
    pub(crate) class_positives: bool,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let pipeline = &args.pipeline;
    let ds = pipeline.dataset()?;
    let emb = embed::embed_all(&ds, &pipeline.models.store()?, &pipeline.embed)?;
    let mut data = prepare(&ds, &emb, &pipeline.train)?;
    let mut checkpoints = pipeline.checkpoints(false);
    if args.class_positives {
        data = data.with_class_positives(&caches(&emb), &crate::engine::heads(pipeline)?)?;
        checkpoints.options.class_positives = true;
    }
    println!("{}", data.counts);
    let (_, report, dir) = checkpoints.train(&data, pipeline.train.seed, &mut printer())?;
    println!(
        "best epoch {} of {}, validation MRR {:.3}; checkpoint in {}",
        report.best_epoch,
        report.epochs.len(),
        report.best_validation_mrr,
        dir.display()
    );
    Ok(())
}

/// The embedding caches as imsearch-train reads them.
pub(crate) fn caches(emb: &Embeddings) -> imsearch_train::Embeddings<'_> {
    imsearch_train::Embeddings {
        images: emb
            .images
            .iter()
            .zip(&emb.train_views)
            .map(|((id, train, test), train_views)| ImageEmbeddings { id, train, test, train_views })
            .collect(),
        texts: &emb.texts,
        class_key: |texts, i| match texts {
            ClassTexts::Names => embed::imagenet_key(i),
            ClassTexts::Sentences => embed::imagenet_prompt_key(i),
        },
    }
}

/// The pairs of the dataset as rows of the embeddings, split with `opts`' seed and fraction.
pub(crate) fn prepare(ds: &Dataset, emb: &Embeddings, opts: &TrainOpts) -> Result<TrainingData> {
    Ok(TrainingData::new(ds, &caches(emb), &opts.options())?)
}

/// The test images' features of every encoder side by side, rows in `ids` order.
pub(crate) fn test_image_matrix(emb: &Embeddings, ids: &[&str]) -> Result<candle::Tensor> {
    Ok(caches(emb).test_image_matrix(ids)?)
}

/// Prints imsearch-train's events as they come, with a progress bar over each training's
/// epochs, or over the models of trainings run side by side.
pub(crate) fn printer() -> impl FnMut(Event<'_>) {
    let mut bar: Option<ProgressBar> = None;
    let mut side_by_side: Option<ProgressBar> = None;
    move |event| match event {
        Event::TrainingSideBySide { models, .. } => {
            println!("{event}");
            side_by_side = Some(crate::progress::bar(models as u64, "training side by side", "models"));
        }
        Event::Trained { .. } if side_by_side.is_some() => {
            if let Some(many) = &side_by_side {
                many.inc(1);
                many.suspend(|| println!("{event}"));
                if many.length().is_some_and(|n| many.position() >= n) {
                    many.finish_and_clear();
                    side_by_side = None;
                }
            }
        }
        Event::Training { model, epochs, all_images } => {
            let label = if all_images { format!("training {model} on all") } else { "training".to_owned() };
            bar = Some(crate::progress::bar(epochs as u64, &label, "epochs"));
        }
        Event::Epoch { all_images, .. } => {
            if let Some(bar) = &bar {
                bar.inc(1);
                if !all_images {
                    bar.suspend(|| println!("{event}"));
                }
            }
        }
        Event::Trained { .. } => {
            bar.take().inspect(ProgressBar::finish_and_clear);
            println!("{event}");
        }
        _ => println!("{event}"),
    }
}
