//! Training: AdamW on a soft-label cross-entropy plus a contrastive term, early stopping on the
//! validation split's retrieval MRR, all randomness from one seed.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, FusionConfig, FusionModel, Result};

/// Hyper-parameters of [`train`]. Choose them on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub seed: u64,
    pub max_epochs: usize,
    /// Stop after this many epochs without a better validation MRR.
    pub patience: usize,
    /// Labelled pairs per step.
    pub batch_size: usize,
    /// Distinct images (one caption each) per contrastive step.
    pub contrastive_batch: usize,
    pub learning_rate: f64,
    pub weight_decay: f64,
    /// Weight of the contrastive term against the label cross-entropy.
    pub contrastive_weight: f64,
    /// Temperature of the contrastive softmax.
    pub temperature: f64,
    /// Share of the standardised input features zeroed in each training row (the rest scaled
    /// up to keep the mean); 0 for none.
    pub input_dropout: f64,
    /// Contrastive batches of `contrastive_batch` positive pairs (each caption with its own
    /// image and with every image it is graded as describing), scored by a symmetric
    /// multi-positive InfoNCE (every positive of a row in the batch is a target, not only its
    /// own pair); an epoch is one pass over the positives, and each step adds `batch_size`
    /// labelled pairs drawn at random. Off: an epoch is one pass over the labelled pairs, with
    /// contrastive batches of distinct images and one caption each.
    pub positive_batches: bool,
    /// Steps over which the learning rate rises linearly to `learning_rate`.
    pub warmup_steps: usize,
    /// After warm-up, cosine decay of the learning rate to 0 over this many epochs (0: constant).
    /// With decay every epoch up to `max_epochs` runs (no early stop), and the best on
    /// validation is kept.
    pub cosine_epochs: usize,
    /// With `positive_batches`: every labelled training pair whose label is at least this is a
    /// positive pair of the contrastive batches too, besides `PairSet::positives` (`None`:
    /// only those).
    pub positive_label: Option<f32>,
    /// Weight in the label cross-entropy of the labelled pairs labelled 0 (graded 1 by the
    /// experts and rejected by the crowd: the confusions search makes) against 1 for the
    /// others; 1: every pair alike.
    pub negative_weight: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 0,
            max_epochs: 20,
            patience: 4,
            batch_size: 512,
            contrastive_batch: 128,
            learning_rate: 1e-3,
            weight_decay: 1e-2,
            contrastive_weight: 4.0,
            temperature: 0.05,
            input_dropout: 0.0,
            positive_batches: false,
            warmup_steps: 0,
            cosine_epochs: 0,
            positive_label: None,
            negative_weight: 1.0,
        }
    }
}

impl TrainConfig {
    /// The learning rate at optimiser step `step` (from 0) of a run of `steps_per_epoch`.
    pub fn learning_rate_at(&self, step: usize, steps_per_epoch: usize) -> f64 {
        if step < self.warmup_steps {
            return self.learning_rate * (step + 1) as f64 / self.warmup_steps as f64;
        }
        if self.cosine_epochs == 0 {
            return self.learning_rate;
        }
        let total = (self.cosine_epochs * steps_per_epoch).saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / total as f64).min(1.0);
        self.learning_rate * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
    }
}

/// One side of the split, as rows of the image and text matrices passed to [`train`].
#[derive(Debug, Clone, Default)]
pub struct PairSet {
    /// `(image row, text row, label in 0..1)`.
    pub pairs: Vec<(usize, usize, f32)>,
    /// `(text row, image row)`: a caption and the image it was written for.
    pub positives: Vec<(usize, usize)>,
    /// The image rows a caption is ranked against in retrieval (this side's images).
    pub candidates: Vec<usize>,
}

/// Figures of one epoch.
#[derive(Debug, Clone, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub validation_bce: f64,
    pub validation_mrr: f64,
}

/// What training did.
#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub epochs: Vec<EpochReport>,
    pub best_epoch: usize,
    pub best_validation_mrr: f64,
}

/// Trains a fusion model on `train` and stops early on `validation`.
///
/// `images` is `(n_images, image_dim)` and `texts` `(n_texts, text_dim)`, f32 on `device`;
/// the pair sets index their rows. `on_epoch` sees each epoch's figures as they come. Returns
/// the model of the best validation epoch, its tensors (for [`FusionModel::save`]) and the
/// report. With an empty validation set it trains `max_epochs` epochs and keeps the last.
pub fn train(
    config: FusionConfig,
    tc: &TrainConfig,
    images: &Tensor,
    texts: &Tensor,
    train: &PairSet,
    validation: &PairSet,
    on_epoch: impl FnMut(&EpochReport),
) -> Result<(FusionModel, HashMap<String, Tensor>, TrainReport)> {
    train_with_views(config, tc, images, &[], texts, train, validation, on_epoch)
}

