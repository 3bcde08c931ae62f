//! `cargo xtask eval`: every model against the baselines, chosen on the validation split, then
//! scored once on the 500 test queries; prints a table and writes `metrics.json`.

use std::{collections::BTreeMap, rc::Rc, time::Instant};

use anyhow::{Context, Result};
use candle::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use imsearch_compliance::TextPolicy;
use imsearch_data::Dataset;
use imsearch_eval::{kendall_tau_b, kendall_tau_c, mae, rmse, roc_auc, spearman, RetrievalMetrics};
use imsearch_fusion::{FusionModel, PairSet};
use imsearch_text::{Tfidf, TfidfOptions};
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::{
    embed::EmbedOpts,
    embed::{self},
    paths,
    train::{self, Pipeline, Prepared, TrainOpts},
};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    #[command(flatten)]
    pub(crate) pipeline: Pipeline,
    /// Train the fusion model again even when a checkpoint for this seed exists.
    #[arg(long)]
    pub(crate) retrain: bool,
    /// Leave out the TF-IDF baseline, which trains a second fusion model (the demo does, to stay
    /// quick).
    #[arg(long)]
    pub(crate) no_tfidf: bool,
    /// Score the test set with the models trained on the training side of the split instead of
    /// retraining them on every training image first (quicker; the demo does this).
    #[arg(long)]
    pub(crate) no_retrain_all: bool,
    /// Leave out the fusion models on one image encoder each (the members of the fusion
    /// ensemble besides the model on all of them).
    #[arg(long)]
    pub(crate) no_members: bool,

    /// Models on every image encoder in the fusion ensemble, each from its own initial seed
    /// (the training seed, then the next ones).
    #[arg(long, default_value_t = 1)]
    pub(crate) fusion_seeds: usize,
    /// Splits of the training images (seeds --seed, --seed + 1, ...) whose validation captions
    /// are pooled for the ensemble's choices (the bridge's settings and the weights). The
    /// table's validation columns are of the first.
    #[arg(long, default_value_t = 3)]
    pub(crate) validation_splits: usize,
}

/// Validation figures: agreement with the labels and retrieval among validation images.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Validation {
    mae: Option<f64>,
    rmse: Option<f64>,
    roc_auc: Option<f64>,
    kendall_tau_b: Option<f64>,
    spearman: Option<f64>,
    kendall_tau_c_expert: Option<f64>,
    recall_at_1: f64,
    recall_at_5: f64,
    recall_at_10: f64,
    mrr: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelMetrics {
    pub(crate) validation: Validation,
    pub(crate) test: RetrievalMetrics,
    pub(crate) test_allowed: RetrievalMetrics,
}

#[derive(Debug, Serialize)]
pub(crate) struct Metrics {
    pub(crate) seed: u64,
    pub(crate) best: String,
    pub(crate) models: BTreeMap<String, ModelMetrics>,
    pub(crate) test_queries: usize,
    pub(crate) test_queries_allowed: usize,
    pub(crate) test_images: usize,
    pub(crate) data: train::DataCounts,
    /// Wall time of scoring every test query against every test image with the best model.
    pub(crate) test_scoring_ms: f64,
    /// Wall time of the best model's work on the test images alone, done once before
    /// `test_scoring_ms` as indexing would (the bank normalisation's per-image statistics).
    pub(crate) test_image_preparation_ms: f64,
    /// Whether the test scorers were retrained on every training image (`cargo xtask eval`) or
    /// are the split's models (`--no-retrain-all`, as the demo runs it).
    pub(crate) test_models_retrained_on_all_images: bool,
}

/// Scores texts against images from this scorer's own feature rows.
pub(crate) trait Scorer {
    /// `(m, _) images, (q, _) texts -> q rows of m scores in 0..1`.
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>>;
    /// Matched rows: `(n, _), (n, _) -> n scores in 0..1`.
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>>;
    /// Work that depends on the images alone, done once when they are indexed and reused by
    /// [`Scorer::matrix`] for the same tensor.
    fn prepare(&self, _images: &Tensor) -> Result<()> {
        Ok(())
    }
}

/// The result of a scorer's work on one tensor of images, kept for the next call with the same
/// tensor (as an index keeps it for its images).
struct ImageCache<T>(std::cell::RefCell<Option<(candle::TensorId, T)>>);

impl<T> Default for ImageCache<T> {
    fn default() -> Self {
        ImageCache(Default::default())
    }
}

impl<T: Clone> ImageCache<T> {
    fn get(&self, images: &Tensor, make: impl FnOnce() -> Result<T>) -> Result<T> {
        if let Some((id, value)) = &*self.0.borrow() {
            if *id == images.id() {
                return Ok(value.clone());
            }
        }
        let value = make()?;
        *self.0.borrow_mut() = Some((images.id(), value.clone()));
        Ok(value)
    }
}

/// A fusion model as a scorer; the image side is projected once per images tensor.
struct Fusion {
    model: FusionModel,
    images: ImageCache<Tensor>,
}

impl Fusion {
    fn new(model: FusionModel) -> Self {
        Fusion { model, images: ImageCache::default() }
    }
}

impl Scorer for Fusion {
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.images.get(images, || Ok(self.model.embed_images(images)?)).map(|_| ())
    }
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let img = self.images.get(images, || Ok(self.model.embed_images(images)?))?;
        let logits = self.model.logit_matrix(&img, &self.model.embed_texts(texts)?)?;
        Ok(candle_nn::ops::sigmoid(&logits)?.to_vec2()?)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let z = self.model.pair_logits(&self.model.embed_images(images)?, &self.model.embed_texts(texts)?)?;
        Ok(candle_nn::ops::sigmoid(&z)?.to_vec1()?)
    }
}

/// Uniform random scores: the floor every model must clear.
struct Random(u64);

impl Scorer for Random {
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.0);
        let (m, q) = (images.dims2()?.0, texts.dims2()?.0);
        Ok((0..q).map(|_| (0..m).map(|_| rng.gen::<f32>()).collect()).collect())
    }
    fn pairs(&self, images: &Tensor, _texts: &Tensor) -> Result<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.0);
        Ok((0..images.dims2()?.0).map(|_| rng.gen::<f32>()).collect())
    }
}

/// The original task's approach: a linear regressor on the concatenated image and text vectors.
/// Its score is an image term plus a text term, so it ranks images the same for every query.
struct Regressor {
    w_image: Tensor,
    w_text: Tensor,
    bias: f32,
    mean: Tensor,
    inv_std: Tensor,
}

