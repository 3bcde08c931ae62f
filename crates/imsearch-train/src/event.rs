//! What training and evaluation report while they work. Each event displays as the line a
//! command prints for it; drawing progress is the caller's.

use std::{fmt, path::Path};

use imsearch_engine::{ClassTexts, Neighbourhood, Recipe};
use imsearch_fusion::EpochReport;

use crate::DataCounts;

#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum Event<'a> {
    /// The training data is ready (the first split's, in an evaluation).
    Data {
        counts: &'a DataCounts,
    },
    /// Each of `images` images has its most probable ImageNet class sentence as a positive of
    /// the members trained with them; `classes` distinct classes among them.
    ClassPositives {
        images: usize,
        classes: usize,
    },
    /// A fusion model on the features `model` starts training for at most `epochs` epochs, on
    /// the split or (`all_images`) on every training image.
    Training {
        model: &'a str,
        epochs: usize,
        all_images: bool,
    },
    /// An epoch of that training is done (its validation figures mean nothing with
    /// `all_images`).
    Epoch {
        report: &'a EpochReport,
        all_images: bool,
    },
    /// The training is done; the model is saved in `dir` next.
    Trained {
        model: &'a str,
        all_images: bool,
        images: usize,
        epochs: usize,
        seconds: f64,
        dir: &'a Path,
    },
    /// Several models about to be trained side by side, `workers` at a time; each one's end
    /// follows as [`Event::Trained`] (no [`Event::Training`] or [`Event::Epoch`]).
    TrainingSideBySide {
        models: usize,
        workers: usize,
    },
    /// A saved checkpoint was loaded instead of training.
    Reused {
        dir: &'a Path,
        all_images: bool,
    },
    /// A baseline of the evaluation was trained (`what`: "the concatenation regressor").
    Baseline {
        what: &'a str,
        seconds: f64,
    },
    /// The evaluation prepares its validation split `number` of `of` (seed `seed`).
    ValidationSplit {
        number: u64,
        of: u32,
        seed: u64,
    },
    /// A setting of the class bridge and its validation MRR over `captions` captions of
    /// `splits` splits.
    BridgeTried {
        class_texts: ClassTexts,
        temperature: f64,
        mrr: f64,
        captions: usize,
        splits: usize,
    },
    BridgeChosen {
        class_texts: ClassTexts,
        temperature: f64,
    },
    /// A neighbourhood with the ensemble weights chosen for it and their pooled validation MRR.
    NeighboursTried {
        hood: Neighbourhood,
        weights: [f32; 3],
        mrr: f64,
    },
    /// The ensemble's weights kept instead of the best ones: they weigh more of the parts and
    /// are within one paired standard error of the best pooled validation MRR.
    WeightsKept {
        weights: [f32; 3],
        mrr: f64,
        best_weights: [f32; 3],
        best: f64,
        standard_error: f64,
    },
    /// One choice of fusion members for the ensemble (by training recipe), with its best
    /// neighbourhood and weights: the pooled validation MRR.
    MembersTried {
        which: &'a str,
        members: usize,
        mrr: f64,
    },
    /// The fusion members kept: the most members whose pooled validation MRR is within one
    /// paired standard error of the best choice's.
    MembersChosen {
        which: &'a str,
        members: usize,
        mrr: f64,
        best: f64,
        standard_error: f64,
    },
    /// The ensemble's choice: its weights, its neighbourhood, the pooled validation MRR and
    /// the MRR on the first split alone.
    EnsembleChosen {
        weights: [f32; 3],
        hood: Neighbourhood,
        pooled: f64,
        captions: usize,
        splits: usize,
        first: f64,
    },
    /// The recipe chosen on validation is not [`Recipe::default`].
    RecipeDiffers {
        recipe: &'a Recipe,
    },
    /// The probability of a match was fitted on the validation pairs.
    Calibrated {
        report: &'a crate::select::CalibrationReport,
    },
    /// The engine was built and saved in `dir`.
    EngineBuilt {
        seconds: f64,
        dir: &'a Path,
    },
    /// `best` beats the engine's ensemble on validation.
    EngineNotBest {
        best: &'a str,
    },
}

