//! The fusion models' checkpoints: one folder per training configuration (the seed and a digest
//! of every option that changes the model), trained when absent and reused otherwise.
//!
//! ```text
//! <dir>/fusion-seed<seed>-<digest>                 trained on the split, with train_report.json
//! <dir>/fusion-seed<seed>-<digest>-init<n>         the same, initial weights from seed n
//! <dir>/fusion-seed<seed>-<digest>[-init<n>]-all-e<epochs>   retrained on every training image
//! ```

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use candle::Device;
use imsearch_fusion::{FusionModel, PairSet, TrainConfig, TrainReport};
use serde::{Deserialize, Serialize};

use crate::{Error, Event, Result, TrainingData, CONFIRMED};

/// The `Debug` text of the fusion crate's `TrainConfig::default()` before it gained the options
/// of the dual-encoder recipe, as every checkpoint's digest reads it (a test checks it against
/// the defaults of today's fields).
const TRAIN_CONFIG_DEFAULTS: &str = "TrainConfig { seed: 0, max_epochs: 20, patience: 4, batch_size: 512, \
    contrastive_batch: 128, learning_rate: 0.001, weight_decay: 0.01, contrastive_weight: 4.0, temperature: 0.05, \
    input_dropout: 0.0 }";

/// How a fusion model is trained: the split, its shape and the optimiser's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// Seed of the split, the initial weights and the batch order.
    pub seed: u64,
    /// Share of the training images used for training; the rest validate.
    pub train_fraction: f64,
    /// Most epochs; training stops earlier when validation MRR stops improving.
    pub epochs: usize,
    /// Width of the shared space.
    pub shared_dim: usize,
    /// Width of each projection's hidden layer (0: linear projections).
    pub hidden_dim: usize,
    /// Weight of the contrastive term against the label cross-entropy.
    pub contrastive_weight: f64,
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Temperature of the contrastive softmax.
    pub temperature: f64,
    /// Distinct images (one caption each) per contrastive step.
    pub contrastive_batch: usize,
    /// Share of the input features zeroed in each training row.
    pub input_dropout: f64,
    /// Keep the text side in the text encoder's space (no text projection; `shared_dim` is
    /// ignored).
    pub locked_text: bool,
    /// Views of the training images whose features are drawn at random for each training row
    /// at each step (augmentation); empty: the averaged features the model scores with.
    pub train_views: Vec<String>,
    /// Contrastive batches of positive pairs with the multi-positive loss, labelled pairs drawn
    /// at random ([`TrainConfig::positive_batches`]).
    pub positive_batches: bool,
    /// Steps of linear learning-rate warm-up.
    pub warmup_steps: usize,
    /// Epochs of cosine learning-rate decay after warm-up (0: constant; otherwise every epoch
    /// runs and the best on validation is kept).
    pub cosine_epochs: usize,
    /// With `positive_batches`: labelled training pairs at least this good are contrastive
    /// positives too ([`TrainConfig::positive_label`]).
    pub positive_label: Option<f32>,
    /// Weight of the pairs labelled 0 in the label cross-entropy ([`TrainConfig::negative_weight`]).
    pub negative_weight: f64,
    /// Each training image's most probable ImageNet class sentence is one more contrastive
    /// positive ([`TrainingData::class_positives`], which must then be filled).
    pub class_positives: bool,
}

impl Default for TrainOptions {
    /// The best settings on the validation split (a contrastive weight of 4 beat 0 and 1).
    fn default() -> Self {
        let tc = TrainConfig::default();
        TrainOptions {
            seed: 0,
            train_fraction: 0.7,
            epochs: 20,
            shared_dim: 256,
            hidden_dim: 512,
            contrastive_weight: 4.0,
            learning_rate: 1e-3,
            weight_decay: tc.weight_decay,
            temperature: tc.temperature,
            contrastive_batch: tc.contrastive_batch,
            input_dropout: tc.input_dropout,
            locked_text: false,
            train_views: Vec::new(),
            positive_batches: tc.positive_batches,
            warmup_steps: tc.warmup_steps,
            cosine_epochs: tc.cosine_epochs,
            positive_label: tc.positive_label,
            negative_weight: tc.negative_weight,
            class_positives: false,
        }
    }
}