impl Regressor {
    fn train(images: &Tensor, texts: &Tensor, set: &PairSet, seed: u64) -> Result<Self> {
        let device = Device::Cpu;
        let (d_img, d_txt) = (images.dims2()?.1, texts.dims2()?.1);
        let (i, t, y): (Vec<u32>, Vec<u32>, Vec<f32>) =
            set.pairs.iter().map(|&(i, t, y)| (i as u32, t as u32, y)).fold((vec![], vec![], vec![]), |mut a, x| {
                a.0.push(x.0);
                a.1.push(x.1);
                a.2.push(x.2);
                a
            });
        let x = Tensor::cat(
            &[
                images.index_select(&Tensor::new(i.as_slice(), &device)?, 0)?,
                texts.index_select(&Tensor::new(t.as_slice(), &device)?, 0)?,
            ],
            1,
        )?;
        let mean = x.mean(0)?;
        let inv_std = (x.broadcast_sub(&mean)?.sqr()?.mean(0)?.sqrt()? + 1e-6)?.recip()?;
        let x = x.broadcast_sub(&mean)?.broadcast_mul(&inv_std)?;
        let y = Tensor::from_vec(y, (set.pairs.len(), 1), &device)?;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        // Zero init: the fit is convex, so the start does not matter and the result is seeded.
        let linear = candle_nn::Linear::new(
            vb.get_with_hints((1, d_img + d_txt), "weight", candle_nn::Init::Const(0.0))?,
            Some(vb.get_with_hints(1, "bias", candle_nn::Init::Const(0.0))?),
        );
        let mut opt =
            AdamW::new(varmap.all_vars(), ParamsAdamW { lr: 1e-3, weight_decay: 1e-2, ..Default::default() })?;
        let mut order: Vec<u32> = (0..set.pairs.len() as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..10 {
            order.shuffle(&mut rng);
            for chunk in order.chunks(512) {
                let idx = Tensor::new(chunk, &device)?;
                let pred = linear.forward(&x.index_select(&idx, 0)?)?;
                let loss = (pred - y.index_select(&idx, 0)?)?.sqr()?.mean_all()?;
                opt.backward_step(&loss)?;
            }
        }
        let w = linear.weight().squeeze(0)?;
        Ok(Regressor {
            w_image: w.narrow(0, 0, d_img)?,
            w_text: w.narrow(0, d_img, d_txt)?,
            bias: linear.bias().expect("has a bias").to_vec1::<f32>()?[0],
            mean,
            inv_std,
        })
    }

    /// `(n, d)` rows of one side standardised and dotted with that side's weights.
    fn side(&self, xs: &Tensor, offset: usize, w: &Tensor) -> Result<Tensor> {
        let d = xs.dims2()?.1;
        let xs =
            xs.broadcast_sub(&self.mean.narrow(0, offset, d)?)?.broadcast_mul(&self.inv_std.narrow(0, offset, d)?)?;
        Ok(xs.matmul(&w.unsqueeze(1)?)?.squeeze(1)?)
    }
}

impl Scorer for Regressor {
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let d_img = images.dims2()?.1;
        let a = self.side(images, 0, &self.w_image)?.to_vec1::<f32>()?;
        let b = self.side(texts, d_img, &self.w_text)?.to_vec1::<f32>()?;
        Ok(b.iter().map(|t| a.iter().map(|i| (i + t + self.bias).clamp(0.0, 1.0)).collect()).collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let d_img = images.dims2()?.1;
        let a = self.side(images, 0, &self.w_image)?.to_vec1::<f32>()?;
        let b = self.side(texts, d_img, &self.w_text)?.to_vec1::<f32>()?;
        Ok(a.iter().zip(&b).map(|(i, t)| (i + t + self.bias).clamp(0.0, 1.0)).collect())
    }
}

/// A model under evaluation: its scorers and the text rows it reads (MiniLM or TF-IDF). The
/// test scorer may know more than the validation one (e.g. neighbours among all training
/// images), never less.
struct Entry {
    name: String,
    scorer: Rc<dyn Scorer>,
    test_scorer: Rc<dyn Scorer>,
    texts: Tensor,
}

impl Entry {
    fn new(name: String, scorer: Rc<dyn Scorer>, texts: Tensor) -> Self {
        Entry { name, test_scorer: scorer.clone(), scorer, texts }
    }
}

/// A scorer that reads some columns of the image features (one encoder's slice of the
/// concatenation).
struct Columns {
    inner: Rc<dyn Scorer>,
    offset: usize,
    dim: usize,
    /// The columns of the last images tensor (the same tensor each time, so `inner` can keep
    /// its own work on it).
    slice: ImageCache<Tensor>,
}

impl Columns {
    fn new(inner: Rc<dyn Scorer>, offset: usize, dim: usize) -> Self {
        Columns { inner, offset, dim, slice: ImageCache::default() }
    }

    fn slice(&self, images: &Tensor) -> Result<Tensor> {
        self.slice.get(images, || Ok(images.narrow(1, self.offset, self.dim)?.contiguous()?))
    }
}

impl Scorer for Columns {
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.inner.prepare(&self.slice(images)?)
    }
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        self.inner.matrix(&self.slice(images)?, texts)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        self.inner.pairs(&images.narrow(1, self.offset, self.dim)?.contiguous()?, texts)
    }
}

/// Neighbours among the training captions: an image's nearest training images (by cosine of
/// standardised image features) vote with how well the query matches their captions (cosine
/// of MiniLM embeddings). Training-free.
struct Neighbours {
    mean: Tensor,
    inv_std: Tensor,
    /// `(gallery, d_img)` unit rows.
    gallery: Tensor,
    /// Rows (into `texts`) of each gallery image's captions.
    captions: Vec<Vec<usize>>,
    /// The gallery captions' MiniLM embeddings (unit rows).
    texts: Tensor,
    k: usize,
    temperature: f32,
    votes: ImageCache<Rc<Votes>>,
}

/// Per image, its nearest gallery images and their weights.
type Votes = Vec<Vec<(usize, f32)>>;

