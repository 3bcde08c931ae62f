//! The scorer interface and the scorers that wrap others: a fusion model, one encoder's
//! columns, query-bank normalisation and the z-scored ensemble.

use std::sync::Arc;

use candle::Tensor;
use imsearch_fusion::FusionModel;

use crate::{neighbours::Votes, Result};

/// Scores texts against images from this scorer's own feature rows.
///
/// The work on the images alone ([`Scorer::prepare`]) is done once per collection and kept by
/// the caller, as an index keeps it; [`Scorer::matrix`] takes it back. A [`Prepared`] must come
/// from the same scorer's `prepare`.
pub trait Scorer: Send + Sync {
    /// The work that depends on the images alone: `(m, d)` features.
    fn prepare(&self, images: &Tensor) -> Result<Prepared>;
    /// `q` texts against the prepared `m` images: `q` rows of `m` scores in 0..1.
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>>;
    /// Matched rows: `(n, _), (n, _) -> n` scores in 0..1.
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>>;
}

/// A collection of images after a scorer's [`Scorer::prepare`].
#[derive(Debug, Clone)]
pub struct Prepared {
    images: Tensor,
    pub(crate) state: State,
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Nothing beyond the features.
    Plain,
    /// The images in the scorer's own space (a fusion model's projections, the bridge's text space).
    Projected(Tensor),
    /// Each image's neighbours and their weights.
    Votes(Arc<Votes>),
    /// The inner scorer's preparation and each image's statistics over the bank.
    Bank { inner: Box<Prepared>, mean: Vec<f32>, inv_std: Vec<f32> },
    /// Each part's preparation (`None` for a part with weight 0).
    Parts(Vec<Option<Prepared>>),
}

impl Prepared {
    /// Features with no work done on them.
    pub fn plain(images: &Tensor) -> Self {
        Prepared { images: images.clone(), state: State::Plain }
    }

    pub(crate) fn new(images: &Tensor, state: State) -> Self {
        Prepared { images: images.clone(), state }
    }

    /// The features this preparation was made from.
    pub fn images(&self) -> &Tensor {
        &self.images
    }

    /// Images prepared.
    pub fn len(&self) -> usize {
        self.images.dims().first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A fusion model as a scorer; `prepare` projects the images once.
#[derive(Debug, Clone)]
pub struct Fusion {
    pub model: FusionModel,
}

impl Fusion {
    pub fn new(model: FusionModel) -> Self {
        Fusion { model }
    }
}

impl Scorer for Fusion {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        Ok(Prepared::new(images, State::Projected(self.model.embed_images(images)?)))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let projected = match &images.state {
            State::Projected(p) => p.clone(),
            _ => self.model.embed_images(images.images())?,
        };
        let logits = self.model.logit_matrix(&projected, &self.model.embed_texts(texts)?)?;
        Ok(candle_nn::ops::sigmoid(&logits)?.to_vec2()?)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let z = self.model.pair_logits(&self.model.embed_images(images)?, &self.model.embed_texts(texts)?)?;
        Ok(candle_nn::ops::sigmoid(&z)?.to_vec1()?)
    }
}

/// A scorer that reads some columns of the image features (one encoder's slice of the
/// concatenation).
#[derive(Clone)]
pub struct Columns {
    pub inner: Arc<dyn Scorer>,
    pub offset: usize,
    pub dim: usize,
}

impl Columns {
    pub fn new(inner: Arc<dyn Scorer>, offset: usize, dim: usize) -> Self {
        Columns { inner, offset, dim }
    }

    fn slice(&self, images: &Tensor) -> Result<Tensor> {
        Ok(images.narrow(1, self.offset, self.dim)?.contiguous()?)
    }
}

impl Scorer for Columns {
    /// The inner scorer's preparation of the columns (so [`Scorer::matrix`] passes it on).
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        self.inner.prepare(&self.slice(images)?)
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        self.inner.matrix(images, texts)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        self.inner.pairs(&self.slice(images)?, texts)
    }
}