/// [`train`] with views as augmentation: `views` are features of other views of the same
/// images (each `(n_images, image_dim)`, rows as in `images`), and every training row reads the
/// features of a view drawn at random at each step. Validation (and the saved model's use)
/// reads `images`, the features scoring will see (for example the mean over a few views). The
/// image side's standardisation is fitted on the training images' view rows. No views: as
/// [`train`].
#[allow(clippy::too_many_arguments)]
pub fn train_with_views(
    config: FusionConfig,
    tc: &TrainConfig,
    images: &Tensor,
    views: &[Tensor],
    texts: &Tensor,
    train: &PairSet,
    validation: &PairSet,
    mut on_epoch: impl FnMut(&EpochReport),
) -> Result<(FusionModel, HashMap<String, Tensor>, TrainReport)> {
    let device = images.device().clone();
    if let Some(v) = views.iter().find(|v| v.dims() != images.dims()) {
        return Err(Error::Data(format!(
            "a view's features are {:?}, the images' {:?}: every view needs a row per image",
            v.dims(),
            images.dims()
        )));
    }
    check(&config, images, texts, train, "train")?;
    check(&config, images, texts, validation, "validation")?;
    if train.pairs.is_empty() && train.positives.is_empty() {
        return Err(Error::Data("no training pairs".into()));
    }
    if !(0.0..1.0).contains(&tc.input_dropout) || tc.temperature <= 0.0 || tc.learning_rate <= 0.0 {
        return Err(Error::Data(format!(
            "input dropout must be in 0..1 (got {}), the temperature and learning rate above 0 (got {} and {})",
            tc.input_dropout, tc.temperature, tc.learning_rate
        )));
    }
    if tc.max_epochs == 0 {
        return Err(Error::Data("the number of epochs must be at least 1 (got 0)".into()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(tc.seed);

    // Standardisation statistics from the training rows only.
    let train_images: Vec<usize> = unique(train.pairs.iter().map(|p| p.0).chain(train.positives.iter().map(|p| p.1)));
    let train_texts: Vec<usize> = unique(train.pairs.iter().map(|p| p.1).chain(train.positives.iter().map(|p| p.0)));
    let n_images = images.dims2()?.0;
    let views = if views.is_empty() { None } else { Some(Tensor::cat(views, 0)?) };
    let view_rows = |rows: &[usize], view: &mut dyn FnMut() -> usize| -> Vec<usize> {
        rows.iter().map(|&r| view() * n_images + r).collect()
    };
    let (img_mean, img_inv_std) = match &views {
        Some(v) => {
            let n_views = v.dims2()?.0 / n_images;
            let rows: Vec<usize> =
                (0..n_views).flat_map(|k| train_images.iter().map(move |&r| k * n_images + r)).collect();
            stats(&v.index_select(&index(&rows, &device)?, 0)?)?
        }
        None => stats(&images.index_select(&index(&train_images, &device)?, 0)?)?,
    };
    let (txt_mean, txt_inv_std) = stats(&texts.index_select(&index(&train_texts, &device)?, 0)?)?;

    let mut fixed: HashMap<String, Tensor> = HashMap::new();
    fixed.insert("image.mean".into(), img_mean);
    fixed.insert("image.inv_std".into(), img_inv_std);
    if !config.locked_text {
        fixed.insert("text.mean".into(), txt_mean);
        fixed.insert("text.inv_std".into(), txt_inv_std);
    }
    let vars = init_vars(&config, &mut rng, &device)?;
    let model = build(&config, &fixed, &vars, &device)?;
    // Standardised once: every step selects rows of these (the same numbers as standardising
    // each batch, without redoing it ~50 times an epoch).
    let (image_side, text_side) = model.projections();
    let images = &image_side.standardise(images)?;
    let texts = &text_side.standardise(texts)?;
    let views = views.map(|v| image_side.standardise(&v)).transpose()?;
    let n_views = views.as_ref().map_or(1, |v| v.dims2().map_or(1, |d| d.0 / n_images));
    let mut opt = AdamW::new(
        vars.values().cloned().collect(),
        ParamsAdamW { lr: tc.learning_rate, weight_decay: tc.weight_decay, ..Default::default() },
    )?;

    // Captions grouped by their image, for contrastive batches of distinct images.
    let mut captions_of: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(t, i) in &train.positives {
        captions_of.entry(i).or_default().push(t);
    }
    let positive_images: Vec<usize> = captions_of.keys().copied().collect();
    let mut positive_set: HashSet<(usize, usize)> = train.positives.iter().copied().collect();
    let mut positives = train.positives.clone();
    if let (true, Some(at_least)) = (tc.positive_batches, tc.positive_label) {
        for &(i, t, label) in &train.pairs {
            if label >= at_least && positive_set.insert((t, i)) {
                positives.push((t, i));
            }
        }
    }
    let patience = if tc.cosine_epochs > 0 { tc.max_epochs } else { tc.patience };
    let mut step_count = 0usize;

    let mut report = TrainReport { epochs: Vec::new(), best_epoch: 0, best_validation_mrr: f64::NEG_INFINITY };
    let mut best: Option<BTreeMap<String, Tensor>> = None;
    let mut pairs = train.pairs.clone();
    for epoch in 1..=tc.max_epochs {
        pairs.shuffle(&mut rng);
        let mut order = positive_images.clone();
        order.shuffle(&mut rng);
        if tc.positive_batches {
            // Only here: the other recipe's random stream stays as it was (its checkpoints
            // are found by options alone).
            positives.shuffle(&mut rng);
        }
        let per = tc.contrastive_batch.max(2);
        let steps = if tc.positive_batches {
            positives.len().div_ceil(per).max(1)
        } else {
            pairs.len().div_ceil(tc.batch_size.max(1)).max(order.len().div_ceil(tc.contrastive_batch.max(1)))
        };
        let mut total = 0.0;
        for step in 0..steps {
            opt.set_learning_rate(tc.learning_rate_at(step_count, steps));
            step_count += 1;
            // The step's labelled pairs and its contrastive rows: images with one caption
            // each, or positive pairs.
            let drawn: Vec<(usize, usize, f32)>;
            let chunk = if tc.positive_batches {
                drawn = if pairs.is_empty() {
                    Vec::new()
                } else {
                    (0..tc.batch_size).map(|_| pairs[rng.gen_range(0..pairs.len())]).collect()
                };
                Some(drawn.as_slice()).filter(|c| !c.is_empty())
            } else {
                pairs
                    .chunks(tc.batch_size.max(1))
                    .nth(step % pairs.len().div_ceil(tc.batch_size.max(1)).max(1))
                    .filter(|c| !c.is_empty())
            };
            let (i, t, y): (Vec<_>, Vec<_>, Vec<_>) = unzip3(chunk.unwrap_or(&[]));
            let mut contrastive: (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
            if tc.positive_batches {
                let c = &positives[(step * per).min(positives.len())..((step + 1) * per).min(positives.len())];
                if tc.contrastive_weight > 0.0 && c.len() >= 2 {
                    contrastive = (c.iter().map(|p| p.1).collect(), c.iter().map(|p| p.0).collect());
                }
            } else if tc.contrastive_weight > 0.0 && !order.is_empty() {
                let per = tc.contrastive_batch.max(2);
                let n_chunks = order.len().div_ceil(per);
                let c = &order[(step % n_chunks) * per..((step % n_chunks + 1) * per).min(order.len())];
                if c.len() >= 2 {
                    let caps: Vec<usize> = c
                        .iter()
                        .map(|i| {
                            let c = &captions_of[i];
                            c[rng.gen_range(0..c.len())]
                        })
                        .collect();
                    contrastive = (c.to_vec(), caps);
                }
            }
            // Each distinct image and text of the pairs (a batch of 512 pairs holds about 380
            // distinct images), then the contrastive rows, go through their projection in one
            // pass; the pairs gather their rows and the gradient flows back through the gather.
            let (ui, at_i) = distinct(&i);
            let (ut, at_t) = distinct(&t);
            if ui.is_empty() && contrastive.0.is_empty() {
                continue;
            }
            let img_rows: Vec<usize> = ui.iter().chain(&contrastive.0).copied().collect();
            let txt_rows: Vec<usize> = ut.iter().chain(&contrastive.1).copied().collect();
            let img_in = match &views {
                Some(v) => {
                    v.index_select(&index(&view_rows(&img_rows, &mut || rng.gen_range(0..n_views)), &device)?, 0)?
                }
                None => images.index_select(&index(&img_rows, &device)?, 0)?,
            };
            let img_in = dropout(img_in, tc.input_dropout, &mut rng)?;
            let txt_in = dropout(texts.index_select(&index(&txt_rows, &device)?, 0)?, tc.input_dropout, &mut rng)?;
            let img = image_side.forward_standardised_train(&img_in)?;
            let txt = text_side.forward_standardised_train(&txt_in)?;
            let mut loss = Tensor::zeros((), DType::F32, &device)?;
            if !y.is_empty() {
                let img_p = img.narrow(0, 0, ui.len())?.index_select(&index(&at_i, &device)?, 0)?;
                let txt_p = txt.narrow(0, 0, ut.len())?.index_select(&index(&at_t, &device)?, 0)?;
                let z = model.pair_logits(&img_p, &txt_p)?;
                // Unweighted, the plain mean: the default's checkpoints stay bit for bit.
                let bce = if tc.negative_weight == 1.0 {
                    bce_with_logits(&z, &Tensor::from_vec(y, i.len(), &device)?)?
                } else {
                    let w: Vec<f32> =
                        y.iter().map(|&l| if l == 0.0 { tc.negative_weight as f32 } else { 1.0 }).collect();
                    weighted_bce_with_logits(&z, &Tensor::from_vec(y, i.len(), &device)?, &w)?
                };
                loss = (loss + bce)?;
            }
            let n = contrastive.0.len();
            if n > 0 {
                let img_c = img.narrow(0, ui.len(), n)?;
                let txt_c = txt.narrow(0, ut.len(), n)?;
                let logits = (txt_c.matmul(&img_c.t()?)? / tc.temperature)?;
                let l = if tc.positive_batches {
                    let (images, texts, positive_set) = (&contrastive.0, &contrastive.1, &positive_set);
                    let mask: Vec<f32> = texts
                        .iter()
                        .enumerate()
                        .flat_map(|(a, &t)| {
                            images.iter().map(move |&i| (i == images[a] || positive_set.contains(&(t, i))) as u8 as f32)
                        })
                        .collect();
                    multi_positive_infonce(&logits, &Tensor::from_vec(mask, (n, n), &device)?)?
                } else {
                    let targets = Tensor::arange(0u32, n as u32, &device)?;
                    ((candle_nn::loss::cross_entropy(&logits, &targets)?
                        + candle_nn::loss::cross_entropy(&logits.t()?, &targets)?)?
                        * 0.5)?
                };
                loss = (loss + (l * tc.contrastive_weight)?)?;
            }
            total += f64::from(loss.to_scalar::<f32>()?);
            opt.backward_step(&loss)?;
        }
        let (validation_bce, validation_mrr) = evaluate(&model, images, texts, validation)?;
        let epoch_report =
            EpochReport { epoch, train_loss: total / steps.max(1) as f64, validation_bce, validation_mrr };
        on_epoch(&epoch_report);
        report.epochs.push(epoch_report);
        let better = validation_mrr > report.best_validation_mrr || validation.positives.is_empty();
        if better {
            report.best_validation_mrr = validation_mrr;
            report.best_epoch = epoch;
            best = Some(vars.iter().map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?))).collect::<Result<_>>()?);
        } else if epoch >= report.best_epoch + patience {
            break;
        }
    }
    let best = best.expect("at least one epoch ran");
    let mut tensors = fixed;
    tensors.extend(best);
    let model = FusionModel::new(config, VarBuilder::from_tensors(tensors.clone(), DType::F32, &device))?;
    Ok((model, tensors, report))
}

/// Validation figures: mean cross-entropy on the labelled pairs and text-to-image MRR of the
/// positives against the candidates (NaN where the set is empty). `images` and `texts` are
/// already standardised ([`crate::Projection::standardise`]).
fn evaluate(model: &FusionModel, images: &Tensor, texts: &Tensor, set: &PairSet) -> Result<(f64, f64)> {
    let (image_side, text_side) = model.projections();
    let device = images.device();
    let mut bce = f64::NAN;
    if !set.pairs.is_empty() {
        let (i, t, y): (Vec<_>, Vec<_>, Vec<_>) = unzip3(&set.pairs);
        // Each distinct image and text once (10,694 validation pairs hold 300 images).
        let (ui, at_i) = distinct(&i);
        let (ut, at_t) = distinct(&t);
        let img = image_side
            .forward_standardised(&images.index_select(&index(&ui, device)?, 0)?)?
            .index_select(&index(&at_i, device)?, 0)?;
        let txt = text_side
            .forward_standardised(&texts.index_select(&index(&ut, device)?, 0)?)?
            .index_select(&index(&at_t, device)?, 0)?;
        let z = model.pair_logits(&img, &txt)?;
        let y = Tensor::from_vec(y, set.pairs.len(), device)?;
        bce = f64::from(bce_with_logits(&z, &y)?.to_scalar::<f32>()?);
    }
    let mut mrr = f64::NAN;
    if !set.positives.is_empty() && !set.candidates.is_empty() {
        let pos: HashMap<usize, usize> = set.candidates.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        let positives: Vec<&(usize, usize)> = set.positives.iter().filter(|(_, i)| pos.contains_key(i)).collect();
        let img = image_side.forward_standardised(&images.index_select(&index(&set.candidates, device)?, 0)?)?;
        let t: Vec<usize> = positives.iter().map(|p| p.0).collect();
        let txt = text_side.forward_standardised(&texts.index_select(&index(&t, device)?, 0)?)?;
        let sims = txt.matmul(&img.t()?)?.to_vec2::<f32>()?;
        let sum: f64 =
            positives.iter().zip(&sims).map(|((_, i), row)| 1.0 / imsearch_eval::rank_of(row, pos[i]) as f64).sum();
        mrr = sum / positives.len() as f64;
    }
    Ok((bce, mrr))
}

/// Symmetric multi-positive InfoNCE: `logits` is `(n, n)`, texts by images, and `mask[a][b]` is 1
/// where image `b` is a positive of text `a` (the diagonal at least). Each text's target is the
/// uniform distribution over its positive images, each image's over its positive texts; the
/// loss is the mean of the two directions' cross-entropies. With the identity as mask it is the
/// usual symmetric InfoNCE.
pub(crate) fn multi_positive_infonce(logits: &Tensor, mask: &Tensor) -> candle::Result<Tensor> {
    let direction = |logits: &Tensor, mask: &Tensor| -> candle::Result<Tensor> {
        let target = mask.broadcast_div(&mask.sum_keepdim(1)?)?;
        let log_p = candle_nn::ops::log_softmax(logits, 1)?;
        (target * log_p)?.sum(1)?.mean_all()?.neg()
    };
    (direction(logits, mask)? + direction(&logits.t()?.contiguous()?, &mask.t()?.contiguous()?)?)? * 0.5
}

/// Mean binary cross-entropy of `sigmoid(z)` against soft labels `y`, computed stably:
/// `max(z, 0) - z y + log(1 + exp(-|z|))`.
pub(crate) fn bce_with_logits(z: &Tensor, y: &Tensor) -> candle::Result<Tensor> {
    bce_terms(z, y)?.mean_all()
}

/// Each pair's binary cross-entropy of [`bce_with_logits`].
fn bce_terms(z: &Tensor, y: &Tensor) -> candle::Result<Tensor> {
    (z.relu()? - (z * y)?)? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?
}

/// [`bce_with_logits`] with a weight per pair: `sum(w l) / sum(w)`.
pub(crate) fn weighted_bce_with_logits(z: &Tensor, y: &Tensor, w: &[f32]) -> candle::Result<Tensor> {
    let total: f32 = w.iter().sum();
    let w = Tensor::from_slice(w, w.len(), z.device())?;
    (bce_terms(z, y)? * w)?.sum_all()? / f64::from(total.max(f32::MIN_POSITIVE))
}

fn init_vars(config: &FusionConfig, rng: &mut ChaCha8Rng, device: &Device) -> Result<BTreeMap<String, Var>> {
    let mut vars = BTreeMap::new();
    let mut linear = |name: &str, fan_in: usize, fan_out: usize, rng: &mut ChaCha8Rng| -> Result<()> {
        let bound = (1.0 / fan_in as f32).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out).map(|_| rng.gen_range(-bound..bound)).collect();
        vars.insert(format!("{name}.weight"), Var::from_vec(w, (fan_out, fan_in), device)?);
        vars.insert(format!("{name}.bias"), Var::zeros(fan_out, DType::F32, device)?);
        Ok(())
    };
    let sides: &[(&str, usize)] = if config.locked_text {
        &[("image", config.image_dim)]
    } else {
        &[("image", config.image_dim), ("text", config.text_dim)]
    };
    for &(side, dim) in sides {
        if config.hidden_dim > 0 {
            linear(&format!("{side}.hidden"), dim, config.hidden_dim, rng)?;
            linear(&format!("{side}.out"), config.hidden_dim, config.shared_dim, rng)?;
        } else {
            linear(&format!("{side}.out"), dim, config.shared_dim, rng)?;
        }
    }
    vars.insert("calibration.scale".into(), Var::from_vec(vec![10.0f32], 1, device)?);
    vars.insert("calibration.offset".into(), Var::from_vec(vec![-3.0f32], 1, device)?);
    Ok(vars)
}