impl Neighbours {
    /// `gallery` pairs each training image row (of `images`) with the text rows of its captions.
    fn new(
        images: &Tensor,
        texts: &Tensor,
        gallery: BTreeMap<usize, Vec<usize>>,
        fit_rows: &[usize],
        hood: Neighbourhood,
    ) -> Result<Self> {
        let fit = images.index_select(&index(fit_rows)?, 0)?;
        let mean = fit.mean(0)?;
        let inv_std = (fit.broadcast_sub(&mean)?.sqr()?.mean(0)?.sqrt()? + 1e-6)?.recip()?;
        let rows: Vec<usize> = gallery.keys().copied().collect();
        // Only the gallery's captions, renumbered.
        let caption_rows: Vec<usize> =
            gallery.values().flatten().copied().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        let at: BTreeMap<usize, usize> = caption_rows.iter().enumerate().map(|(k, &r)| (r, k)).collect();
        let mut n = Neighbours {
            mean,
            inv_std,
            gallery: Tensor::zeros((1, 1), DType::F32, &Device::Cpu)?,
            captions: gallery.into_values().map(|c| c.iter().map(|r| at[r]).collect()).collect(),
            texts: texts.index_select(&index(&caption_rows)?, 0)?,
            k: hood.k,
            temperature: hood.temperature,
            votes: ImageCache::default(),
        };
        n.gallery = n.normalise(&images.index_select(&index(&rows)?, 0)?)?;
        Ok(n)
    }

    /// The same gallery with another neighbourhood (and nothing cached).
    fn with(&self, hood: Neighbourhood) -> Neighbours {
        Neighbours {
            mean: self.mean.clone(),
            inv_std: self.inv_std.clone(),
            gallery: self.gallery.clone(),
            captions: self.captions.clone(),
            texts: self.texts.clone(),
            k: hood.k,
            temperature: hood.temperature,
            votes: ImageCache::default(),
        }
    }

    fn normalise(&self, xs: &Tensor) -> Result<Tensor> {
        let xs = xs.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?;
        Ok(xs.broadcast_div(&xs.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)?)
    }
}

impl Neighbours {
    /// For each image row, its `k` nearest gallery images and their softmax weights.
    fn votes(&self, images: &Tensor) -> Result<Votes> {
        let sims = self.normalise(images)?.matmul(&self.gallery.t()?)?.to_vec2::<f32>()?;
        Ok(sims
            .iter()
            .map(|row| {
                let hits = imsearch_index::top_k(row, self.k);
                let max = hits.first().map_or(0.0, |h| h.score);
                let w: Vec<f32> = hits.iter().map(|h| ((h.score - max) / self.temperature).exp()).collect();
                let total: f32 = w.iter().sum();
                hits.iter().zip(w).map(|(h, w)| (h.row, w / total)).collect()
            })
            .collect())
    }

    /// For each text row, how well it matches each gallery image's best caption.
    fn matches(&self, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let text_sims = texts.matmul(&self.texts.t()?)?.to_vec2::<f32>()?;
        Ok(text_sims
            .iter()
            .map(|row| self.captions.iter().map(|c| c.iter().map(|&t| row[t]).fold(f32::MIN, f32::max)).collect())
            .collect())
    }
}

/// The vote of `votes` on `matches`, mapped from -1..1 into 0..1.
fn vote(votes: &[(usize, f32)], matches: &[f32]) -> f32 {
    (votes.iter().map(|&(g, w)| w * matches[g]).sum::<f32>() + 1.0) / 2.0
}

impl Scorer for Neighbours {
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.votes.get(images, || Ok(Rc::new(self.votes(images)?))).map(|_| ())
    }
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let votes = self.votes.get(images, || Ok(Rc::new(self.votes(images)?)))?;
        Ok(self.matches(texts)?.iter().map(|m| votes.iter().map(|v| vote(v, m)).collect()).collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let votes = self.votes(images)?;
        Ok(self.matches(texts)?.iter().zip(&votes).map(|(m, v)| vote(v, m)).collect())
    }
}

/// A training-free bridge: an image's ImageNet class probabilities (from each encoder's own
/// classifier at a softmax temperature, averaged) carried into text space as the
/// probability-weighted mean of the MiniLM embeddings of the class names; the score is its
/// cosine with the query.
struct Bridge {
    /// Each encoder's classifier with the width of its slice of the concatenated features.
    encoders: Rc<Vec<(Box<dyn imsearch_vision::ImageEncoder>, usize)>>,
    /// `(1000, 384)` MiniLM embeddings of the class names (bare, or in a sentence).
    classes: Tensor,
    /// Softmax temperature on the logits: above 1 spreads the probability over more classes.
    temperature: f64,
    text_space: ImageCache<Tensor>,
}

impl Bridge {
    fn new(
        encoders: Rc<Vec<(Box<dyn imsearch_vision::ImageEncoder>, usize)>>,
        classes: Tensor,
        temperature: f64,
    ) -> Self {
        Bridge { encoders, classes, temperature, text_space: ImageCache::default() }
    }

    /// `(m, sum of dims)` features -> `(m, 384)` unit rows in text space.
    fn text_space(&self, images: &Tensor) -> Result<Tensor> {
        let mut probs: Option<Tensor> = None;
        let mut offset = 0;
        for (encoder, dim) in self.encoders.iter() {
            let logits = encoder.logits(&images.narrow(1, offset, *dim)?.contiguous()?)?;
            let p = candle_nn::ops::softmax_last_dim(&(logits / self.temperature)?)?;
            probs = Some(match probs {
                Some(acc) => (acc + p)?,
                None => p,
            });
            offset += dim;
        }
        let v = probs.context("no encoder")?.matmul(&self.classes)?;
        Ok(v.broadcast_div(&v.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)?)
    }
}

impl Scorer for Bridge {
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.text_space.get(images, || self.text_space(images)).map(|_| ())
    }
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let v = self.text_space.get(images, || self.text_space(images))?;
        Ok(((texts.matmul(&v.t()?)? + 1.0)? / 2.0)?.to_vec2()?)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let v = self.text_space(images)?;
        Ok((((texts * v)?.sum(1)? + 1.0)? / 2.0)?.to_vec1()?)
    }
}

/// Scorers combined after z-scoring each one's scores per query, with weights chosen on the
/// validation split; mapped into 0..1 by `0.5 + atan(z / sum of weights) / pi` (ranks unchanged). Pair scores are the first
/// scorer's (the calibrated fusion model).
struct Ensemble {
    parts: Vec<(Rc<dyn Scorer>, f32)>,
}

impl Scorer for Ensemble {
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        // A part with weight 0 changes nothing: it is not computed.
        let parts: Vec<&(Rc<dyn Scorer>, f32)> = self.parts.iter().filter(|p| p.1 != 0.0).collect();
        let mats = parts.iter().map(|(s, _)| s.matrix(images, texts)).collect::<Result<Vec<_>>>()?;
        let weights: Vec<f32> = parts.iter().map(|p| p.1).collect();
        let total: f32 = weights.iter().sum();
        // Into 0..1 by a map that keeps ranks and does not saturate in f32 (a sigmoid of a sum of
        // z-scores rounds to 1.0 for the best images and turns them into ties).
        Ok(combine(&mats, &weights)
            .into_iter()
            .map(|r| r.into_iter().map(|z| 0.5 + (z / total).atan() / std::f32::consts::PI).collect())
            .collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        self.parts[0].0.pairs(images, texts)
    }
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.parts.iter().filter(|p| p.1 != 0.0).try_for_each(|p| p.0.prepare(images))
    }
}