/// Scorers combined after z-scoring each one's scores per query (over the collection), with
/// weights; mapped into 0..1 by `0.5 + atan(z / sum of weights) / pi` (ranks unchanged). Pair
/// scores are the first part's (the calibrated fusion models).
#[derive(Clone)]
pub struct Ensemble {
    pub parts: Vec<(Arc<dyn Scorer>, f32)>,
}

impl Ensemble {
    pub fn new(parts: Vec<(Arc<dyn Scorer>, f32)>) -> Self {
        Ensemble { parts }
    }

    /// Equal weights.
    pub fn equal(parts: impl IntoIterator<Item = Arc<dyn Scorer>>) -> Self {
        Ensemble { parts: parts.into_iter().map(|p| (p, 1.0)).collect() }
    }
}

impl Scorer for Ensemble {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        // A part with weight 0 changes nothing: it is not computed.
        let parts = self
            .parts
            .iter()
            .map(|(s, w)| if *w != 0.0 { s.prepare(images).map(Some) } else { Ok(None) })
            .collect::<Result<Vec<_>>>()?;
        Ok(Prepared::new(images, State::Parts(parts)))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let prepared = match &images.state {
            State::Parts(p) if p.len() == self.parts.len() => p.clone(),
            _ => match self.prepare(images.images())?.state {
                State::Parts(p) => p,
                _ => unreachable!("an ensemble prepares parts"),
            },
        };
        let mut mats = Vec::new();
        let mut weights = Vec::new();
        for ((scorer, w), p) in self.parts.iter().zip(&prepared) {
            if let Some(p) = p {
                mats.push(scorer.matrix(p, texts)?);
                weights.push(*w);
            }
        }
        if mats.is_empty() {
            return Err(crate::Error::Invalid("an ensemble with every weight 0".into()));
        }
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
}

/// Query-bank normalisation: each image's score for a text standardised by the mean and
/// spread of its scores for a bank of other texts, mapped into 0..1 linearly from
/// `-BANK_Z_RANGE..BANK_Z_RANGE` (a map that keeps both the ranks and the ensemble's per-query
/// z-scores; a squashing map such as atan changed the ensemble's validation MRR from 0.435 to
/// 0.416). Pair scores are the inner scorer's.
pub const BANK_Z_RANGE: f32 = 50.0;

#[derive(Clone)]
pub struct BankNormalised {
    pub inner: Arc<dyn Scorer>,
    /// `(b, _)` text rows of the bank.
    pub bank: Tensor,
}

impl BankNormalised {
    pub fn new(inner: Arc<dyn Scorer>, bank: Tensor) -> Self {
        BankNormalised { inner, bank }
    }
}