fn build(
    config: &FusionConfig,
    fixed: &HashMap<String, Tensor>,
    vars: &BTreeMap<String, Var>,
    device: &Device,
) -> Result<FusionModel> {
    let mut all = fixed.clone();
    // The Var's tensor shares its id, so gradients flow to the optimiser's variables.
    all.extend(vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())));
    Ok(FusionModel::new(config.clone(), VarBuilder::from_tensors(all, DType::F32, device))?)
}

fn stats(xs: &Tensor) -> candle::Result<(Tensor, Tensor)> {
    let mean = xs.mean(0)?;
    let var = xs.broadcast_sub(&mean)?.sqr()?.mean(0)?;
    let inv_std = (var.sqrt()? + 1e-6)?.recip()?;
    Ok((mean, inv_std))
}

fn check(config: &FusionConfig, images: &Tensor, texts: &Tensor, set: &PairSet, side: &str) -> Result<()> {
    let (n_img, d_img) = images.dims2()?;
    let (n_txt, d_txt) = texts.dims2()?;
    if d_img != config.image_dim || d_txt != config.text_dim {
        return Err(Error::Data(format!(
            "embeddings are {d_img}-d images and {d_txt}-d texts, the config wants {}",
            config.encoders()
        )));
    }
    let bad_img = set
        .pairs
        .iter()
        .map(|p| p.0)
        .chain(set.positives.iter().map(|p| p.1))
        .chain(set.candidates.iter().copied())
        .any(|i| i >= n_img);
    let bad_txt = set.pairs.iter().map(|p| p.1).chain(set.positives.iter().map(|p| p.0)).any(|t| t >= n_txt);
    let bad_label = set.pairs.iter().any(|p| !(0.0..=1.0).contains(&p.2));
    if bad_img || bad_txt || bad_label {
        return Err(Error::Data(format!("{side} set has a row out of range or a label outside 0..1")));
    }
    Ok(())
}