impl TrainOptions {
    /// The fusion crate's training configuration of these options.
    pub fn train_config(&self) -> TrainConfig {
        TrainConfig {
            seed: self.seed,
            max_epochs: self.epochs,
            contrastive_weight: self.contrastive_weight,
            learning_rate: self.learning_rate,
            weight_decay: self.weight_decay,
            temperature: self.temperature,
            contrastive_batch: self.contrastive_batch,
            input_dropout: self.input_dropout,
            positive_batches: self.positive_batches,
            warmup_steps: self.warmup_steps,
            cosine_epochs: self.cosine_epochs,
            positive_label: self.positive_label,
            negative_weight: self.negative_weight,
            ..TrainConfig::default()
        }
    }

    /// The small-data dual-encoder recipe (issue 16): linear projections into 256-d with
    /// dropout 0.5 on the standardised inputs, views as augmentation, batches of 128 positive
    /// pairs (each caption with its own image and every training pair labelled 0.5 or more)
    /// under a multi-positive InfoNCE at temperature 0.05 plus the soft-label cross-entropy of
    /// 512 random labelled pairs (weight 1 each), AdamW at 1e-3 with weight decay 0.01, 50
    /// warm-up steps then cosine decay over 30 epochs, the epoch chosen on validation.
    pub fn dual_encoder(seed: u64, train_views: Vec<String>) -> TrainOptions {
        TrainOptions {
            seed,
            epochs: 30,
            shared_dim: 256,
            hidden_dim: 0,
            contrastive_weight: 1.0,
            learning_rate: 1e-3,
            weight_decay: 0.01,
            temperature: 0.05,
            contrastive_batch: 128,
            input_dropout: 0.5,
            locked_text: false,
            train_views,
            positive_batches: true,
            warmup_steps: 50,
            cosine_epochs: 30,
            positive_label: Some(0.5),
            ..TrainOptions::default()
        }
    }

    /// The options as the checkpoint digest reads them: the `Debug` text of the command-line
    /// struct the folders were first named after (`TrainOpts`). Every saved checkpoint and
    /// engine is found by it, so it must not change by one character (a test pins it). Options
    /// added since are appended when they differ from their defaults.
    fn digest_key(&self) -> String {
        let d = TrainOptions::default();
        let added = if (&self.train_views, self.positive_batches, self.warmup_steps, self.cosine_epochs)
            == (&d.train_views, d.positive_batches, d.warmup_steps, d.cosine_epochs)
        {
            String::new()
        } else {
            format!(
                " + train_views: {:?}, positive_batches: {:?}, warmup_steps: {:?}, cosine_epochs: {:?}",
                self.train_views, self.positive_batches, self.warmup_steps, self.cosine_epochs
            )
        };
        let legacy = format!(
            "TrainOpts {{ seed: {:?}, train_fraction: {:?}, epochs: {:?}, shared_dim: {:?}, hidden_dim: {:?}, \
             contrastive_weight: {:?}, learning_rate: {:?}, weight_decay: {:?}, temperature: {:?}, \
             contrastive_batch: {:?}, input_dropout: {:?}, locked_text: {:?} }}",
            self.seed,
            self.train_fraction,
            self.epochs,
            self.shared_dim,
            self.hidden_dim,
            self.contrastive_weight,
            self.learning_rate,
            self.weight_decay,
            self.temperature,
            self.contrastive_batch,
            self.input_dropout,
            self.locked_text
        );
        let label = self.positive_label.map(|l| format!(" + positive_label: {l:?}")).unwrap_or_default();
        let negatives = if self.negative_weight == 1.0 {
            String::new()
        } else {
            format!(" + negative_weight: {:?}", self.negative_weight)
        };
        let classes = if self.class_positives { " + class_positives" } else { "" };
        legacy + &added + &label + &negatives + classes
    }
}

/// The checkpoints of one configuration: where they live, how they are named, and training or
/// reusing them.
#[derive(Debug, Clone)]
pub struct Checkpoints {
    /// The folder that holds every checkpoint folder.
    pub dir: PathBuf,
    /// The image encoders (as chosen, without views) whose features the model reads.
    pub image_encoders: Vec<String>,
    /// The views each encoder's features are averaged over.
    pub views: Vec<String>,
    pub options: TrainOptions,
    /// Train again even when a checkpoint exists.
    pub retrain: bool,
}

