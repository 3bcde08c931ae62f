//! The floors every model must clear: uniform random scores, and the original task's linear
//! regressor on the concatenated image and text vectors.

use candle::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use imsearch_fusion::PairSet;
use rand::{seq::SliceRandom, Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{
    scorer::{Prepared, Scorer},
    Error, Result,
};

/// Uniform random scores from a seed.
#[derive(Debug, Clone, Copy)]
pub struct Random(pub u64);

impl Scorer for Random {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        Ok(Prepared::plain(images))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.0);
        let (m, q) = (images.len(), texts.dims2()?.0);
        Ok((0..q).map(|_| (0..m).map(|_| rng.gen::<f32>()).collect()).collect())
    }
    fn pairs(&self, images: &Tensor, _texts: &Tensor) -> Result<Vec<f32>> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.0);
        Ok((0..images.dims2()?.0).map(|_| rng.gen::<f32>()).collect())
    }
}

/// The original task's approach: a linear regressor on the concatenated image and text vectors.
/// Its score is an image term plus a text term, so it ranks images the same for every query.
#[derive(Debug, Clone)]
pub struct Regressor {
    w_image: Tensor,
    w_text: Tensor,
    bias: f32,
    mean: Tensor,
    inv_std: Tensor,
}

impl Regressor {
    /// Fitted by AdamW on the squared error of `set`'s pairs (rows of `images` and `texts`),
    /// 10 epochs, batches in a seeded order.
    pub fn train(images: &Tensor, texts: &Tensor, set: &PairSet, seed: u64) -> Result<Self> {
        if set.pairs.is_empty() {
            return Err(Error::Invalid("the regressor needs at least one labelled pair".into()));
        }
        let device = Device::Cpu;
        let (d_img, d_txt) = (images.dims2()?.1, texts.dims2()?.1);
        let i: Vec<u32> = set.pairs.iter().map(|p| p.0 as u32).collect();
        let t: Vec<u32> = set.pairs.iter().map(|p| p.1 as u32).collect();
        let y: Vec<f32> = set.pairs.iter().map(|p| p.2).collect();
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
        let weight = vb.get_with_hints((1, d_img + d_txt), "weight", candle_nn::Init::Const(0.0))?;
        let bias = vb.get_with_hints(1, "bias", candle_nn::Init::Const(0.0))?;
        let linear = candle_nn::Linear::new(weight.clone(), Some(bias.clone()));
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
        let w = weight.squeeze(0)?;
        Ok(Regressor {
            w_image: w.narrow(0, 0, d_img)?,
            w_text: w.narrow(0, d_img, d_txt)?,
            bias: bias.to_vec1::<f32>()?[0],
            mean,
            inv_std,
        })
    }

    /// `(n, d)` rows of one side standardised and dotted with that side's weights.
    fn side(&self, xs: &Tensor, offset: usize, w: &Tensor) -> Result<Vec<f32>> {
        let d = xs.dims2()?.1;
        let xs =
            xs.broadcast_sub(&self.mean.narrow(0, offset, d)?)?.broadcast_mul(&self.inv_std.narrow(0, offset, d)?)?;
        Ok(xs.matmul(&w.unsqueeze(1)?)?.squeeze(1)?.to_vec1()?)
    }
}

impl Scorer for Regressor {
    fn prepare(&self, images: &Tensor) -> Result<Prepared> {
        Ok(Prepared::plain(images))
    }
    fn matrix(&self, images: &Prepared, texts: &Tensor) -> Result<Vec<Vec<f32>>> {
        let d_img = images.images()?.dims2()?.1;
        let a = self.side(images.images()?, 0, &self.w_image)?;
        let b = self.side(texts, d_img, &self.w_text)?;
        Ok(b.iter().map(|t| a.iter().map(|i| (i + t + self.bias).clamp(0.0, 1.0)).collect()).collect())
    }
    fn pairs(&self, images: &Tensor, texts: &Tensor) -> Result<Vec<f32>> {
        let d_img = images.dims2()?.1;
        let a = self.side(images, 0, &self.w_image)?;
        let b = self.side(texts, d_img, &self.w_text)?;
        Ok(a.iter().zip(&b).map(|(i, t)| (i + t + self.bias).clamp(0.0, 1.0)).collect())
    }
}