/// Inverted dropout with a mask from `rng` (so training stays reproducible); `xs` itself when
/// `p` is 0, without drawing from `rng`.
fn dropout(xs: Tensor, p: f64, rng: &mut ChaCha8Rng) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(xs);
    }
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..xs.elem_count()).map(|_| if rng.gen::<f64>() < p { 0.0 } else { keep }).collect();
    let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?;
    Ok((xs * mask)?)
}

fn unique(it: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut v: Vec<usize> = it.collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// The distinct values of `rows` in order of first appearance, and where each row sits in them.
fn distinct(rows: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut seen: HashMap<usize, usize> = HashMap::with_capacity(rows.len());
    let mut values = Vec::new();
    let at = rows
        .iter()
        .map(|&r| {
            *seen.entry(r).or_insert_with(|| {
                values.push(r);
                values.len() - 1
            })
        })
        .collect();
    (values, at)
}

fn index(rows: &[usize], device: &Device) -> candle::Result<Tensor> {
    Tensor::from_vec(rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), rows.len(), device)
}

fn unzip3(pairs: &[(usize, usize, f32)]) -> (Vec<usize>, Vec<usize>, Vec<f32>) {
    let mut a = Vec::with_capacity(pairs.len());
    let mut b = Vec::with_capacity(pairs.len());
    let mut c = Vec::with_capacity(pairs.len());
    for &(x, y, z) in pairs {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy world: 40 images and 40 captions in 8-d and 6-d, caption k describes image k
    /// through a fixed random linear map plus noise. Training must beat chance by far.
    fn world(device: &Device) -> (Tensor, Tensor, PairSet, PairSet) {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 40;
        let latent: Vec<Vec<f32>> = (0..n).map(|_| (0..4).map(|_| rng.gen_range(-1.0..1.0)).collect()).collect();
        let a: Vec<f32> = (0..8 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..6 * 4).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let mut img = Vec::new();
        let mut txt = Vec::new();
        for l in &latent {
            for r in 0..8 {
                img.push((0..4).map(|c| a[r * 4 + c] * l[c]).sum::<f32>() + rng.gen_range(-0.05..0.05));
            }
            for r in 0..6 {
                txt.push((0..4).map(|c| b[r * 4 + c] * l[c]).sum::<f32>() + rng.gen_range(-0.05..0.05));
            }
        }
        let images = Tensor::from_vec(img, (n, 8), device).unwrap();
        let texts = Tensor::from_vec(txt, (n, 6), device).unwrap();
        let side = |range: std::ops::Range<usize>| {
            let mut set = PairSet::default();
            for i in range.clone() {
                set.positives.push((i, i));
                set.candidates.push(i);
                set.pairs.push((i, i, 1.0));
                let other = range.start + (i - range.start + 3) % range.len();
                set.pairs.push((other, i, 0.0));
            }
            set
        };
        (images, texts, side(0..30), side(30..40))
    }

    fn config() -> FusionConfig {
        FusionConfig {
            image_encoder: "toy-img".into(),
            text_encoder: "toy-txt".into(),
            image_dim: 8,
            text_dim: 6,
            hidden_dim: 16,
            shared_dim: 8,
            locked_text: false,
        }
    }

    /// Training settings for the toy world: small batches, every epoch run.
    fn toy_train_config() -> TrainConfig {
        TrainConfig {
            max_epochs: 60,
            patience: 60,
            batch_size: 16,
            contrastive_batch: 10,
            learning_rate: 1e-2,
            ..Default::default()
        }
    }

    #[test]
    fn a_locked_text_side_has_no_parameters_and_still_learns() {
        let device = Device::Cpu;
        let (images, texts, tr, va) = world(&device);
        let tc = toy_train_config();
        let wrong = FusionConfig { locked_text: true, ..config() };
        assert!(train(wrong, &tc, &images, &texts, &tr, &va, |_| {}).is_err(), "shared space wider than the text");
        let locked = FusionConfig { locked_text: true, shared_dim: 6, ..config() };
        let (model, tensors, report) = train(locked, &tc, &images, &texts, &tr, &va, |_| {}).unwrap();
        assert!(tensors.keys().all(|k| !k.starts_with("text.")), "{:?}", tensors.keys());
        assert!(report.best_validation_mrr > 0.6, "{report:?}");
        // The text side is the input itself, on the unit sphere.
        let t = model.embed_texts(&texts).unwrap();
        let unit = texts.broadcast_div(&texts.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap()).unwrap();
        let diff = (t - unit).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
        let dir = tempfile::tempdir().unwrap();
        model.save(&tensors, dir.path()).unwrap();
        let loaded = FusionModel::load(dir.path(), "toy-img", "toy-txt", &device).unwrap();
        assert_eq!(
            loaded.score_matrix(&images, &texts).unwrap().to_vec2::<f32>().unwrap(),
            model.score_matrix(&images, &texts).unwrap().to_vec2::<f32>().unwrap()
        );
    }

    #[test]
    fn learns_the_toy_world_deterministically() {
        let device = Device::Cpu;
        let (images, texts, tr, va) = world(&device);
        let tc = toy_train_config();
        let (model, tensors, report) = train(config(), &tc, &images, &texts, &tr, &va, |_| {}).unwrap();
        // Chance MRR over 10 candidates is about 0.29.
        assert!(report.best_validation_mrr > 0.6, "{report:?}");
        let (_, again, report2) = train(config(), &tc, &images, &texts, &tr, &va, |_| {}).unwrap();
        assert_eq!(report.best_epoch, report2.best_epoch);
        for (k, v) in &tensors {
            let diff = (v - &again[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{k} differs between two runs with the same seed");
        }
        // Scores are in 0..1 and depend on both sides.
        let s = model.score_matrix(&images, &texts).unwrap().to_vec2::<f32>().unwrap();
        assert!(s.iter().flatten().all(|v| (0.0..=1.0).contains(v)));
        let argmax: Vec<usize> =
            s.iter().map(|row| row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0).collect();
        assert!(argmax.iter().collect::<std::collections::BTreeSet<_>>().len() > 10, "the same image wins every query");

        let dir = tempfile::tempdir().unwrap();
        model.save(&tensors, dir.path()).unwrap();
        let loaded = FusionModel::load(dir.path(), "toy-img", "toy-txt", &device).unwrap();
        let s2 = loaded.score_matrix(&images, &texts).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(s, s2);
        let err = FusionModel::load(dir.path(), "other-img", "toy-txt", &device).unwrap_err().to_string();
        assert!(err.contains("trained for") && err.contains("toy-img"), "{err}");
    }

    /// The recipe of a small-data dual encoder: views as augmentation, batches of positive
    /// pairs with the multi-positive loss, warm-up then cosine decay, linear projections.
    #[test]
    fn views_and_positive_batches_learn_the_toy_world_deterministically() {
        let device = Device::Cpu;
        let (images, texts, tr, va) = world(&device);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let noisy = |rng: &mut ChaCha8Rng| {
            let noise: Vec<f32> = (0..40 * 8).map(|_| rng.gen_range(-0.1..0.1)).collect();
            (&images + Tensor::from_vec(noise, (40, 8), &device).unwrap()).unwrap()
        };
        let views = [noisy(&mut rng), noisy(&mut rng)];
        let tc = TrainConfig {
            positive_batches: true,
            warmup_steps: 5,
            cosine_epochs: 40,
            max_epochs: 40,
            patience: 1,
            input_dropout: 0.1,
            ..toy_train_config()
        };
        let linear = FusionConfig { hidden_dim: 0, ..config() };
        let run = || train_with_views(linear.clone(), &tc, &images, &views, &texts, &tr, &va, |_| {}).unwrap();
        let (_, tensors, report) = run();
        assert!(report.best_validation_mrr > 0.6, "{report:?}");
        // With cosine decay every epoch runs, whatever the patience.
        assert_eq!(report.epochs.len(), 40);
        let (_, again, report2) = run();
        assert_eq!(report.best_epoch, report2.best_epoch);
        for (k, v) in &tensors {
            let diff = (v - &again[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "{k} differs between two runs with the same seed");
        }
        // The views change what is learnt (they are read), and a view of the wrong shape is an error.
        let (_, plain, _) = train(linear.clone(), &tc, &images, &texts, &tr, &va, |_| {}).unwrap();
        let diff = (&plain["image.out.weight"] - &tensors["image.out.weight"]).unwrap().abs().unwrap();
        assert!(diff.max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0);
        let short = images.narrow(0, 0, 39).unwrap();
        let err =
            train_with_views(linear.clone(), &tc, &images, &[short], &texts, &tr, &va, |_| {}).unwrap_err().to_string();
        assert!(err.contains("every view needs a row per image"), "{err}");

        // Two trainings side by side on threads give the models of one at a time.
        let (a, b) = std::thread::scope(|s| {
            let (a, b) = (s.spawn(run), s.spawn(run));
            (a.join().unwrap().1, b.join().unwrap().1)
        });
        for t in [a, b] {
            for (k, v) in &tensors {
                let diff = (v - &t[k]).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(diff, 0.0, "{k} differs when trained beside another model");
            }
        }
    }

    /// Labelled pairs at least `positive_label` good join the contrastive positives: a pair
    /// graded 0.7 changes the model at 0.5, not at 0.9 (every pair that good is a positive).
    #[test]
    fn positive_label_adds_the_well_graded_pairs_as_positives() {
        let device = Device::Cpu;
        let (images, texts, mut tr, va) = world(&device);
        for i in 0..10 {
            tr.pairs.push(((i + 7) % 30, i, 0.7));
        }
        let tc = TrainConfig { positive_batches: true, max_epochs: 5, ..toy_train_config() };
        let linear = FusionConfig { hidden_dim: 0, ..config() };
        let run = |positive_label| {
            let tc = TrainConfig { positive_label, ..tc.clone() };
            train(linear.clone(), &tc, &images, &texts, &tr, &va, |_| {}).unwrap().1
        };
        let (none, half, most) = (run(None), run(Some(0.5)), run(Some(0.9)));
        let differ = |a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>| {
            let d = (&a["image.out.weight"] - &b["image.out.weight"]).unwrap().abs().unwrap();
            d.max_all().unwrap().to_scalar::<f32>().unwrap()
        };
        assert!(differ(&none, &half) > 0.0);
        assert_eq!(differ(&none, &most), 0.0);
    }

    #[test]
    fn multi_positive_infonce_matches_the_formula() {
        let device = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 0.5, -1.0], [0.0, 1.0, 0.3], [0.2, -0.4, 1.5]], &device).unwrap();
        let l = logits.to_vec2::<f32>().unwrap();
        // The identity: the usual symmetric InfoNCE.
        let eye = Tensor::eye(3, DType::F32, &device).unwrap();
        let got = multi_positive_infonce(&logits, &eye).unwrap().to_scalar::<f32>().unwrap();
        let targets = Tensor::new(&[0u32, 1, 2], &device).unwrap();
        let ce = |x: &Tensor| candle_nn::loss::cross_entropy(x, &targets).unwrap().to_scalar::<f32>().unwrap();
        let want = 0.5 * (ce(&logits) + ce(&logits.t().unwrap().contiguous().unwrap()));
        assert!((got - want).abs() < 1e-6, "{got} {want}");
        // Text 0 has images 0 and 1 as positives (so image 1 has texts 0 and 1).
        let mask = Tensor::new(&[[1.0f32, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], &device).unwrap();
        let got = multi_positive_infonce(&logits, &mask).unwrap().to_scalar::<f32>().unwrap();
        let log_softmax = |row: [f32; 3], k: usize| row[k] - row.iter().map(|v| v.exp()).sum::<f32>().ln();
        let (r, c) = (|a: usize| [l[a][0], l[a][1], l[a][2]], |b: usize| [l[0][b], l[1][b], l[2][b]]);
        let texts =
            -(0.5 * (log_softmax(r(0), 0) + log_softmax(r(0), 1)) + log_softmax(r(1), 1) + log_softmax(r(2), 2)) / 3.0;
        let images =
            -(log_softmax(c(0), 0) + 0.5 * (log_softmax(c(1), 0) + log_softmax(c(1), 1)) + log_softmax(c(2), 2)) / 3.0;
        let want = 0.5 * (texts + images);
        assert!((got - want).abs() < 1e-5, "{got} {want}");
    }

    #[test]
    fn learning_rate_warms_up_then_decays_along_a_cosine() {
        let tc = TrainConfig { learning_rate: 1.0, warmup_steps: 4, cosine_epochs: 3, ..TrainConfig::default() };
        // 10 steps an epoch: 4 warm-up steps, then 26 of decay.
        let lr: Vec<f64> = (0..32).map(|s| tc.learning_rate_at(s, 10)).collect();
        assert_eq!(&lr[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert_eq!(lr[4], 1.0);
        assert!((lr[4 + 13] - 0.5).abs() < 1e-12, "{}", lr[17]);
        assert!(lr[4..30].windows(2).all(|w| w[1] < w[0]), "{lr:?}");
        assert_eq!(lr[30], 0.0);
        assert_eq!(lr[31], 0.0);
        // The defaults: constant.
        let tc = TrainConfig::default();
        assert!((0..100).all(|s| tc.learning_rate_at(s, 7) == tc.learning_rate));
    }

    #[test]
    fn bad_data_is_an_error() {
        let device = Device::Cpu;
        let (images, texts, mut tr, va) = world(&device);
        tr.pairs.push((99, 0, 0.5));
        assert!(train(config(), &TrainConfig::default(), &images, &texts, &tr, &va, |_| {}).is_err());
        for bad in [
            TrainConfig { input_dropout: 1.0, ..toy_train_config() },
            TrainConfig { temperature: 0.0, ..toy_train_config() },
            TrainConfig { learning_rate: -1.0, ..toy_train_config() },
        ] {
            let (_, _, tr, _) = world(&device);
            let err = train(config(), &bad, &images, &texts, &tr, &va, |_| {}).unwrap_err().to_string();
            assert!(err.contains("input dropout must be in 0..1"), "{err}");
        }
        let mut cfg = config();
        cfg.image_dim = 9;
        let (_, _, tr, _) = world(&device);
        assert!(train(cfg, &TrainConfig::default(), &images, &texts, &tr, &va, |_| {}).is_err());
    }

    #[test]
    fn zero_epochs_is_an_error() {
        let device = Device::Cpu;
        let (images, texts, tr, va) = world(&device);
        let tc = TrainConfig { max_epochs: 0, ..toy_train_config() };
        let err = train(config(), &tc, &images, &texts, &tr, &va, |_| {}).unwrap_err();
        assert!(matches!(err, Error::Data(_)), "{err:?}");
        assert!(err.to_string().contains("epochs must be at least 1"), "{err}");
    }

    #[test]
    fn dropout_is_seeded_and_keeps_the_mean() {
        let xs = Tensor::ones((100, 100), DType::F32, &Device::Cpu).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let a = dropout(xs.clone(), 0.25, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let b = dropout(xs.clone(), 0.25, &mut rng).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert!((2200..2800).contains(&zeros), "{zeros} of 10000 zeroed at p = 0.25");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 4.0 / 3.0).abs() < 1e-6));
        // p = 0 draws nothing and returns the input.
        let before = rng.clone();
        let same = dropout(xs.clone(), 0.0, &mut rng).unwrap();
        assert_eq!(rng, before);
        assert_eq!(same.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![1.0; 10000]);
    }

    #[test]
    fn distinct_keeps_first_appearance_order() {
        let (values, at) = distinct(&[5, 2, 5, 9, 2, 2]);
        assert_eq!(values, [5, 2, 9]);
        assert_eq!(at, [0, 1, 0, 2, 1, 1]);
        let rows = [5, 2, 5, 9, 2, 2];
        assert!(rows.iter().zip(&at).all(|(r, &a)| values[a] == *r));
        assert_eq!(distinct(&[]), (vec![], vec![]));
    }

    #[test]
    fn bce_matches_the_formula() {
        let device = Device::Cpu;
        let z = Tensor::new(&[0.0f32, 2.0, -3.0], &device).unwrap();
        let y = Tensor::new(&[0.5f32, 1.0, 0.2], &device).unwrap();
        let got = bce_with_logits(&z, &y).unwrap().to_scalar::<f32>().unwrap();
        let expected: f32 = [(0.0f32, 0.5f32), (2.0, 1.0), (-3.0, 0.2)]
            .iter()
            .map(|&(z, y)| {
                let p = 1.0 / (1.0 + (-z).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .sum::<f32>()
            / 3.0;
        assert!((got - expected).abs() < 1e-5, "{got} {expected}");
        // Weighted: equal weights are the mean; otherwise sum(w l) / sum(w).
        let ones = weighted_bce_with_logits(&z, &y, &[1.0; 3]).unwrap().to_scalar::<f32>().unwrap();
        assert!((ones - got).abs() < 1e-6, "{ones} {got}");
        let each: Vec<f32> = [(0.0f32, 0.5f32), (2.0, 1.0), (-3.0, 0.2)]
            .iter()
            .map(|&(z, y)| {
                let p = 1.0 / (1.0 + (-z).exp());
                -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
            })
            .collect();
        let weighted = weighted_bce_with_logits(&z, &y, &[3.0, 1.0, 0.0]).unwrap().to_scalar::<f32>().unwrap();
        let want = (3.0 * each[0] + each[1]) / 4.0;
        assert!((weighted - want).abs() < 1e-5, "{weighted} {want}");
    }
}