impl Checkpoints {
    /// A digest of every option that changes a model: the encoders, views, training options
    /// and the compliance lexicon (which decides the pairs trained on). FNV-1a, 16 hex digits.
    pub fn digest(&self) -> String {
        let key = format!(
            "{:?}|{:?}|{}|{}|{:?}|{:?}",
            self.image_encoders,
            self.views,
            self.options.digest_key(),
            TRAIN_CONFIG_DEFAULTS,
            imsearch_compliance::LEXICON,
            imsearch_compliance::PHRASES
        );
        let digest =
            key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{digest:016x}")
    }

    /// The same configuration on image encoder `part` alone (a member of the fusion ensemble).
    pub fn only(&self, part: usize) -> Result<Checkpoints> {
        let encoders = self.image_encoders.len();
        let one = self.image_encoders.get(part).ok_or(Error::NoSuchPart { part, encoders })?;
        Ok(Checkpoints { image_encoders: vec![one.clone()], ..self.clone() })
    }

    /// The dual-encoder recipe ([`TrainOptions::dual_encoder`]) on these encoders, split and
    /// views, with or without the class sentences as positives.
    pub fn dual(&self, views: Vec<String>, class_positives: bool) -> Checkpoints {
        let options = TrainOptions {
            train_fraction: self.options.train_fraction,
            class_positives,
            ..TrainOptions::dual_encoder(self.options.seed, views)
        };
        Checkpoints { options, ..self.clone() }
    }

    /// The same configuration on another split (and initial weights) of the training images.
    pub fn with_seed(&self, seed: u64) -> Checkpoints {
        let mut other = self.clone();
        other.options.seed = seed;
        other
    }

    /// The folder of the model trained on the split.
    pub fn split_dir(&self) -> PathBuf {
        self.split_dir_with(self.options.seed)
    }

    /// [`Checkpoints::split_dir`] of the model whose initial weights and batch order come from
    /// `init_seed` (the split still comes from the options' seed).
    pub fn split_dir_with(&self, init_seed: u64) -> PathBuf {
        let name = format!("fusion-seed{}-{}", self.options.seed, self.digest());
        if init_seed == self.options.seed {
            self.dir.join(name)
        } else {
            self.dir.join(format!("{name}-init{init_seed}"))
        }
    }

    /// The folder of the model of `init_seed` retrained on every training image for `epochs`.
    pub fn all_dir(&self, init_seed: u64, epochs: usize) -> PathBuf {
        let split = self.split_dir_with(init_seed);
        let name = split.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        split.with_file_name(format!("{name}-all-e{epochs}"))
    }