/// Query-bank normalisation: each image's score for a text standardised by the mean and
/// spread of its scores for a bank of other texts, mapped into 0..1 linearly from
/// `-BANK_Z_RANGE..BANK_Z_RANGE` (a map that keeps both the ranks and the ensemble's per-query
/// z-scores; a squashing map such as atan changed the ensemble's validation MRR from 0.435 to
/// 0.416). Pair scores are the inner scorer's.
const BANK_Z_RANGE: f32 = 50.0;

struct BankNormalised {
    inner: Rc<dyn Scorer>,
    /// `(b, _)` text rows of the bank.
    bank: Tensor,
    /// The statistics of the last images tensor over the bank.
    stats: ImageCache<Rc<BankStats>>,
}

/// Each image's mean score over the bank and the inverse of its standard deviation.
struct BankStats {
    mean: Vec<f32>,
    inv_std: Vec<f32>,
}

impl BankNormalised {
    fn new(inner: Rc<dyn Scorer>, bank: Tensor) -> Self {
        BankNormalised { inner, bank, stats: ImageCache::default() }
    }

    fn stats(&self, images: &Tensor) -> Result<Rc<BankStats>> {
        self.stats.get(images, || {
            let bank = self.inner.matrix(images, &self.bank)?;
            let n = bank.len().max(1) as f32;
            let columns = images.dims2()?.0;
            let mean: Vec<f32> = (0..columns).map(|c| bank.iter().map(|r| r[c]).sum::<f32>() / n).collect();
            let inv_std: Vec<f32> = (0..columns)
                .map(|c| 1.0 / (bank.iter().map(|r| (r[c] - mean[c]).powi(2)).sum::<f32>() / n).sqrt().max(1e-9))
                .collect();
            Ok(Rc::new(BankStats { mean, inv_std }))
        })
    }
}

impl Scorer for BankNormalised {
    fn prepare(&self, images: &Tensor) -> Result<()> {
        self.inner.prepare(images)?;
        self.stats(images).map(|_| ())
    }
    fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let scores = self.inner.matrix(images, texts)?;
        let BankStats { mean, inv_std } = &*self.stats(images)?;
        Ok(scores
            .iter()
            .map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(c, v)| (0.5 + (v - mean[c]) * inv_std[c] / (2.0 * BANK_Z_RANGE)).clamp(0.0, 1.0))
                    .collect()
            })
            .collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        self.inner.pairs(images, texts)
    }
}

/// Per query (row), each matrix z-scored, then summed with `weights`.
fn combine(mats: &[Vec<Vec<f32>>], weights: &[f32]) -> Vec<Vec<f32>> {
    let z = |row: &[f32]| -> Vec<f32> {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let std = (row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt().max(1e-9);
        row.iter().map(|v| (v - mean) / std).collect()
    };
    (0..mats[0].len())
        .map(|q| {
            let mut out = vec![0.0; mats[0][q].len()];
            for (m, &w) in mats.iter().zip(weights) {
                for (o, v) in out.iter_mut().zip(z(&m[q])) {
                    *o += w * v;
                }
            }
            out
        })
        .collect()
}

/// The text-cache key of an ImageNet class's text.
type ClassKey = fn(usize) -> String;

/// The bridge's softmax temperatures tried on validation.
const BRIDGE_TEMPERATURES: [f64; 4] = [0.5, 1.0, 2.0, 4.0];

fn index(rows: &[usize]) -> candle::Result<Tensor> {
    Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu)
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let metrics = evaluate(args)?;
    let path = paths::resolve(&args.pipeline.embed.workdir).join("metrics.json");
    std::fs::write(&path, serde_json::to_string_pretty(&metrics)?)
        .with_context(|| format!("failed to write {}", path.display()))?;
    print_table(&metrics);
    println!("\nbest on validation: {}", metrics.best);
    println!("wrote {}", path.display());
    Ok(())
}