impl fmt::Display for Event<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Event::Data { counts } => write!(f, "{counts}"),
            Event::ClassPositives { images, classes } => write!(
                f,
                "class positives: each of {images} images with its most probable ImageNet class sentence \
                 ({classes} distinct classes), for the dual-encoder members"
            ),
            Event::Training { model, epochs, all_images: false } => {
                write!(f, "training {model} for at most {epochs} epochs")
            }
            Event::Training { model, epochs, all_images: true } => {
                write!(f, "training {model} on all training images for {epochs} epochs")
            }
            Event::Epoch { report: e, .. } => write!(
                f,
                "epoch {:>2}: train loss {:.4}, validation bce {:.4}, validation MRR {:.3}",
                e.epoch, e.train_loss, e.validation_bce, e.validation_mrr
            ),
            Event::TrainingSideBySide { models, workers } => {
                write!(f, "training {models} models, {workers} at a time")
            }
            Event::Trained { model, all_images: false, epochs, seconds, .. } => {
                write!(f, "trained {model} ({epochs} epochs) in {seconds:.1} s")
            }
            Event::Trained { model, all_images: true, images, epochs, seconds, .. } => {
                write!(f, "retrained {model} on all {images} training images for {epochs} epochs in {seconds:.1} s")
            }
            Event::Reused { dir, all_images: false } => write!(f, "reusing the checkpoint in {}", dir.display()),
            Event::Reused { dir, all_images: true } => {
                write!(f, "reusing the all-images checkpoint in {}", dir.display())
            }
            Event::Baseline { what, seconds } => write!(f, "trained {what} in {seconds:.1} s"),
            Event::ValidationSplit { number, of, seed } => write!(f, "validation split {number} of {of} (seed {seed})"),
            Event::BridgeTried { class_texts, temperature, mrr, captions, splits } => write!(
                f,
                "class bridge with class {class_texts:?}, temperature {temperature}: validation MRR {mrr:.3} \
                 ({captions} captions of {splits} splits)"
            ),
            Event::BridgeChosen { class_texts, temperature } => {
                write!(f, "class bridge: class {class_texts:?}, temperature {temperature} (chosen on validation)")
            }
            Event::NeighboursTried { hood, weights: w, mrr } => write!(
                f,
                "caption neighbours: {} at temperature {}: ensemble weights {:.2} / {:.2} / {:.2}, \
                 validation MRR {mrr:.3}",
                hood.k, hood.temperature, w[0], w[1], w[2]
            ),
            Event::WeightsKept { weights: w, mrr, best_weights: b, best, standard_error } => write!(
                f,
                "kept ensemble weights {:.2} / {:.2} / {:.2} (validation MRR {mrr:.3}) over the best, \
                 {:.2} / {:.2} / {:.2} ({best:.3}): more parts within one paired standard error \
                 ({standard_error:.3})",
                w[0], w[1], w[2], b[0], b[1], b[2]
            ),
            Event::MembersTried { which, members, mrr } => {
                write!(f, "fusion members of the {which} ({members} models): ensemble validation MRR {mrr:.3}")
            }
            Event::MembersChosen { which, members, mrr, best, standard_error } => write!(
                f,
                "kept the fusion members of the {which} ({members} models, validation MRR {mrr:.3}; the best is \
                 {best:.3}, one paired standard error {standard_error:.3})"
            ),
            Event::EnsembleChosen { weights: w, hood, pooled, captions, splits, first } => write!(
                f,
                "ensemble: fusion models 1.00, caption neighbours {:.2} ({} at temperature {}), class bridge {:.2} \
                 (both bank-normalised; validation MRR {pooled:.3} over {captions} captions of {splits} splits, \
                 {first:.3} on the first)",
                w[1], hood.k, hood.temperature, w[2]
            ),
            Event::Calibrated { report } => write!(
                f,
                "match probability fitted on {} validation pairs: expected calibration error over deciles {:.3} \
                 (held-out splits {:.3}; largest decile gap {:.3}), was {:.3} for the fusion model's own probability \
                 and {:.3} for the ranking score search showed",
                report.pairs,
                report.after.ece,
                report.after_held_out.ece,
                report.after_held_out.max_gap,
                report.before_fusion.ece,
                report.before_shown.ece
            ),
            Event::RecipeDiffers { recipe } => write!(
                f,
                "note: the recipe chosen here differs from the default in the source (Recipe::default): {recipe:?}"
            ),
            Event::EngineBuilt { seconds, dir } => {
                write!(f, "engine: built in {seconds:.1} s, saved in {}", dir.display())
            }
            Event::EngineNotBest { best } => {
                write!(f, "warning: {best} beats the engine's ensemble on validation; the engine still ranks search")
            }
        }
    }
}