    /// The epoch early stopping chose for the split model of `init_seed` (its train report).
    pub fn best_epoch(&self, init_seed: u64) -> Result<usize> {
        let path = self.split_dir_with(init_seed).join("train_report.json");
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read { path: path.clone(), source })?;
        let report: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Parse { path: path.clone(), source })?;
        let epoch = report["best_epoch"].as_u64().ok_or(Error::NoBestEpoch { path })?;
        Ok(epoch as usize)
    }

    /// Trains on the split with the initial weights and batch order of `init_seed`, early
    /// stopping on validation, and saves the model and its `train_report.json` in
    /// [`Checkpoints::split_dir_with`]. Returns the model, the report and the folder.
    pub fn train(
        &self,
        data: &TrainingData,
        init_seed: u64,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(FusionModel, TrainReport, PathBuf)> {
        let config = data.fusion_config(&self.options)?;
        let tc = TrainConfig { seed: init_seed, ..self.options.train_config() };
        let (model, dir) = (&data.image_encoder, self.split_dir_with(init_seed));
        let views = data.views(&self.options.train_views)?;
        let train = self.add_class_positives(data, data.train.clone())?;
        on_event(Event::Training { model, epochs: tc.max_epochs, all_images: false });
        let start = Instant::now();
        let (model, tensors, report) = imsearch_fusion::train_with_views(
            config,
            &tc,
            &data.images,
            &views,
            &data.texts,
            &train,
            &data.validation,
            |e| on_event(Event::Epoch { report: e, all_images: false }),
        )?;
        on_event(Event::Trained {
            model: &data.image_encoder,
            all_images: false,
            images: data.train.candidates.len(),
            epochs: report.epochs.len(),
            seconds: start.elapsed().as_secs_f64(),
            dir: &dir,
        });
        model.save(&tensors, &dir)?;
        let path = dir.join("train_report.json");
        let json = serde_json::to_string_pretty(&report).expect("a train report serialises");
        imsearch_fsio::write_bytes_atomic(&path, json.as_bytes()).map_err(|source| Error::Write { path, source })?;
        Ok((model, report, dir))
    }

    /// The split model: its checkpoint unless it is absent, unusable or `retrain` is set, else
    /// trained ([`Checkpoints::train`] from the options' seed).
    pub fn load_or_train(&self, data: &TrainingData, on_event: &mut dyn FnMut(Event<'_>)) -> Result<FusionModel> {
        let dir = self.split_dir();
        match self.load(data, &dir) {
            Some(model) => {
                on_event(Event::Reused { dir: &dir, all_images: false });
                Ok(model)
            }
            None => Ok(self.train(data, self.options.seed, on_event)?.0),
        }
    }

    /// The configuration retrained on every training image (both sides of the split, the
    /// validation side's confirmed pairs as positives too) for `epochs` epochs from
    /// `init_seed`, or its checkpoint when one is saved and `retrain` is not set. Returns the
    /// model and its folder ([`Checkpoints::all_dir`]).
    pub fn load_or_train_all(
        &self,
        data: &TrainingData,
        init_seed: u64,
        epochs: usize,
        on_event: &mut dyn FnMut(Event<'_>),
    ) -> Result<(FusionModel, PathBuf)> {
        if epochs == 0 {
            return Err(Error::NoEpochs);
        }
        let dir = self.all_dir(init_seed, epochs);
        if let Some(model) = self.load(data, &dir) {
            on_event(Event::Reused { dir: &dir, all_images: true });
            return Ok((model, dir));
        }
        let mut all = data.train.clone();
        all.pairs.extend(&data.validation.pairs);
        all.positives.extend(&data.validation.positives);
        all.positives.extend(data.validation.pairs.iter().filter(|x| x.2 >= CONFIRMED).map(|&(i, t, _)| (t, i)));
        all.candidates.extend(&data.validation.candidates);
        let all = self.add_class_positives(data, all)?;
        let tc = TrainConfig { max_epochs: epochs, seed: init_seed, ..self.options.train_config() };
        let model = &data.image_encoder;
        on_event(Event::Training { model, epochs, all_images: true });
        let start = Instant::now();
        let config = data.fusion_config(&self.options)?;
        let views = data.views(&self.options.train_views)?;
        let (model, tensors, _) = imsearch_fusion::train_with_views(
            config,
            &tc,
            &data.images,
            &views,
            &data.texts,
            &all,
            &PairSet::default(),
            |e| on_event(Event::Epoch { report: e, all_images: true }),
        )?;
        on_event(Event::Trained {
            model: &data.image_encoder,
            all_images: true,
            images: data.images.dims2()?.0,
            epochs,
            seconds: start.elapsed().as_secs_f64(),
            dir: &dir,
        });
        model.save(&tensors, &dir)?;
        Ok((model, dir))
    }

    /// `set` with, when the options ask for them, the class positives of its candidate images.
    fn add_class_positives(&self, data: &TrainingData, mut set: PairSet) -> Result<PairSet> {
        if !self.options.class_positives {
            return Ok(set);
        }
        if data.class_positives.is_empty() {
            return Err(Error::NoClassPositives);
        }
        let candidates: std::collections::HashSet<usize> = set.candidates.iter().copied().collect();
        set.positives.extend(data.class_positives.iter().filter(|(_, i)| candidates.contains(i)));
        Ok(set)
    }

    /// Whether the split model has a checkpoint that loads for this data (`retrain` aside).
    pub fn has_split(&self, data: &TrainingData) -> bool {
        self.load_from(data, &self.split_dir()).is_some()
    }

    /// Whether the model of `init_seed` retrained on every training image for `epochs` has a
    /// checkpoint that loads for this data (`retrain` aside).
    pub fn has_all(&self, data: &TrainingData, init_seed: u64, epochs: usize) -> bool {
        self.load_from(data, &self.all_dir(init_seed, epochs)).is_some()
    }

    fn load_from(&self, data: &TrainingData, dir: &Path) -> Option<FusionModel> {
        FusionModel::load(dir, &data.image_encoder, &data.text_encoder, &Device::Cpu).ok()
    }

    /// The checkpoint in `dir` for this data, unless `retrain` is set.
    fn load(&self, data: &TrainingData, dir: &Path) -> Option<FusionModel> {
        if self.retrain {
            return None;
        }
        self.load_from(data, dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 3] = ["mobilenet-v2", "efficientnet-lite0", "efficientnet-lite2"];

    fn checkpoints(encoders: &[&str], seed: u64) -> Checkpoints {
        Checkpoints {
            dir: PathBuf::from("work/checkpoints"),
            image_encoders: encoders.iter().map(|e| (*e).to_owned()).collect(),
            views: vec!["center".into(), "center-flipped".into()],
            options: TrainOptions { seed, ..TrainOptions::default() },
            retrain: false,
        }
    }

    #[track_caller]
    fn check(encoders: &[&str], seed: u64, expected: &str) {
        assert_eq!(checkpoints(encoders, seed).digest(), expected);
    }

    /// The digests of the default options' folders: a change here orphans every checkpoint and
    /// engine (`<workdir>/engine-seed0-be8dba148ac3531d`). They changed last when the text
    /// policy's phrases went (2026-12-02; before: `3cd3fdf8822ab4e4` for seed 0).
    #[test]
    fn digests_of_the_default_options_are_pinned() {
        check(&ALL, 0, "be8dba148ac3531d");
        check(&ALL, 1, "759c6f4f6c91988a");
        check(&ALL, 2, "590e6b4803efd043");
        check(&["mobilenet-v2"], 0, "10e55765ca7915fb");
        check(&["efficientnet-lite0"], 0, "d3c4e17168e91a6a");
        check(&["efficientnet-lite2"], 0, "79e51a436c97f08c");
    }

    #[test]
    fn digest_key_is_the_old_options_debug_text() {
        assert_eq!(
            TrainOptions::default().digest_key(),
            "TrainOpts { seed: 0, train_fraction: 0.7, epochs: 20, shared_dim: 256, hidden_dim: 512, \
             contrastive_weight: 4.0, learning_rate: 0.001, weight_decay: 0.01, temperature: 0.05, \
             contrastive_batch: 128, input_dropout: 0.0, locked_text: false }"
        );
        let other = TrainOptions { learning_rate: 2e-3, ..TrainOptions::default() };
        assert_ne!(checkpoints(&ALL, 0).digest(), Checkpoints { options: other, ..checkpoints(&ALL, 0) }.digest());
    }

    /// The pinned text is what `TrainConfig::default()` printed before its new fields, and the
    /// new fields' defaults leave the fusion crate's training as it was.
    #[test]
    fn legacy_train_config_text_matches_the_defaults() {
        let d = TrainConfig::default();
        let now = format!("{d:?}");
        let old_fields = now.split(", positive_batches").next().unwrap().to_owned() + " }";
        assert_eq!(old_fields, TRAIN_CONFIG_DEFAULTS);
        assert_eq!((d.positive_batches, d.warmup_steps, d.cosine_epochs), (false, 0, 0));
        // The recipe's options are a different checkpoint.
        let dual = TrainOptions::dual_encoder(0, vec!["center".into()]);
        assert!(dual.digest_key().contains("train_views: [\"center\"]"), "{}", dual.digest_key());
        assert!(dual.digest_key().ends_with(" + positive_label: 0.5"), "{}", dual.digest_key());
        let weighted = TrainOptions { negative_weight: 3.0, ..dual.clone() };
        assert_eq!(weighted.digest_key(), dual.digest_key() + " + negative_weight: 3.0");
        let classes = TrainOptions { class_positives: true, ..weighted.clone() };
        assert_eq!(classes.digest_key(), weighted.digest_key() + " + class_positives");
        let ck = checkpoints(&ALL, 0);
        assert_ne!(Checkpoints { options: dual, ..ck.clone() }.digest(), ck.digest());
    }

    #[test]
    fn folder_names() {
        let ck = checkpoints(&ALL, 0);
        let split = PathBuf::from("work/checkpoints/fusion-seed0-be8dba148ac3531d");
        assert_eq!(ck.split_dir(), split);
        assert_eq!(ck.split_dir_with(0), split);
        assert_eq!(ck.split_dir_with(5), split.with_file_name("fusion-seed0-be8dba148ac3531d-init5"));
        assert_eq!(ck.all_dir(0, 7), split.with_file_name("fusion-seed0-be8dba148ac3531d-all-e7"));
        assert_eq!(ck.all_dir(5, 2), split.with_file_name("fusion-seed0-be8dba148ac3531d-init5-all-e2"));
        assert_eq!(ck.only(0).unwrap().split_dir(), split.with_file_name("fusion-seed0-10e55765ca7915fb"));
        assert!(matches!(ck.only(3), Err(Error::NoSuchPart { part: 3, encoders: 3 })));
    }
}