pub(crate) fn evaluate(args: &Args) -> Result<Metrics> {
    let data = paths::data_dir(args.pipeline.data.as_deref())?;
    let ds = Dataset::load(&data, Default::default())
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let emb = embed::embed_all(&ds, &args.pipeline.models.store()?, &args.pipeline.embed)?;
    let p = Rc::new(Prepared::new(&ds, &emb, &args.pipeline.train)?);
    p.print_counts();

    let mut entries = vec![Entry::new("random".into(), Rc::new(Random(args.pipeline.train.seed)), p.texts.clone())];
    let start = Instant::now();
    let regressor = Regressor::train(&p.images, &p.texts, &p.train, args.pipeline.train.seed)?;
    println!("trained the concatenation regressor in {:.1} s", start.elapsed().as_secs_f64());
    entries.push(Entry::new("regressor-concat (original task)".into(), Rc::new(regressor), p.texts.clone()));

    if !args.no_tfidf {
        // TF-IDF fitted on the training side's captions only.
        let caption_text = train::caption_texts(&ds);
        let test_text: BTreeMap<String, &str> =
            ds.test_queries.iter().map(|q| (q.query.to_string(), q.text.as_str())).collect();
        let text_of = |id: &str| -> &str {
            imsearch_types::QueryId::parse(id)
                .ok()
                .and_then(|q| caption_text.get(&q))
                .map(String::as_str)
                .or_else(|| test_text.get(id).copied())
                .unwrap_or("")
        };
        let train_docs: Vec<&str> = p.train.positives.iter().map(|&(t, _)| text_of(&p.text_ids[t])).collect();
        let tfidf = Tfidf::fit(&train_docs, TfidfOptions::default()).context("failed to fit TF-IDF")?;
        let all_texts: Vec<&str> = p.text_ids.iter().map(|id| text_of(id)).collect();
        let m = tfidf.transform_dense(&all_texts);
        let tfidf_texts = Tensor::from_vec(m.as_slice().to_vec(), (m.rows(), m.dim()), &Device::Cpu)?;
        let mut tfidf_config = p.fusion_config(&args.pipeline.train)?;
        tfidf_config.text_encoder = format!("tfidf-{}", m.dim());
        tfidf_config.text_dim = m.dim();
        let start = Instant::now();
        let (tfidf_model, _, _) = imsearch_fusion::train(
            tfidf_config,
            &train::train_config(&args.pipeline.train),
            &p.images,
            &tfidf_texts,
            &p.train,
            &p.validation,
            |_| {},
        )?;
        println!("trained the TF-IDF fusion model in {:.1} s", start.elapsed().as_secs_f64());
        entries.push(Entry::new(
            format!("fusion {} + tf-idf", p.image_encoder),
            Rc::new(Fusion::new(tfidf_model)),
            tfidf_texts,
        ));
    }

    // The fusion models: trained on the split, and (for the test set) the same configuration
    // retrained on every training image for the number of epochs validation chose.
    let members = fusion_members(&p, args, &args.pipeline.train, !args.no_retrain_all)?;
    for m in &members {
        entries.push(Entry {
            name: m.name.clone(),
            scorer: m.scorer.clone(),
            test_scorer: m.test_scorer.clone(),
            texts: p.texts.clone(),
        });
    }
    let fusion_models = members.len();
    let group = fusion_group(&members, |m| &m.scorer);
    let group_all = fusion_group(&members, |m| &m.test_scorer);
    if fusion_models > 1 {
        entries.push(Entry {
            name: format!("fusion ensemble ({fusion_models} models, equal weights)"),
            scorer: group.clone(),
            test_scorer: group_all.clone(),
            texts: p.texts.clone(),
        });
    }

    // More splits of the training images (the next seeds), for the ensemble's choices: one
    // split's 198 validation captions leave differences of 0.02 in MRR to chance. Each split
    // has its own fusion models and neighbours; their validation captions are pooled.
    let mut splits = vec![ValidationSplit { p: p.clone(), group: group.clone() }];
    for k in 1..args.validation_splits.max(1) {
        let opts = TrainOpts { seed: args.pipeline.train.seed + k as u64, ..args.pipeline.train.clone() };
        println!("validation split {} of {} (seed {})", k + 1, args.validation_splits, opts.seed);
        let q = Rc::new(Prepared::new(&ds, &emb, &opts)?);
        let members = fusion_members(&q, args, &opts, false)?;
        let group = fusion_group(&members, |m| &m.scorer);
        splits.push(ValidationSplit { p: q, group });
    }
    let pooled_queries: usize = splits.iter().map(|s| s.p.validation.positives.len()).sum();

    // The bridge from ImageNet classes into text space; its class texts (bare names or
    // "a photo of a ..." sentences) and its softmax temperature chosen on validation MRR.
    let store = args.pipeline.models.store()?;
    let mut encoders = Vec::new();
    for kind in args.pipeline.embed.kinds()? {
        let files = crate::models::ensure(&store, kind.id())?;
        let encoder = imsearch_vision::load(kind, &files.weights, &Device::Cpu)
            .with_context(|| format!("failed to load {kind}"))?;
        let dim = encoder.dim();
        encoders.push((encoder, dim));
    }
    let encoders = Rc::new(encoders);
    let class_texts: [(&str, ClassKey); 2] =
        [("names", embed::imagenet_key), ("sentences", embed::imagenet_prompt_key)];
    let mut chosen: Option<(Tensor, f64, f64, &str)> = None;
    for (texts_name, key) in class_texts {
        let class_keys: Vec<String> = (0..1000).map(key).collect();
        let classes = embed::rows(&emb.texts, &class_keys.iter().map(String::as_str).collect::<Vec<_>>())?;
        for temperature in BRIDGE_TEMPERATURES {
            let candidate = Bridge::new(encoders.clone(), classes.clone(), temperature);
            let mrr = pooled_mrr(&splits, &candidate)?;
            println!(
                "class bridge with class {texts_name}, temperature {temperature}: validation MRR {mrr:.3} \
                 ({pooled_queries} captions of {} splits)",
                splits.len()
            );
            if chosen.as_ref().is_none_or(|b| mrr > b.2) {
                chosen = Some((classes.clone(), temperature, mrr, texts_name));
            }
        }
    }
    let (classes, temperature, _, texts_name) = chosen.context("no bridge configuration")?;
    println!("class bridge: class {texts_name}, temperature {temperature} (chosen on validation)");
    let bridge = Bridge::new(encoders.clone(), classes, temperature);
    let bridge: Rc<dyn Scorer> = Rc::new(bridge);
    entries.push(Entry::new("ImageNet-class bridge (training-free)".into(), bridge.clone(), p.texts.clone()));

    // The training-free scorers, normalised over a bank of training captions: each image's
    // scores standardised by its scores for the bank's captions, so an image that matches
    // every text a little (a hub) no longer comes first for all of them. On validation the bank
    // is the training side's captions; on the test set, every training caption.
    let normalised =
        |s: &Rc<dyn Scorer>, bank: &Tensor| -> Rc<dyn Scorer> { Rc::new(BankNormalised::new(s.clone(), bank.clone())) };
    let banks = splits.iter().map(|s| caption_bank(&s.p, &[&s.p.train])).collect::<Result<Vec<_>>>()?;
    let bridge_bn: Vec<Rc<dyn Scorer>> = banks.iter().map(|b| normalised(&bridge, b)).collect();

    // Neighbours among the training captions: on validation the gallery is the training side;
    // on the test set, every training image. How many neighbours vote, and how sharply their
    // softmax weights favour the nearest, are chosen with the ensemble's weights, on the pooled
    // validation captions.
    // The fusion models' and the bridge's matrices do not depend on the neighbourhood: computed
    // once per split. So is each split's gallery.
    let matrix = |s: &Rc<dyn Scorer>, split: &ValidationSplit| validation_matrix(s.as_ref(), &split.p.texts, &split.p);
    let fixed = splits
        .iter()
        .zip(&bridge_bn)
        .map(|(split, bridge)| Ok((matrix(&split.group, split)?, matrix(bridge, split)?)))
        .collect::<Result<Vec<_>>>()?;
    let first = Neighbourhood { k: NEIGHBOURS_K[0], temperature: NEIGHBOURS_TEMPERATURES[0] };
    let galleries = splits.iter().map(|split| neighbours_of(&split.p, false, first)).collect::<Result<Vec<_>>>()?;
    let mut best: Option<(Neighbourhood, Vec<f32>, f64)> = None;
    for k in NEIGHBOURS_K {
        for temperature in NEIGHBOURS_TEMPERATURES {
            let hood = Neighbourhood { k, temperature };
            let mut mats = Vec::with_capacity(splits.len());
            for (((split, bank), gallery), (group, bridge)) in splits.iter().zip(&banks).zip(&galleries).zip(&fixed) {
                let neighbours: Rc<dyn Scorer> = Rc::new(gallery.with(hood));
                mats.push(vec![group.clone(), matrix(&normalised(&neighbours, bank), split)?, bridge.clone()]);
            }
            let (w, mrr) = choose_weights(&splits, &mats);
            println!(
                "caption neighbours: {k} at temperature {temperature}: ensemble weights {:.2} / {:.2} / {:.2}, \
                 validation MRR {mrr:.3}",
                w[0], w[1], w[2]
            );
            if best.as_ref().is_none_or(|b| mrr > b.2) {
                best = Some((hood, w, mrr));
            }
        }
    }
    let (hood, w, mrr) = best.context("no neighbours setting")?;
    let neighbours: Rc<dyn Scorer> = Rc::new(galleries[0].with(hood));
    let parts = vec![group.clone(), normalised(&neighbours, &banks[0]), bridge_bn[0].clone()];
    let neighbours_all: Rc<dyn Scorer> = Rc::new(neighbours_of(&p, true, hood)?);
    entries.push(Entry {
        name: "caption neighbours (training-free)".into(),
        scorer: neighbours.clone(),
        test_scorer: neighbours_all.clone(),
        texts: p.texts.clone(),
    });
    let bank_all = caption_bank(&p, &[&p.train, &p.validation])?;
    let neighbours_bn_all = normalised(&neighbours_all, &bank_all);
    let bridge_bn_all = normalised(&bridge, &bank_all);

    // The ensemble: the weights chosen above, on the pooled validation captions.
    let primary =
        validation_mrr(&combine(&parts.iter().map(|s| matrix(s, &splits[0])).collect::<Result<Vec<_>>>()?, &w), &p);
    println!(
        "ensemble: fusion models 1.00, caption neighbours {:.2} ({} at temperature {}), class bridge {:.2} \
         (both bank-normalised; validation MRR {mrr:.3} over {pooled_queries} captions of {} splits, {primary:.3} on \
         the first)",
        w[1],
        hood.k,
        hood.temperature,
        w[2],
        splits.len()
    );
    entries.push(Entry {
        name: "ensemble: fusion models + caption neighbours + class bridge".into(),
        scorer: Rc::new(Ensemble { parts: parts.into_iter().zip(w.iter().copied()).collect() }),
        test_scorer: Rc::new(Ensemble {
            parts: vec![(group_all, w[0]), (neighbours_bn_all, w[1]), (bridge_bn_all, w[2])],
        }),
        texts: p.texts.clone(),
    });

    // Validation first, for every model; the choice is made here.
    let mut validation = BTreeMap::new();
    for e in &entries {
        validation.insert(e.name.clone(), validate(e, &p)?);
    }
    let best = validation
        .iter()
        .max_by(|a, b| a.1.mrr.total_cmp(&b.1.mrr))
        .map(|(k, _)| k.clone())
        .expect("at least one model");

    // The test set, scored once per model.
    let test_ids: Vec<&str> = ds.test_images.iter().map(|r| r.image.as_str()).collect();
    let test_images = train::test_image_matrix(&emb, &test_ids)?;
    let column: BTreeMap<&str, usize> = test_ids.iter().enumerate().map(|(i, k)| (*k, i)).collect();
    let text_row: BTreeMap<&str, usize> = p.text_ids.iter().enumerate().map(|(i, k)| (k.as_str(), i)).collect();
    let policy = TextPolicy::default();
    let mut rows = Vec::new();
    let mut correct = Vec::new();
    let mut allowed = Vec::new();
    for q in &ds.test_queries {
        let key = q.query.to_string();
        let r = *text_row.get(key.as_str()).with_context(|| format!("no text embedding for test query {key}"))?;
        rows.push(r as u32);
        correct.push(column[q.image.as_str()]);
        allowed.push(policy.matched(&q.text).is_none());
    }
    let mut models = BTreeMap::new();
    let mut test_scoring_ms = 0.0;
    let mut test_image_preparation_ms = 0.0;
    // The best model first, so that its image-side work is timed in full (scorers share work
    // on the same images tensor).
    let order = entries.iter().filter(|e| e.name == best).chain(entries.iter().filter(|e| e.name != best));
    for e in order {
        let texts = e.texts.index_select(&Tensor::new(rows.as_slice(), &Device::Cpu)?, 0)?;
        let start = Instant::now();
        e.test_scorer.prepare(&test_images)?;
        let prepared = start.elapsed().as_secs_f64() * 1e3;
        let start = Instant::now();
        let scores = e.test_scorer.matrix(&test_images, &texts)?;
        if e.name == best {
            test_scoring_ms = start.elapsed().as_secs_f64() * 1e3;
            test_image_preparation_ms = prepared;
        }
        let ranks: Vec<usize> = scores.iter().zip(&correct).map(|(s, &c)| imsearch_eval::rank_of(s, c)).collect();
        let allowed_ranks: Vec<usize> = ranks.iter().zip(&allowed).filter(|(_, &a)| a).map(|(&r, _)| r).collect();
        models.insert(
            e.name.clone(),
            ModelMetrics {
                validation: validation.remove(&e.name).expect("validated"),
                test: RetrievalMetrics::from_ranks(&ranks).context("no test queries")?,
                test_allowed: RetrievalMetrics::from_ranks(&allowed_ranks).context("every test query is blocked")?,
            },
        );
    }
    Ok(Metrics {
        seed: args.pipeline.train.seed,
        best,
        models,
        test_queries: ds.test_queries.len(),
        test_queries_allowed: allowed.iter().filter(|&&a| a).count(),
        test_images: test_ids.len(),
        data: p.counts.clone(),
        test_scoring_ms,
        test_image_preparation_ms,
        test_models_retrained_on_all_images: !args.no_retrain_all,
    })
}

