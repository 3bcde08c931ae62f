//! The scorer interface and the scorers that wrap others: a fusion model, one encoder's
//! columns, query-bank normalisation and the z-scored ensemble.

use std::{collections::HashMap, sync::Arc};

use candle::Tensor;
use imsearch_fusion::FusionModel;
use imsearch_index::I8Rows;
use rayon::prelude::*;

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

/// A collection of images after a scorer's [`Scorer::prepare`]: the scorer's own state per
/// image and, until [`Prepared::without_features`] drops them, the features it was made from.
#[derive(Debug, Clone)]
pub struct Prepared {
    images: Option<Tensor>,
    len: usize,
    pub(crate) state: State,
}

#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Nothing beyond the features.
    Plain,
    /// The images in the scorer's own space (a fusion model's projections, the bridge's text
    /// space), stored as 8-bit codes ([`stored`]).
    Projected(Arc<I8Rows>),
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
        Prepared::new(images, State::Plain)
    }

    pub(crate) fn new(images: &Tensor, state: State) -> Self {
        Prepared { images: Some(images.clone()), len: images.dims().first().copied().unwrap_or(0), state }
    }

    /// The features this preparation was made from; an error once
    /// [`Prepared::without_features`] dropped them.
    pub fn images(&self) -> Result<&Tensor> {
        self.images
            .as_ref()
            .ok_or_else(|| crate::Error::Invalid("this preparation kept no features: prepare the images again".into()))
    }

    /// The same preparation without the features it was made from, where its scorer's state
    /// is all that scoring reads. For the default engine a search then keeps about 2.7 KB per
    /// image (2,432 8-bit codes and 9 scales of the eight members' and the bridge's spaces, 20
    /// neighbours and their weights, two bank statistics per bank-normalised scorer) instead of
    /// 15 KB with the 3,840 f32 features. Features that are the state itself
    /// ([`Prepared::plain`]) are kept.
    pub fn without_features(self) -> Prepared {
        let state = match self.state {
            State::Plain => return self,
            State::Bank { inner, mean, inv_std } => {
                State::Bank { inner: Box::new(inner.without_features()), mean, inv_std }
            }
            State::Parts(parts) => State::Parts(parts.into_iter().map(|p| p.map(Prepared::without_features)).collect()),
            other => other,
        };
        Prepared { images: None, len: self.len, state }
    }

    /// The images in each of the scorers' own spaces, in a fixed order: the fusion members'
    /// projections and the bridge's text space (`n` rows of 8-bit codes each). What "more like
    /// this" compares: two photos alike in these spaces match the same captions.
    pub fn spaces(&self) -> Vec<&I8Rows> {
        match &self.state {
            State::Projected(t) => vec![t.as_ref()],
            State::Bank { inner, .. } => inner.spaces(),
            State::Parts(parts) => parts.iter().flatten().flat_map(Prepared::spaces).collect(),
            State::Plain | State::Votes(_) => Vec::new(),
        }
    }

    /// Preparations of consecutive blocks of rows joined into the preparation of all their
    /// rows, in order (every scorer's state is per image). The features are kept only if every
    /// block kept them.
    pub fn concat(blocks: Vec<Prepared>) -> Result<Prepared> {
        let invalid = |what: &str| crate::Error::Invalid(format!("preparations of different scorers joined: {what}"));
        let len = blocks.iter().map(Prepared::len).sum();
        let images = match blocks.iter().map(|b| b.images.as_ref()).collect::<Option<Vec<_>>>() {
            Some(all) if !all.is_empty() => Some(Tensor::cat(&all, 0)?),
            _ => None,
        };
        let Some(first) = blocks.first() else { return Err(invalid("no block")) };
        let state = match &first.state {
            State::Plain => State::Plain,
            State::Projected(_) => {
                let rows = blocks
                    .iter()
                    .map(|b| match &b.state {
                        State::Projected(t) => Ok(t.as_ref()),
                        _ => Err(invalid("projected rows")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                State::Projected(Arc::new(I8Rows::concat(&rows).ok_or_else(|| invalid("projected rows' widths"))?))
            }
            State::Votes(_) => {
                let votes = blocks
                    .iter()
                    .map(|b| match &b.state {
                        State::Votes(v) => Ok(v.as_ref()),
                        _ => Err(invalid("neighbours")),
                    })
                    .collect::<Result<Vec<_>>>()?;
                State::Votes(Arc::new(Votes::concat(&votes).ok_or_else(|| invalid("neighbourhoods"))?))
            }
            State::Bank { .. } => {
                let (mut inner, mut mean, mut inv_std) = (Vec::new(), Vec::new(), Vec::new());
                for b in blocks.iter() {
                    let State::Bank { inner: i, mean: m, inv_std: s } = &b.state else { return Err(invalid("bank")) };
                    inner.push(i.as_ref().clone());
                    mean.extend_from_slice(m);
                    inv_std.extend_from_slice(s);
                }
                State::Bank { inner: Box::new(Prepared::concat(inner)?), mean, inv_std }
            }
            State::Parts(first_parts) => {
                let mut parts = Vec::with_capacity(first_parts.len());
                for at in 0..first_parts.len() {
                    let column = blocks
                        .iter()
                        .map(|b| match &b.state {
                            State::Parts(p) if p.len() == first_parts.len() => Ok(p[at].clone()),
                            _ => Err(invalid("ensemble parts")),
                        })
                        .collect::<Result<Vec<_>>>()?;
                    parts.push(match column.iter().all(Option::is_some) {
                        true => Some(Prepared::concat(column.into_iter().flatten().collect())?),
                        false if column.iter().all(Option::is_none) => None,
                        false => return Err(invalid("ensemble parts")),
                    });
                }
                State::Parts(parts)
            }
        };
        Ok(Prepared { images, len, state })
    }

    /// The preparation of rows `rows` alone, in that order (features dropped); a row past the
    /// end is an error.
    pub fn select(&self, rows: &[usize]) -> Result<Prepared> {
        if let Some(&r) = rows.iter().find(|&&r| r >= self.len) {
            return Err(crate::Error::Invalid(format!("row {r} selected from a preparation of {} rows", self.len)));
        }
        let index = crate::neighbours::index(rows)?;
        let state = match &self.state {
            State::Plain => State::Plain,
            State::Projected(t) => State::Projected(Arc::new(t.select(rows))),
            State::Votes(v) => State::Votes(Arc::new(v.select(rows))),
            State::Bank { inner, mean, inv_std } => State::Bank {
                inner: Box::new(inner.select(rows)?),
                mean: rows.iter().map(|&r| mean[r]).collect(),
                inv_std: rows.iter().map(|&r| inv_std[r]).collect(),
            },
            State::Parts(parts) => State::Parts(
                parts.iter().map(|p| p.as_ref().map(|p| p.select(rows)).transpose()).collect::<Result<_>>()?,
            ),
        };
        let images = match (&self.state, &self.images) {
            (State::Plain, Some(images)) => Some(images.index_select(&index, 0)?),
            _ => None,
        };
        Ok(Prepared { images, len: rows.len(), state })
    }

    /// Its state as named tensors under `prefix`, for [`Prepared::from_tensors`]; the features
    /// are stored only where they are the state ([`Prepared::plain`]).
    pub(crate) fn to_tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) -> Result<()> {
        let cpu = &candle::Device::Cpu;
        let kind = |k: u8| Tensor::from_vec(vec![k], 1, cpu);
        match &self.state {
            State::Plain => {
                out.insert(format!("{prefix}.kind"), kind(0)?);
                out.insert(format!("{prefix}.features"), self.images()?.clone());
            }
            State::Projected(t) => {
                out.insert(format!("{prefix}.kind"), kind(1)?);
                // The codes' bits as bytes (candle has no 8-bit signed type).
                let bytes: Vec<u8> = t.codes().iter().map(|&c| c as u8).collect();
                out.insert(format!("{prefix}.codes"), Tensor::from_vec(bytes, (t.len(), t.dim()), cpu)?);
                out.insert(format!("{prefix}.scales"), Tensor::from_slice(t.scales(), t.len(), cpu)?);
            }
            State::Votes(v) => {
                out.insert(format!("{prefix}.kind"), kind(2)?);
                v.to_tensors(prefix, out)?;
            }
            State::Bank { inner, mean, inv_std } => {
                out.insert(format!("{prefix}.kind"), kind(3)?);
                out.insert(format!("{prefix}.mean"), Tensor::from_slice(mean, mean.len(), cpu)?);
                out.insert(format!("{prefix}.inv_std"), Tensor::from_slice(inv_std, inv_std.len(), cpu)?);
                inner.to_tensors(&format!("{prefix}.inner"), out)?;
            }
            State::Parts(parts) => {
                out.insert(format!("{prefix}.kind"), kind(4)?);
                let present: Vec<u8> = parts.iter().map(|p| u8::from(p.is_some())).collect();
                out.insert(format!("{prefix}.present"), Tensor::from_vec(present, parts.len(), cpu)?);
                for (i, p) in parts.iter().enumerate() {
                    if let Some(p) = p {
                        p.to_tensors(&format!("{prefix}.{i}"), out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The inverse of [`Prepared::to_tensors`] for `len` rows; `None` when a tensor is missing
    /// or of the wrong shape.
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, prefix: &str, len: usize) -> Option<Prepared> {
        let get = |name: &str| t.get(&format!("{prefix}.{name}"));
        let floats = |name: &str| -> Option<Vec<f32>> {
            let v: Vec<f32> = get(name)?.to_dtype(candle::DType::F32).ok()?.to_vec1().ok()?;
            (v.len() == len).then_some(v)
        };
        let kind: Vec<u8> = get("kind")?.to_vec1().ok()?;
        let (images, state) = match kind.as_slice() {
            [0] => (Some(get("features")?.clone()), State::Plain),
            [1] => {
                let codes = get("codes")?;
                let (n, dim) = codes.dims2().ok()?;
                let bytes: Vec<u8> = codes.flatten_all().ok()?.to_vec1().ok()?;
                let scales = floats("scales")?;
                let rows = I8Rows::from_parts(dim, bytes.into_iter().map(|b| b as i8).collect(), scales)?;
                (n == len).then_some((None, State::Projected(Arc::new(rows))))?
            }
            [2] => (None, State::Votes(Arc::new(Votes::from_tensors(t, prefix, len)?))),
            [3] => {
                let inner = Prepared::from_tensors(t, &format!("{prefix}.inner"), len)?;
                (None, State::Bank { inner: Box::new(inner), mean: floats("mean")?, inv_std: floats("inv_std")? })
            }
            [4] => {
                let present: Vec<u8> = get("present")?.to_vec1().ok()?;
                let parts = present
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| match p {
                        0 => Some(None),
                        _ => Prepared::from_tensors(t, &format!("{prefix}.{i}"), len).map(Some),
                    })
                    .collect::<Option<Vec<_>>>()?;
                (None, State::Parts(parts))
            }
            _ => return None,
        };
        if let Some(images) = &images {
            if images.dims2().ok()?.0 != len {
                return None;
            }
        }
        Some(Prepared { images, len, state })
    }

    /// Row `row`'s state alone as bytes (a small safetensors file), for a store that keeps each
    /// image's row apart ([`Prepared::from_row_bytes`] reads rows back).
    pub fn row_bytes(&self, row: usize) -> Result<Vec<u8>> {
        let mut tensors = HashMap::new();
        self.select(&[row])?.to_tensors("p", &mut tensors)?;
        candle_safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None)
            .map_err(|e| crate::Error::Invalid(format!("cannot serialise a prepared row: {e}")))
    }

    /// Rows written by [`Prepared::row_bytes`] (by the same scorer), joined in order; an error
    /// naming the first row that does not read.
    pub fn from_row_bytes(rows: &[&[u8]]) -> Result<Prepared> {
        let one = |(i, bytes): (usize, &&[u8])| -> Result<Prepared> {
            let bad = |why: String| crate::Error::Invalid(format!("prepared row {i}: {why}"));
            let tensors =
                candle::safetensors::load_buffer(bytes, &candle::Device::Cpu).map_err(|e| bad(e.to_string()))?;
            Prepared::from_tensors(&tensors, "p", 1).ok_or_else(|| bad("tensors of the wrong shape".into()))
        };
        // Joined a block at a time: one join of a million one-row blocks copies too often.
        let blocks = rows
            .chunks(ROW_BYTES_BLOCK)
            .enumerate()
            .map(|(b, chunk)| {
                let rows = chunk
                    .iter()
                    .enumerate()
                    .map(|(i, r)| one((b * ROW_BYTES_BLOCK + i, r)))
                    .collect::<Result<Vec<_>>>()?;
                Prepared::concat(rows)
            })
            .collect::<Result<Vec<_>>>()?;
        Prepared::concat(blocks)
    }

    /// Row `row` as one vector whose inner product with another row's is their [`likeness`]:
    /// each space's row at unit length (zero where the row is zero), over the square root of the
    /// number of spaces, side by side. What a vector database searches "more like this" with.
    pub fn like_vector(&self, row: usize) -> Result<Vec<f32>> {
        let spaces = self.spaces();
        if spaces.is_empty() {
            return Err(crate::Error::Invalid("more like this needs a preparation with image spaces".into()));
        }
        let scale = 1.0 / (spaces.len() as f32).sqrt();
        let mut out = Vec::new();
        for space in spaces {
            if row >= space.len() {
                return Err(crate::Error::Invalid(format!("row {row} of {} prepared rows", space.len())));
            }
            let v = space.row(row);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let k = if norm > 0.0 { scale / norm } else { 0.0 };
            out.extend(v.iter().map(|x| x * k));
        }
        Ok(out)
    }

    /// Images prepared.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Rows read back per join in [`Prepared::from_row_bytes`].
const ROW_BYTES_BLOCK: usize = 1024;

/// Rows per block of [`prepare_for_search`]: each block's temporaries stay a few MB.
pub const PREPARE_BLOCK: usize = 2048;

/// `scorer`'s preparation of `images` for a search: in blocks of [`PREPARE_BLOCK`] rows (the
/// temporaries of one preparation of 100,000 rows run to GBs, and fresh pages cost as much as
/// the arithmetic), each without its features ([`Prepared::without_features`]), joined.
pub fn prepare_for_search(scorer: &dyn Scorer, images: &Tensor) -> Result<Prepared> {
    let rows = images.dims2()?.0;
    if rows <= PREPARE_BLOCK {
        return Ok(scorer.prepare(images)?.without_features());
    }
    let blocks = (0..rows)
        .step_by(PREPARE_BLOCK)
        .map(|at| Ok(scorer.prepare(&images.narrow(0, at, PREPARE_BLOCK.min(rows - at))?)?.without_features()))
        .collect::<Result<Vec<_>>>()?;
    Prepared::concat(blocks)
}

/// Up to this many texts at once (a search), scorers take the dot products of texts and
/// prepared images from imsearch-index's [`imsearch_index::dot_matrix`], which reads the
/// images' rows once on every core; more (an evaluation, a query bank) go through candle's
/// matrix product.
pub(crate) const FEW_TEXTS: usize = 8;

/// Image rows in a scorer's own space as they are kept: 8-bit codes with a scale per row
/// ([`I8Rows`]). A search reads every prepared image row for each query, so its time is the
/// rows' memory traffic, and 8-bit codes halve f16's (and the memory a collection holds). The
/// scorers read the same values in an evaluation ([`Scorer::matrix`] with many texts,
/// [`Scorer::pairs`]), so a search ranks as the evaluation measured.
pub(crate) fn stored(rows: &Tensor) -> Result<Arc<I8Rows>> {
    let (_, d) = rows.dims2()?;
    let values: Vec<f32> = rows.to_dtype(candle::DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(Arc::new(I8Rows::quantise(&values, d.max(1))))
}

/// [`stored`] rows' values, `(n, d)` f32.
pub(crate) fn as_stored(rows: &Tensor) -> Result<Tensor> {
    values(stored(rows)?.as_ref())
}

/// `rows`' values as an `(n, d)` f32 tensor.
fn values(rows: &I8Rows) -> Result<Tensor> {
    Ok(Tensor::from_vec(rows.values(), (rows.len(), rows.dim()), &candle::Device::Cpu)?)
}

/// Every row of `texts` `(q, d)` dotted with every row of `images`, then `map`ped: `q` rows of
/// `images.len()`. `map` must be what `tensor_map` does to candle's product.
pub(crate) fn dots(
    texts: &Tensor,
    images: &I8Rows,
    map: impl Fn(f32) -> f32 + Sync,
    tensor_map: impl Fn(Tensor) -> candle::Result<Tensor>,
) -> Result<Vec<Vec<f32>>> {
    let (q, d) = texts.dims2()?;
    if images.dim() != d {
        return Err(crate::Error::Invalid(format!(
            "texts of dimension {d} against images of dimension {}",
            images.dim()
        )));
    }
    if q > FEW_TEXTS {
        return Ok(tensor_map(texts.matmul(&values(images)?.t()?)?)?.to_vec2()?);
    }
    let queries: Vec<f32> = texts.to_dtype(candle::DType::F32)?.flatten_all()?.to_vec1()?;
    Ok(images.dots_map(&queries, map))
}

/// The Euclidean length of every row of each of `prepared`'s spaces: what [`likeness`] divides
/// by (computed once per collection).
pub fn space_norms(prepared: &Prepared) -> Result<Vec<Vec<f32>>> {
    Ok(prepared.spaces().into_iter().map(I8Rows::norms).collect())
}

/// How alike every image of `collection` is to image `row` of `example` (a preparation by the
/// same scorer): the cosine similarity in each of their spaces ([`Prepared::spaces`]),
/// averaged; -1 to 1, 1 for the same picture. `norms` are [`space_norms`] of `collection`.
/// A zero vector is like nothing (0).
pub fn likeness(collection: &Prepared, norms: &[Vec<f32>], example: &Prepared, row: usize) -> Result<Vec<f32>> {
    let spaces = collection.spaces();
    let examples = example.spaces();
    if spaces.is_empty() || spaces.len() != examples.len() || norms.len() != spaces.len() {
        return Err(crate::Error::Invalid(format!(
            "more like this needs preparations by one scorer with image spaces ({} and {} spaces, {} norms)",
            spaces.len(),
            examples.len(),
            norms.len()
        )));
    }
    let mut total = vec![0f32; collection.len()];
    for ((space, norms), example) in spaces.iter().zip(norms).zip(&examples) {
        if row >= example.len() {
            return Err(crate::Error::Invalid(format!("row {row} of {} prepared rows", example.len())));
        }
        let e = example.row(row);
        let e_norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
        let e = Tensor::from_vec(e, (1, example.dim()), &candle::Device::Cpu)?;
        let dots = dots(&e, space, |x| x, Ok)?.remove(0);
        for ((t, d), n) in total.iter_mut().zip(dots).zip(norms) {
            let denominator = e_norm * n;
            if denominator > 0.0 {
                *t += d / denominator;
            }
        }
    }
    let count = spaces.len() as f32;
    total.iter_mut().for_each(|t| *t /= count);
    Ok(total)
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
        Ok(Prepared::new(images, State::Projected(stored(&self.model.embed_images(images)?)?)))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let projected = match &images.state {
            State::Projected(p) => Arc::clone(p),
            _ => stored(&self.model.embed_images(images.images()?)?)?,
        };
        let texts = self.model.embed_texts(texts)?;
        // The calibration then candle's sigmoid.
        let (a, b) = self.model.calibration()?;
        dots(
            &texts,
            &projected,
            |cos| 1.0 / (1.0 + (-(cos * a + b)).exp()),
            |cos| candle_nn::ops::sigmoid(&self.model.calibrate(&cos)?),
        )
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let z =
            self.model.pair_logits(&as_stored(&self.model.embed_images(images)?)?, &self.model.embed_texts(texts)?)?;
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
            _ => match self.prepare(images.images()?)?.state {
                State::Parts(p) => p,
                _ => unreachable!("an ensemble prepares parts"),
            },
        };
        // The parts side by side on the cores: each is a chain of small tensor operations
        // that mostly run on one thread (eight fusion members took 67-84 ms in a row on a
        // 2-core machine for 500 queries against 100 images).
        let active: Vec<(&Arc<dyn Scorer>, f32, &Prepared)> =
            self.parts.iter().zip(&prepared).filter_map(|((s, w), p)| p.as_ref().map(|p| (s, *w, p))).collect();
        let mats = active.par_iter().map(|(s, _, p)| s.matrix(p, texts)).collect::<Result<Vec<_>>>()?;
        let weights: Vec<f32> = active.iter().map(|a| a.1).collect();
        if mats.is_empty() {
            return Err(crate::Error::Invalid("an ensemble with every weight 0".into()));
        }
        let total: f32 = weights.iter().sum();
        // Into 0..1 by a map that keeps ranks and does not saturate in f32 (a sigmoid of a sum of
        // z-scores rounds to 1.0 for the best images and turns them into ties).
        let mut out = combine(&mats, &weights);
        for row in &mut out {
            in_chunks(row, |_, c| c.iter_mut().for_each(|z| *z = 0.5 + (*z / total).atan() / std::f32::consts::PI));
        }
        Ok(out)
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
        // Summed row by row (in the rows' memory order), each column's terms in bank order.
        let mut mean = vec![0.0f32; columns];
        for row in &bank {
            mean.iter_mut().zip(row).for_each(|(m, v)| *m += v);
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0.0f32; columns];
        for row in &bank {
            var.iter_mut().zip(row).zip(&mean).for_each(|((s, v), m)| *s += (v - m).powi(2));
        }
        let inv_std: Vec<f32> = var.iter().map(|s| 1.0 / (s / n).sqrt().max(1e-9)).collect();
        Ok(Prepared::new(images, State::Bank { inner: Box::new(inner), mean, inv_std }))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let fresh;
        let (inner, mean, inv_std) = match &images.state {
            State::Bank { inner, mean, inv_std } => (inner.as_ref(), mean, inv_std),
            _ => {
                fresh = self.prepare(images.images()?)?;
                match &fresh.state {
                    State::Bank { inner, mean, inv_std } => (inner.as_ref(), mean, inv_std),
                    _ => unreachable!("bank normalisation prepares a bank"),
                }
            }
        };
        // In place.
        let mut scores = self.inner.matrix(inner, texts)?;
        for row in &mut scores {
            in_chunks(row, |at, c| {
                for ((v, m), s) in c.iter_mut().zip(&mean[at..]).zip(&inv_std[at..]) {
                    *v = (0.5 + (*v - m) * s / (2.0 * BANK_Z_RANGE)).clamp(0.0, 1.0);
                }
            });
        }
        Ok(scores)
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        self.inner.pairs(images, texts)
    }
}

/// Per query (row), each matrix z-scored, then summed with `weights`.
pub fn combine(mats: &[Vec<Vec<f32>>], weights: &[f32]) -> Vec<Vec<f32>> {
    let Some(first) = mats.first() else { return Vec::new() };
    (0..first.len())
        .map(|q| {
            // Each matrix's mean and spread over the row, then one pass over the images.
            let stats: Vec<(f32, f32)> = mats
                .iter()
                .map(|m| {
                    let row = &m[q];
                    let n = row.len() as f32;
                    let mean = sum8(row, |v| v) / n;
                    let std = (sum8(row, |v| (v - mean) * (v - mean)) / n).sqrt().max(1e-9);
                    (mean, std)
                })
                .collect();
            let mut out = vec![0.0; first[q].len()];
            in_chunks(&mut out, |at, out| {
                for ((m, &w), &(mean, std)) in mats.iter().zip(weights).zip(&stats) {
                    for (o, v) in out.iter_mut().zip(&m[q][at..]) {
                        *o += w * ((v - mean) / std);
                    }
                }
            });
            out
        })
        .collect()
}

/// The sum of `f` over `values` in eight interleaved partial sums, added pairwise at the end: a
/// fixed order (the same sum on every machine) that the compiler turns into one vector addition
/// per eight values. A single running sum waits on each addition in turn: over a search's
/// 100,000 scores, sixteen such passes (the mean and spread of eight members) took about 2 ms.
#[inline(always)]
fn sum8(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..8 {
            acc[i] += f(c[i]);
        }
    }
    let pairs: [f32; 4] = std::array::from_fn(|i| acc[i] + acc[4 + i]);
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + rest.iter().map(|&v| f(v)).sum::<f32>()
}

/// Images per parallel task when a search's scores are combined (16,384 scores: 64 KiB).
pub(crate) const PAR_CHUNK: usize = 16_384;

/// `f(offset, chunk)` over `row` in chunks of [`PAR_CHUNK`] scores, on threads only for a long
/// row (a search over a large collection); the same arithmetic either way.
fn in_chunks(row: &mut [f32], f: impl Fn(usize, &mut [f32]) + Sync) {
    match row.len() > PAR_CHUNK {
        true => row.par_chunks_mut(PAR_CHUNK).enumerate().for_each(|(c, chunk)| f(c * PAR_CHUNK, chunk)),
        false => f(0, row),
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
            let cols: Vec<f32> = images.images()?.narrow(1, 0, 1)?.flatten_all()?.to_vec1()?;
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

    pub(crate) fn fusion(image_dim: usize) -> Fusion {
        use candle::DType;
        use imsearch_fusion::FusionConfig;
        let mut varmap = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let config = FusionConfig {
            image_encoder: "test".into(),
            text_encoder: "test".into(),
            image_dim,
            text_dim: 12,
            hidden_dim: 16,
            shared_dim: 40,
            locked_text: false,
        };
        let model = FusionModel::new(config, vb).unwrap();
        // Unit spreads and a calibration that spreads the scores (these variables start at zero).
        varmap.set_one("calibration.scale", Tensor::new(&[8.0f32], &Device::Cpu).unwrap()).unwrap();
        for (side, dim) in [("image", image_dim), ("text", 12)] {
            varmap.set_one(format!("{side}.inv_std"), Tensor::ones(dim, DType::F32, &Device::Cpu).unwrap()).unwrap();
        }
        Fusion::new(model)
    }

    pub(crate) fn random(rows: usize, cols: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen::<f32>() - 0.5).collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn a_search_scores_as_an_evaluation_does_from_the_kept_rows_alone() {
        let f = fusion(24);
        let images = random(3000, 24, 1);
        let texts = random(FEW_TEXTS + 3, 12, 2);
        let prepared = f.prepare(&images).unwrap();
        // Many texts: candle's product; one text: the one-pass search over the 8-bit rows.
        let all = f.matrix(&prepared, &texts).unwrap();
        let spread = all[0].iter().fold(f32::MIN, |a, &b| a.max(b)) - all[0].iter().fold(f32::MAX, |a, &b| a.min(b));
        assert!(spread > 1e-3, "the scores vary: {spread}");
        let kept = prepared.clone().without_features();
        assert_eq!(kept.len(), 3000);
        assert!(kept.images().is_err(), "the raw rows are gone");
        for (t, want) in all.iter().enumerate() {
            let one = f.matrix(&kept, &texts.narrow(0, t, 1).unwrap()).unwrap().remove(0);
            let worst = one.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "text {t}: a score differs by {worst}");
        }
        // Pairs read the stored values too: the diagonal of the matrix, up to one 8-bit step of
        // a projection (a 4-row product may round a value to the neighbouring code).
        let pairs = f.pairs(&images.narrow(0, 0, 4).unwrap(), &texts.narrow(0, 0, 4).unwrap()).unwrap();
        for (i, p) in pairs.iter().enumerate() {
            assert!((p - all[i][i]).abs() < 1e-3, "pair {i}: {p} against {}", all[i][i]);
        }
        // A scorer whose preparation needs the features says so instead of scoring nothing.
        let e = Ensemble::equal([Arc::new(f) as Arc<dyn Scorer>]);
        let unprepared = Prepared::plain(&images).without_features();
        assert!(e.matrix(&unprepared, &texts).is_ok(), "plain features are the state and are kept");
    }

    #[test]
    fn a_preparation_in_blocks_saved_and_read_back_or_reordered_scores_alike() {
        use std::collections::BTreeMap;
        let images = random(300, 24, 3);
        let texts = random(2, 12, 4);
        let gallery: BTreeMap<usize, Vec<usize>> = (0..40).map(|i| (i, vec![2 * i, 2 * i + 1])).collect();
        let hood = crate::Neighbourhood { k: 5, temperature: 0.5 };
        let neighbours =
            crate::Neighbours::new(&images, &random(80, 12, 5), &gallery, &(0..40).collect::<Vec<_>>(), hood).unwrap();
        let bank = random(20, 12, 6);
        let e = Ensemble::new(vec![
            (Arc::new(Ensemble::equal([Arc::new(fusion(24)) as Arc<dyn Scorer>])) as Arc<dyn Scorer>, 1.0),
            (Arc::new(BankNormalised::new(Arc::new(neighbours), bank.clone())), 0.5),
            (Arc::new(BankNormalised::new(Arc::new(fusion(24)), bank)), 0.25),
            (Arc::new(fusion(24)), 0.0),
        ]);
        let close = |a: &[Vec<f32>], b: &[Vec<f32>]| {
            a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max)
        };
        let whole = e.prepare(&images).unwrap();
        let want = e.matrix(&whole, &texts).unwrap();

        let blocks = Prepared::concat(vec![
            e.prepare(&images.narrow(0, 0, 100).unwrap()).unwrap().without_features(),
            e.prepare(&images.narrow(0, 100, 200).unwrap()).unwrap().without_features(),
        ])
        .unwrap();
        assert_eq!(blocks.len(), 300);
        // Up to one 8-bit step of a projection: products of another row count may round a value
        // to the neighbouring code.
        assert!(close(&e.matrix(&blocks, &texts).unwrap(), &want) < 1e-3);

        let mut tensors = HashMap::new();
        blocks.to_tensors("p", &mut tensors).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        candle::safetensors::save(&tensors, file.path()).unwrap();
        let back = Prepared::from_tensors(&candle::safetensors::load(file.path(), &Device::Cpu).unwrap(), "p", 300)
            .expect("read back");
        assert_eq!(e.matrix(&back, &texts).unwrap(), e.matrix(&blocks, &texts).unwrap(), "bit for bit");
        assert!(Prepared::from_tensors(&tensors, "p", 299).is_none(), "a row count that does not match");

        // Rows reordered: each image keeps its score.
        let reversed: Vec<usize> = (0..300).rev().collect();
        let got = e.matrix(&back.select(&reversed).unwrap(), &texts).unwrap();
        for (g, w) in got.iter().zip(&want) {
            let back_in_order: Vec<f32> = g.iter().rev().copied().collect();
            assert!(close(&[back_in_order], std::slice::from_ref(w)) < 1e-5);
        }
        assert!(back.select(&[0, 300]).is_err(), "a row past the end");
        // Preparations of different scorers do not join.
        assert!(Prepared::concat(vec![back, Prepared::plain(&images)]).is_err());
    }

    #[test]
    fn rows_as_bytes_read_back_bit_for_bit_and_their_like_vectors_give_likeness() {
        let images = random(1100, 24, 7);
        let texts = random(3, 12, 8);
        let e = Ensemble::new(vec![
            (Arc::new(fusion(24)) as Arc<dyn Scorer>, 1.0),
            (Arc::new(BankNormalised::new(Arc::new(fusion(24)), random(20, 12, 9))), 0.5),
        ]);
        let prepared = e.prepare(&images).unwrap().without_features();
        // Rows one by one, as a store keeps them, read back in blocks: the same scores, bit for bit.
        let rows: Vec<Vec<u8>> = (0..prepared.len()).map(|r| prepared.row_bytes(r).unwrap()).collect();
        let back = Prepared::from_row_bytes(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
        assert_eq!(back.len(), 1100);
        assert_eq!(e.matrix(&back, &texts).unwrap(), e.matrix(&prepared, &texts).unwrap());
        // A row that does not read is named.
        let mut broken: Vec<&[u8]> = rows.iter().map(Vec::as_slice).collect();
        broken[1030] = b"not a row";
        let err = Prepared::from_row_bytes(&broken).expect_err("a broken row").to_string();
        assert!(err.contains("1030"), "{err}");

        // The inner product of two like vectors is the likeness of the two rows.
        let norms = space_norms(&prepared).unwrap();
        let like = likeness(&prepared, &norms, &prepared, 5).unwrap();
        let v5 = prepared.like_vector(5).unwrap();
        for other in [0, 5, 600, 1099] {
            let vo = prepared.like_vector(other).unwrap();
            assert_eq!(vo.len(), v5.len());
            let dot: f32 = v5.iter().zip(&vo).map(|(a, b)| a * b).sum();
            assert!((dot - like[other]).abs() < 1e-4, "row {other}: {dot} against {}", like[other]);
        }
        let self_dot: f32 = v5.iter().map(|x| x * x).sum();
        assert!((self_dot - 1.0).abs() < 1e-4, "a row is as like itself as can be: {self_dot}");
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
