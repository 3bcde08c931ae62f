//! Caption neighbours: an image's nearest training images (by cosine of standardised image
//! features) vote with how well the query matches their captions (cosine of MiniLM
//! embeddings). Training-free.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Arc,
};

use candle::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{
    scorer::{Prepared, Scorer, State},
    Error, Result,
};

/// Per image, its nearest gallery images and their weights, `per_image` of each, flat (8
/// bytes a neighbour; 40 bytes an image for the default 5 neighbours).
#[derive(Debug, Clone)]
pub(crate) struct Votes {
    per_image: usize,
    rows: Vec<u32>,
    weights: Vec<f32>,
}

impl Votes {
    fn len(&self) -> usize {
        self.rows.len().checked_div(self.per_image).unwrap_or(0)
    }

    /// The votes of consecutive blocks of images, in order; `None` when their neighbourhoods
    /// differ in size.
    pub(crate) fn concat(blocks: &[&Votes]) -> Option<Votes> {
        let per_image = blocks.first()?.per_image;
        let mut out = Votes { per_image, rows: Vec::new(), weights: Vec::new() };
        for b in blocks {
            if b.per_image != per_image {
                return None;
            }
            out.rows.extend_from_slice(&b.rows);
            out.weights.extend_from_slice(&b.weights);
        }
        Some(out)
    }

    /// The votes of images `images` alone, in that order.
    pub(crate) fn select(&self, images: &[usize]) -> Votes {
        let n = self.per_image;
        let mut out = Votes { per_image: n, rows: Vec::with_capacity(images.len() * n), weights: Vec::new() };
        for &i in images {
            out.rows.extend_from_slice(&self.rows[i * n..(i + 1) * n]);
            out.weights.extend_from_slice(&self.weights[i * n..(i + 1) * n]);
        }
        out
    }

    pub(crate) fn to_tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) -> Result<()> {
        let n = self.per_image;
        let images = self.len();
        out.insert(format!("{prefix}.neighbours"), Tensor::from_slice(&self.rows, (images, n), &Device::Cpu)?);
        out.insert(format!("{prefix}.weights"), Tensor::from_slice(&self.weights, (images, n), &Device::Cpu)?);
        Ok(())
    }

    /// The inverse of [`Votes::to_tensors`] for `images` images.
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, prefix: &str, images: usize) -> Option<Votes> {
        let rows = t.get(&format!("{prefix}.neighbours"))?;
        let weights = t.get(&format!("{prefix}.weights"))?;
        let (n_images, per_image) = rows.dims2().ok()?;
        if n_images != images || weights.dims2().ok()? != (images, per_image) || per_image == 0 {
            return None;
        }
        Some(Votes {
            per_image,
            rows: rows.to_dtype(DType::U32).ok()?.flatten_all().ok()?.to_vec1().ok()?,
            weights: weights.to_dtype(DType::F32).ok()?.flatten_all().ok()?.to_vec1().ok()?,
        })
    }

    /// Image `i`'s vote on `matches`, mapped from -1..1 into 0..1.
    fn vote(&self, i: usize, matches: &[f32]) -> f32 {
        let at = i * self.per_image..(i + 1) * self.per_image;
        let sum: f32 = self.rows[at.clone()].iter().zip(&self.weights[at]).map(|(&g, w)| w * matches[g as usize]).sum();
        (sum + 1.0) / 2.0
    }
}

/// How many gallery images vote for an image, and the temperature of their softmax weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbourhood {
    pub k: usize,
    pub temperature: f32,
}

#[derive(Debug, Clone)]
pub struct Neighbours {
    /// `(d,)` mean and inverse spread of the features the gallery was standardised with.
    mean: Tensor,
    inv_std: Tensor,
    /// `(gallery, d)` unit rows.
    gallery: Tensor,
    /// Rows (into `texts`) of each gallery image's captions.
    captions: Vec<Vec<usize>>,
    /// The gallery captions' MiniLM embeddings (unit rows).
    texts: Tensor,
    hood: Neighbourhood,
}

impl Neighbours {
    /// `gallery` pairs rows of `images` with the rows of `texts` of their captions; the
    /// standardisation is fitted on the rows `fit_rows` of `images`.
    pub fn new(
        images: &Tensor,
        texts: &Tensor,
        gallery: &BTreeMap<usize, Vec<usize>>,
        fit_rows: &[usize],
        hood: Neighbourhood,
    ) -> Result<Self> {
        if gallery.is_empty() {
            return Err(Error::Invalid("caption neighbours need at least one gallery image".into()));
        }
        let fit = images.index_select(&index(fit_rows)?, 0)?;
        let mean = fit.mean(0)?;
        let inv_std = (fit.broadcast_sub(&mean)?.sqr()?.mean(0)?.sqrt()? + 1e-6)?.recip()?;
        let rows: Vec<usize> = gallery.keys().copied().collect();
        // Only the gallery's captions, renumbered.
        let caption_rows: Vec<usize> =
            gallery.values().flatten().copied().collect::<BTreeSet<_>>().into_iter().collect();
        let at: BTreeMap<usize, usize> = caption_rows.iter().enumerate().map(|(k, &r)| (r, k)).collect();
        let captions = gallery.values().map(|c| c.iter().map(|r| at[r]).collect()).collect();
        let gallery = normalise(&images.index_select(&index(&rows)?, 0)?, &mean, &inv_std)?;
        Ok(Neighbours { mean, inv_std, gallery, captions, texts: texts.index_select(&index(&caption_rows)?, 0)?, hood })
    }