/// Scores of every validation caption (rows of `texts`) against every validation image.
fn validation_matrix(scorer: &dyn Scorer, texts: &Tensor, p: &Prepared) -> Result<Vec<Vec<f32>>> {
    let set = &p.validation;
    let candidates = p.images.index_select(&index(&set.candidates)?, 0)?;
    let queries = texts.index_select(&index(&set.positives.iter().map(|x| x.0).collect::<Vec<_>>())?, 0)?;
    scorer.matrix(&candidates, &queries)
}

/// The rank of each validation caption's own image in its row of `scores`.
fn validation_ranks(scores: &[Vec<f32>], p: &Prepared) -> Vec<usize> {
    let column: BTreeMap<usize, usize> = p.validation.candidates.iter().enumerate().map(|(k, &i)| (i, k)).collect();
    scores.iter().zip(&p.validation.positives).map(|(s, &(_, i))| imsearch_eval::rank_of(s, column[&i])).collect()
}

fn validation_mrr(scores: &[Vec<f32>], p: &Prepared) -> f64 {
    RetrievalMetrics::from_ranks(&validation_ranks(scores, p)).map_or(0.0, |r| r.mrr)
}

/// The weights of the other parts against the first (weight 1) that maximise the validation MRR
/// pooled over `splits`, on a grid of 0 to 3 in steps of 0.25; the earlier grid point wins ties.
/// `mats[s][part]` is each part's validation matrix on split `s`.
fn choose_weights(splits: &[ValidationSplit], mats: &[Vec<Vec<Vec<f32>>>]) -> (Vec<f32>, f64) {
    let n = mats[0].len();
    let grid: Vec<f32> = (0..=12).map(|step| step as f32 * 0.25).collect();
    let mut best = (vec![1.0; n], f64::NEG_INFINITY);
    let mut weights = vec![0usize; n - 1];
    loop {
        let w: Vec<f32> = std::iter::once(1.0).chain(weights.iter().map(|&i| grid[i])).collect();
        let ranks: Vec<usize> =
            splits.iter().zip(mats).flat_map(|(s, m)| validation_ranks(&combine(m, &w), &s.p)).collect();
        let mrr = RetrievalMetrics::from_ranks(&ranks).map_or(0.0, |r| r.mrr);
        if mrr > best.1 {
            best = (w, mrr);
        }
        // The next grid point, like an odometer.
        let Some(k) = weights.iter().position(|&i| i + 1 < grid.len()) else { break };
        weights[k] += 1;
        weights[..k].iter_mut().for_each(|i| *i = 0);
    }
    best
}