impl Scorer for BankNormalised {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        let inner = self.inner.prepare(images)?;
        let bank = self.inner.matrix(&inner, &self.bank)?;
        let n = bank.len().max(1) as f32;
        let columns = inner.len();
        let mean: Vec<f32> = (0..columns).map(|c| bank.iter().map(|r| r[c]).sum::<f32>() / n).collect();
        let inv_std: Vec<f32> = (0..columns)
            .map(|c| 1.0 / (bank.iter().map(|r| (r[c] - mean[c]).powi(2)).sum::<f32>() / n).sqrt().max(1e-9))
            .collect();
        Ok(Prepared::new(images, State::Bank { inner: Box::new(inner), mean, inv_std }))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let fresh;
        let (inner, mean, inv_std) = match &images.state {
            State::Bank { inner, mean, inv_std } => (inner.as_ref(), mean, inv_std),
            _ => {
                fresh = self.prepare(images.images())?;
                match &fresh.state {
                    State::Bank { inner, mean, inv_std } => (inner.as_ref(), mean, inv_std),
                    _ => unreachable!("bank normalisation prepares a bank"),
                }
            }
        };
        let scores = self.inner.matrix(inner, texts)?;
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
pub fn combine(mats: &[Vec<Vec<f32>>], weights: &[f32]) -> Vec<Vec<f32>> {
    let z = |row: &[f32]| -> Vec<f32> {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let std = (row.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt().max(1e-9);
        row.iter().map(|v| (v - mean) / std).collect()
    };
    let Some(first) = mats.first() else { return Vec::new() };
    (0..first.len())
        .map(|q| {
            let mut out = vec![0.0; first[q].len()];
            for (m, &w) in mats.iter().zip(weights) {
                for (o, v) in out.iter_mut().zip(z(&m[q])) {
                    *o += w * v;
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle::Device;

    use super::*;

    /// Scores from a fixed table: `table[text][image]`, where a text's row is its first feature
    /// and an image's column its first feature. Counts its `matrix` calls.
    struct Table {
        table: Vec<Vec<f32>>,
        calls: AtomicUsize,
    }

    impl Scorer for Table {
        fn prepare(&self, images: &Tensor) -> Result<Prepared> {
            Ok(Prepared::plain(images))
        }
        fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let cols: Vec<f32> = images.images().narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
            let rows: Vec<f32> = texts.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
            Ok(rows.iter().map(|&t| cols.iter().map(|&i| self.table[t as usize][i as usize]).collect()).collect())
        }
        fn pairs(&self, _images: &Tensor, _texts: &Tensor) -> Result<Vec<f32>> {
            Err(crate::Error::Invalid("not used here".into()))
        }
    }

    fn column(values: &[f32]) -> Tensor {
        Tensor::from_vec(values.to_vec(), (values.len(), 1), &Device::Cpu).unwrap()
    }

    #[test]
    fn bank_normalisation_demotes_a_hub_and_keeps_its_statistics_in_the_preparation() {
        // Image 0 scores 0.8 with every text (a hub); image 1 scores 0.1 with the bank's texts
        // and 0.6 with the query: the query is far more typical of image 1.
        let table = vec![
            vec![0.8, 0.6], // text 0: the query
            vec![0.8, 0.1], // texts 1-3: the bank
            vec![0.79, 0.12],
            vec![0.81, 0.08],
        ];
        let inner = Arc::new(Table { table, calls: AtomicUsize::new(0) });
        let images = column(&[0.0, 1.0]);
        let query = column(&[0.0]);
        let plain = inner.matrix(&Prepared::plain(&images), &query).unwrap();
        assert!(plain[0][0] > plain[0][1]);
        let normalised = BankNormalised::new(inner.clone(), column(&[1.0, 2.0, 3.0]));
        let prepared = normalised.prepare(&images).unwrap();
        let calls = inner.calls.load(Ordering::SeqCst);
        let s = normalised.matrix(&prepared, &query).unwrap();
        assert!(s[0][1] > s[0][0], "the hub still wins: {s:?}");
        assert!(s.iter().flatten().all(|v| (0.0..=1.0).contains(v)), "{s:?}");
        // The bank statistics were kept: one more call, for the query alone.
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls + 1);
        // Features without a preparation get their own statistics first.
        normalised.matrix(&Prepared::plain(&column(&[1.0, 0.0])), &query).unwrap();
        assert_eq!(inner.calls.load(Ordering::SeqCst), calls + 3);
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

    #[test]
    fn an_ensemble_skips_parts_of_weight_zero_and_keeps_ranks_in_0_1() {
        let a = Arc::new(Table { table: vec![vec![0.1, 0.9, 0.5]], calls: AtomicUsize::new(0) });
        let b = Arc::new(Table { table: vec![vec![0.9, 0.1, 0.5]], calls: AtomicUsize::new(0) });
        let e = Ensemble::new(vec![(a.clone() as Arc<dyn Scorer>, 1.0), (b.clone() as Arc<dyn Scorer>, 0.0)]);
        let images = column(&[0.0, 1.0, 2.0]);
        let p = e.prepare(&images).unwrap();
        let s = e.matrix(&p, &column(&[0.0])).unwrap();
        assert_eq!(b.calls.load(Ordering::SeqCst), 0);
        assert!(s[0][1] > s[0][2] && s[0][2] > s[0][0], "{s:?}");
        assert!(s[0].iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn scorers_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Fusion>();
        check::<Columns>();
        check::<Ensemble>();
        check::<BankNormalised>();
        check::<crate::Neighbours>();
        check::<crate::Bridge>();
        check::<Prepared>();
    }
}