    /// The same gallery with another neighbourhood.
    pub fn with(&self, hood: Neighbourhood) -> Neighbours {
        Neighbours { hood, ..self.clone() }
    }

    pub fn neighbourhood(&self) -> Neighbourhood {
        self.hood
    }

    /// Gallery images.
    pub fn len(&self) -> usize {
        self.captions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.captions.is_empty()
    }

    /// For each image row, its `k` nearest gallery images and their softmax weights.
    fn votes(&self, images: &Tensor) -> Result<Votes> {
        let sims = normalise(images, &self.mean, &self.inv_std)?.matmul(&self.gallery.t()?)?.to_vec2::<f32>()?;
        let per_image = self.hood.k.min(self.len());
        let mut votes = Votes {
            per_image,
            rows: Vec::with_capacity(sims.len() * per_image),
            weights: Vec::with_capacity(sims.len() * per_image),
        };
        for row in &sims {
            let hits = imsearch_index::top_k(row, self.hood.k);
            let max = hits.first().map_or(0.0, |h| h.score);
            let w: Vec<f32> = hits.iter().map(|h| ((h.score - max) / self.hood.temperature).exp()).collect();
            let total: f32 = w.iter().sum();
            votes.rows.extend(hits.iter().map(|h| h.row as u32));
            votes.weights.extend(w.iter().map(|w| w / total));
        }
        Ok(votes)
    }

    /// For each text row, how well it matches each gallery image's best caption.
    fn matches(&self, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let text_sims = texts.matmul(&self.texts.t()?)?.to_vec2::<f32>()?;
        Ok(text_sims
            .iter()
            .map(|row| self.captions.iter().map(|c| c.iter().map(|&t| row[t]).fold(f32::MIN, f32::max)).collect())
            .collect())
    }

    /// Its tensors under `prefix` (the captions as a flat list of rows and one offset per image).
    pub(crate) fn to_tensors(&self, prefix: &str, out: &mut HashMap<String, Tensor>) -> Result<()> {
        let mut offsets = vec![0u32];
        let mut flat = Vec::new();
        for c in &self.captions {
            flat.extend(c.iter().map(|&r| r as u32));
            offsets.push(flat.len() as u32);
        }
        out.insert(format!("{prefix}.mean"), self.mean.clone());
        out.insert(format!("{prefix}.inv_std"), self.inv_std.clone());
        out.insert(format!("{prefix}.gallery"), self.gallery.clone());
        out.insert(format!("{prefix}.texts"), self.texts.clone());
        out.insert(format!("{prefix}.caption_rows"), Tensor::from_vec(flat.clone(), flat.len(), &Device::Cpu)?);
        out.insert(
            format!("{prefix}.caption_offsets"),
            Tensor::from_vec(offsets.clone(), offsets.len(), &Device::Cpu)?,
        );
        Ok(())
    }

    /// The inverse of [`Neighbours::to_tensors`]; `None` when a tensor is missing or the shapes
    /// disagree.
    pub(crate) fn from_tensors(t: &HashMap<String, Tensor>, prefix: &str, hood: Neighbourhood) -> Option<Self> {
        let get = |name: &str| t.get(&format!("{prefix}.{name}")).cloned();
        let (mean, inv_std, gallery, texts) = (get("mean")?, get("inv_std")?, get("gallery")?, get("texts")?);
        let flat: Vec<u32> = get("caption_rows")?.to_dtype(DType::U32).ok()?.to_vec1().ok()?;
        let offsets: Vec<u32> = get("caption_offsets")?.to_dtype(DType::U32).ok()?.to_vec1().ok()?;
        let n_texts = texts.dims2().ok()?.0;
        let (g, d) = gallery.dims2().ok()?;
        if offsets.len() != g + 1 || mean.dims() != [d] || inv_std.dims() != [d] {
            return None;
        }
        let mut captions = Vec::with_capacity(g);
        for w in offsets.windows(2) {
            let rows = flat.get(w[0] as usize..w[1] as usize)?;
            if rows.is_empty() || rows.iter().any(|&r| r as usize >= n_texts) {
                return None;
            }
            captions.push(rows.iter().map(|&r| r as usize).collect());
        }
        Some(Neighbours { mean, inv_std, gallery, captions, texts, hood })
    }
}

fn normalise(xs: &Tensor, mean: &Tensor, inv_std: &Tensor) -> Result<Tensor> {
    let xs = xs.broadcast_sub(mean)?.broadcast_mul(inv_std)?;
    Ok(xs.broadcast_div(&xs.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?)?)
}

impl Scorer for Neighbours {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        Ok(Prepared::new(images, State::Votes(Arc::new(self.votes(images)?))))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let votes = match &images.state {
            State::Votes(v) => v.clone(),
            _ => Arc::new(self.votes(images.images()?)?),
        };
        use rayon::prelude::*;
        Ok(self
            .matches(texts)?
            .iter()
            // Threads only for a large collection (a search); an evaluation's rows are short.
            .map(|m| match votes.len() > crate::scorer::PAR_CHUNK {
                true => (0..votes.len()).into_par_iter().map(|i| votes.vote(i, m)).collect(),
                false => (0..votes.len()).map(|i| votes.vote(i, m)).collect(),
            })
            .collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let votes = self.votes(images)?;
        Ok(self.matches(texts)?.iter().enumerate().map(|(i, m)| votes.vote(i, m)).collect())
    }
}

pub(crate) fn index(rows: &[usize]) -> candle::Result<Tensor> {
    Tensor::new(rows.iter().map(|&r| r as u32).collect::<Vec<_>>().as_slice(), &Device::Cpu)
}