/// One split of the training images for validation: its pairs and its fusion ensemble.
struct ValidationSplit {
    p: Rc<Prepared>,
    group: Rc<dyn Scorer>,
}

/// Validation MRR of `scorer` pooled over the captions of every split.
fn pooled_mrr(splits: &[ValidationSplit], scorer: &dyn Scorer) -> Result<f64> {
    let mut ranks = Vec::new();
    for split in splits {
        ranks.extend(validation_ranks(&validation_matrix(scorer, &split.p.texts, &split.p)?, &split.p));
    }
    Ok(RetrievalMetrics::from_ranks(&ranks).map_or(0.0, |r| r.mrr))
}

/// A fusion model of the ensemble: its name in the table, its scorer for validation and its
/// scorer for the test set (retrained on every training image, or the same).
struct Member {
    name: String,
    scorer: Rc<dyn Scorer>,
    test_scorer: Rc<dyn Scorer>,
}

/// The fusion models of one split: the model on every image encoder, `--fusion-seeds` - 1 more
/// of it from the next initial seeds, and one model per image encoder when there are several.
/// Checkpoints are reused unless `--retrain`; `with_all` adds each one's all-images twin.
fn fusion_members(p: &Prepared, args: &Args, opts: &TrainOpts, with_all: bool) -> Result<Vec<Member>> {
    let load_or_train = |p: &Prepared, embed: &EmbedOpts, init_seed: u64| -> Result<Member> {
        let dir = train::checkpoint_dir_with(embed, opts, init_seed);
        let model = match FusionModel::load(&dir, &p.image_encoder, embed::TEXT_MODEL, &Device::Cpu) {
            Ok(model) if !args.retrain => {
                println!("reusing the checkpoint in {}", dir.display());
                model
            }
            _ => train::train_and_save_with(p, embed, opts, init_seed)?.0,
        };
        let all = if with_all {
            train::load_or_train_all_with(p, embed, opts, args.retrain, init_seed)?
        } else {
            model.clone()
        };
        let mut name = format!("fusion {} + {}", p.image_encoder, embed::TEXT_MODEL);
        if init_seed != opts.seed {
            name += &format!(", initial seed {init_seed}");
        }
        Ok(Member { name, scorer: Rc::new(Fusion::new(model)), test_scorer: Rc::new(Fusion::new(all)) })
    };
    let embed = &args.pipeline.embed;
    let mut members = Vec::new();
    for k in 0..args.fusion_seeds.max(1) {
        members.push(load_or_train(p, embed, opts.seed + k as u64)?);
    }
    if p.image_parts.len() > 1 && !args.no_members {
        for part in 0..p.image_parts.len() {
            let (mp, membed) = p.only(part, embed)?;
            let m = load_or_train(&mp, &membed, opts.seed)?;
            let (offset, dim) = p.columns(part);
            members.push(Member {
                name: m.name,
                scorer: Rc::new(Columns::new(m.scorer, offset, dim)),
                test_scorer: Rc::new(Columns::new(m.test_scorer, offset, dim)),
            });
        }
    }
    Ok(members)
}

/// The members' z-scores averaged with equal weights.
fn fusion_group(members: &[Member], side: impl Fn(&Member) -> &Rc<dyn Scorer>) -> Rc<dyn Scorer> {
    Rc::new(Ensemble { parts: members.iter().map(|m| (side(m).clone(), 1.0)).collect() })
}

/// How many gallery images vote for an image, and the temperature of their softmax weights.
#[derive(Debug, Clone, Copy)]
struct Neighbourhood {
    k: usize,
    temperature: f32,
}

/// The neighbourhoods tried on validation.
const NEIGHBOURS_K: [usize; 4] = [5, 10, 20, 40];
const NEIGHBOURS_TEMPERATURES: [f32; 4] = [0.02, 0.05, 0.1, 1.0];

/// Caption neighbours whose gallery is the training side of the split, or (`all`) every
/// training image with the validation side's captions and confirmed pairs too.
fn neighbours_of(p: &Prepared, all: bool, hood: Neighbourhood) -> Result<Neighbours> {
    let mut gallery: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &(t, i) in &p.train.positives {
        gallery.entry(i).or_default().push(t);
    }
    if !all {
        return Neighbours::new(&p.images, &p.texts, gallery, &p.train.candidates, hood);
    }
    for &(t, i) in &p.validation.positives {
        gallery.entry(i).or_default().push(t);
    }
    for &(i, t, y) in &p.validation.pairs {
        if y >= train::CONFIRMED {
            gallery.entry(i).or_default().push(t);
        }
    }
    let all_rows: Vec<usize> = (0..p.images.dims2()?.0).collect();
    Neighbours::new(&p.images, &p.texts, gallery, &all_rows, hood)
}

/// The MiniLM rows of the distinct captions of `sets`' positives.
fn caption_bank(p: &Prepared, sets: &[&PairSet]) -> Result<Tensor> {
    let rows: Vec<usize> = sets
        .iter()
        .flat_map(|s| s.positives.iter().map(|x| x.0))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    Ok(p.texts.index_select(&index(&rows)?, 0)?)
}

fn validate(e: &Entry, p: &Prepared) -> Result<Validation> {
    let set = &p.validation;
    let images = p.images.index_select(&index(&set.pairs.iter().map(|x| x.0).collect::<Vec<_>>())?, 0)?;
    let texts = e.texts.index_select(&index(&set.pairs.iter().map(|x| x.1).collect::<Vec<_>>())?, 0)?;
    let pred: Vec<f64> = e.scorer.pairs(&images, &texts)?.into_iter().map(f64::from).collect();
    let label: Vec<f64> = set.pairs.iter().map(|x| f64::from(x.2)).collect();
    let positive: Vec<bool> = label.iter().map(|&l| l >= 0.5).collect();
    let (mut expert_pred, mut expert_grade) = (Vec::new(), Vec::new());
    for (pair, &s) in p.validation_pairs.iter().zip(&pred) {
        if let Some(g) = pair.sources.expert {
            expert_pred.push(s);
            expert_grade.push(f64::from(g.mean()));
        }
    }
    // Retrieval: each validation caption against every validation image.
    let scores = validation_matrix(e.scorer.as_ref(), &e.texts, p)?;
    let r = RetrievalMetrics::from_ranks(&validation_ranks(&scores, p)).context("no validation captions")?;
    Ok(Validation {
        mae: mae(&pred, &label),
        rmse: rmse(&pred, &label),
        roc_auc: roc_auc(&pred, &positive),
        kendall_tau_b: kendall_tau_b(&pred, &label),
        spearman: spearman(&pred, &label),
        kendall_tau_c_expert: kendall_tau_c(&expert_pred, &expert_grade),
        recall_at_1: r.recall_at_1,
        recall_at_5: r.recall_at_5,
        recall_at_10: r.recall_at_10,
        mrr: r.mrr,
    })
}

fn print_table(m: &Metrics) {
    let f = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.3}"));
    println!(
        "\n{:<58} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6}",
        "model", "MAE", "AUC", "tau-b", "tau-c", "MRR", "R@1", "R@5", "R@10", "MRR", "medR", "R@1*", "MRR*"
    );
    println!("{:<58} | {:^34} | {:^34} | {:^13}", "", "validation", "test (500 queries x 100 images)", "allowed*");
    for (name, x) in &m.models {
        let v = &x.validation;
        println!(
            "{name:<58} | {:>6} {:>6} {:>6} {:>6} {:>6.3} | {:>6.3} {:>6.3} {:>6.3} {:>6.3} {:>6.1} | {:>6.3} {:>6.3}",
            f(v.mae),
            f(v.roc_auc),
            f(v.kendall_tau_b),
            f(v.kendall_tau_c_expert),
            v.mrr,
            x.test.recall_at_1,
            x.test.recall_at_5,
            x.test.recall_at_10,
            x.test.mrr,
            x.test.median_rank,
            x.test_allowed.recall_at_1,
            x.test_allowed.mrr
        );
    }
    println!(
        "* test queries the compliance text policy lets through: {} of {}; scoring all test pairs with the best model took {:.1} ms \
         (after {:.1} ms of work on the test images alone, as indexing does)",
        m.test_queries_allowed, m.test_queries, m.test_scoring_ms, m.test_image_preparation_ms
    );
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// Scores from a fixed table: `table[text][image]`, where a text's row is its first feature
    /// and an image's column its first feature. Counts its calls.
    struct Table {
        table: Vec<Vec<f32>>,
        calls: Cell<usize>,
    }

    impl Scorer for Table {
        fn matrix(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
            self.calls.set(self.calls.get() + 1);
            let cols: Vec<f32> = images.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
            let rows: Vec<f32> = texts.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
            Ok(rows.iter().map(|&t| cols.iter().map(|&i| self.table[t as usize][i as usize]).collect()).collect())
        }
        fn pairs(&self, _images: &Tensor, _texts: &Tensor) -> Result<Vec<f32>> {
            unreachable!("not used here")
        }
    }

    fn column(values: &[f32]) -> Tensor {
        Tensor::from_vec(values.to_vec(), (values.len(), 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn bank_normalisation_demotes_a_hub_and_reuses_its_statistics() {
        // Image 0 scores 0.8 with every text (a hub); image 1 scores 0.1 with the bank's texts
        // and 0.6 with the query: the query is far more typical of image 1.
        let table = vec![
            vec![0.8, 0.6], // text 0: the query
            vec![0.8, 0.1], // texts 1-3: the bank
            vec![0.79, 0.12],
            vec![0.81, 0.08],
        ];
        let inner = Rc::new(Table { table, calls: Cell::new(0) });
        let images = column(&[0.0, 1.0]);
        let query = column(&[0.0]);
        assert!(inner.matrix(&images, &query).unwrap()[0][0] > inner.matrix(&images, &query).unwrap()[0][1]);
        let normalised = BankNormalised::new(inner.clone(), column(&[1.0, 2.0, 3.0]));
        normalised.prepare(&images).unwrap();
        let calls = inner.calls.get();
        let s = normalised.matrix(&images, &query).unwrap();
        assert!(s[0][1] > s[0][0], "the hub still wins: {s:?}");
        assert!(s.iter().flatten().all(|v| (0.0..=1.0).contains(v)), "{s:?}");
        // The bank statistics were kept: one more call, for the query alone.
        assert_eq!(inner.calls.get(), calls + 1);
        // A new images tensor gets its own statistics.
        normalised.matrix(&column(&[1.0, 0.0]), &query).unwrap();
        assert_eq!(inner.calls.get(), calls + 3);
    }

    #[test]
    fn combine_z_scores_each_query_before_weighting() {
        // Two scorers on different scales; the second's z-scores decide when weighted higher.
        let a = vec![vec![0.0, 1.0, 2.0]];
        let b = vec![vec![300.0, 100.0, 200.0]];
        let out = combine(&[a.clone(), b.clone()], &[1.0, 3.0]);
        let best = out[0].iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!(best, 0);
        let out = combine(&[a, b], &[1.0, 0.0]);
        let best = out[0].iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).unwrap().0;
        assert_eq!(best, 2);
        assert!(out[0].iter().sum::<f32>().abs() < 1e-5, "z-scores sum to zero: {out:?}");
    }
}
