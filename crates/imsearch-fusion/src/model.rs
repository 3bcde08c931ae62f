//! The fusion model's layers, scoring and checkpoint format.

use std::{collections::HashMap, path::Path};

use candle::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The model's shape and the encoders it was trained for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FusionConfig {
    /// Id of the image encoder (or ensemble of encoders) whose embeddings the model takes.
    pub image_encoder: String,
    /// Id of the text encoder.
    pub text_encoder: String,
    pub image_dim: usize,
    pub text_dim: usize,
    /// Width of each projection's hidden layer; 0 for a linear projection.
    pub hidden_dim: usize,
    /// Dimension of the shared space.
    pub shared_dim: usize,
    /// The text side is the text encoder's space itself (unit rows, no parameters; the shared
    /// space is `text_dim` wide): only the image side learns, so queries keep the text
    /// encoder's sense of similarity.
    pub locked_text: bool,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            image_encoder: String::new(),
            text_encoder: String::new(),
            image_dim: 1280,
            text_dim: 384,
            hidden_dim: 512,
            shared_dim: 256,
            locked_text: false,
        }
    }
}

impl FusionConfig {
    /// The encoders as one string, for messages.
    pub fn encoders(&self) -> String {
        format!(
            "image encoder {:?} ({}-d), text encoder {:?} ({}-d)",
            self.image_encoder, self.image_dim, self.text_encoder, self.text_dim
        )
    }
}

/// Standardisation followed by an MLP (or a linear map) into the shared space, L2-normalised;
/// or, locked, the input itself L2-normalised.
#[derive(Debug, Clone)]
pub struct Projection {
    /// Mean and inverse standard deviation of each input feature; `None` when locked.
    stats: Option<(Tensor, Tensor)>,
    hidden: Option<Linear>,
    /// `None` when locked.
    out: Option<Linear>,
}

impl Projection {
    pub fn new(in_dim: usize, hidden_dim: usize, shared_dim: usize, vb: VarBuilder) -> candle::Result<Self> {
        let mean = vb.get(in_dim, "mean")?;
        let inv_std = vb.get(in_dim, "inv_std")?;
        let (hidden, out) = if hidden_dim > 0 {
            (
                Some(candle_nn::linear(in_dim, hidden_dim, vb.pp("hidden"))?),
                candle_nn::linear(hidden_dim, shared_dim, vb.pp("out"))?,
            )
        } else {
            (None, candle_nn::linear(in_dim, shared_dim, vb.pp("out"))?)
        };
        Ok(Projection { stats: Some((mean, inv_std)), hidden, out: Some(out) })
    }

    /// The identity on unit rows: no parameters.
    pub fn locked() -> Self {
        Projection { stats: None, hidden: None, out: None }
    }

    /// `(n, in_dim) -> (n, shared_dim)`, each row of unit length.
    pub fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.forward_standardised(&self.standardise(xs)?)
    }

    /// `(n, in_dim) -> (n, in_dim)`: the inputs centred and scaled as [`Projection::forward`] does
    /// first (row by row, so standardising a matrix once and selecting rows later gives the
    /// same numbers).
    pub fn standardise(&self, xs: &Tensor) -> candle::Result<Tensor> {
        match &self.stats {
            Some((mean, inv_std)) => xs.broadcast_sub(mean)?.broadcast_mul(inv_std),
            None => Ok(xs.clone()),
        }
    }

    /// [`Projection::forward`] of inputs already passed through [`Projection::standardise`].
    pub fn forward_standardised(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let Some(out) = &self.out else { return l2_normalise(xs) };
        let xs = match &self.hidden {
            Some(h) => h.forward(&xs.contiguous()?)?.contiguous()?.apply_op1_no_bwd(&Gelu)?,
            None => xs.clone(),
        };
        l2_normalise(&out.forward(&xs)?)
    }

    /// [`Projection::forward_standardised`] for training, where the inputs are constants: the
    /// same numbers, with a backward pass that computes only the first layer's weight gradient,
    /// in the weight's own layout. (candle's matmul backward also multiplies out the gradient
    /// of the input, which nothing reads, and adds the weight's gradient in transposed layout
    /// element by element: together about a third of a training step.)
    pub fn forward_standardised_train(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let Some(out) = &self.out else { return l2_normalise(xs) };
        let first = self.hidden.as_ref().unwrap_or(out);
        let mut h = first.weight().apply_op1(ConstantInputLinear { xs: xs.detach() })?;
        if let Some(b) = first.bias() {
            h = h.broadcast_add(b)?;
        }
        match &self.hidden {
            Some(_) => l2_normalise(&out.forward(&h.apply_op1(Gelu)?)?),
            None => l2_normalise(&h),
        }
    }
}

/// candle's tanh-approximated GELU (the same forward numbers as [`Tensor::gelu`]) on every core,
/// with its derivative in one pass over the elements instead of ten tensor operations.
struct Gelu;

const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// Elements per task of the GELU loops (its `tanh` is the costly part; both cores share it).
const GELU_CHUNK: usize = 16 * 1024;

impl candle::CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-fused-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &candle::CpuStorage,
        layout: &candle::Layout,
    ) -> candle::Result<(candle::CpuStorage, candle::Shape)> {
        let xs = contiguous_f32(self.name(), storage, layout)?;
        let mut ys = vec![0f32; xs.len()];
        ys.par_chunks_mut(GELU_CHUNK).zip(xs.par_chunks(GELU_CHUNK)).for_each(|(ys, xs)| {
            for (y, &v) in ys.iter_mut().zip(xs) {
                *y = 0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)));
            }
        });
        Ok((candle::CpuStorage::F32(ys), layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle::Result<Option<Tensor>> {
        let xs = arg.flatten_all()?.to_vec1::<f32>()?;
        let gs = grad.flatten_all()?.to_vec1::<f32>()?;
        // d/dx of 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3).
        let mut out = vec![0f32; xs.len()];
        out.par_chunks_mut(GELU_CHUNK).zip(xs.par_chunks(GELU_CHUNK).zip(gs.par_chunks(GELU_CHUNK))).for_each(
            |(out, (xs, gs))| {
                for ((o, &x), &g) in out.iter_mut().zip(xs).zip(gs) {
                    let cube = x * x * x;
                    let t = (0.035_677_4 * cube + 0.797_885 * x).tanh();
                    *o = g * (0.5 * t + (0.053_516_1 * cube + 0.398_942 * x) * (1.0 - t * t) + 0.5);
                }
            },
        );
        Ok(Some(Tensor::from_vec(out, arg.shape(), arg.device())?))
    }
}

/// The values of a custom op's argument: contiguous f32 on the CPU, else an error naming the op.
fn contiguous_f32<'a>(op: &str, storage: &'a candle::CpuStorage, layout: &candle::Layout) -> candle::Result<&'a [f32]> {
    let candle::CpuStorage::F32(data) = storage else { candle::bail!("{op}: the argument must be f32") };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle::bail!("{op}: the argument must be contiguous")
    };
    Ok(&data[start..end])
}

/// `weight -> xs @ weight^T` for a constant `xs`: a linear layer without its bias, as an op of
/// the weight alone, so its backward is one product, `grad^T @ xs`, already in the weight's
/// `(out, in)` layout.
struct ConstantInputLinear {
    xs: Tensor,
}

impl candle::CustomOp1 for ConstantInputLinear {
    fn name(&self) -> &'static str {
        "constant-input-linear"
    }

    fn cpu_fwd(
        &self,
        storage: &candle::CpuStorage,
        layout: &candle::Layout,
    ) -> candle::Result<(candle::CpuStorage, candle::Shape)> {
        let w = Tensor::from_slice(contiguous_f32(self.name(), storage, layout)?, layout.shape(), &Device::Cpu)?;
        let ys = self.xs.matmul(&w.t()?)?.contiguous()?;
        let shape = ys.shape().clone();
        let (storage, layout) = ys.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle::Storage::Cpu(candle::CpuStorage::F32(v)), Some((start, end))) => {
                Ok((candle::CpuStorage::F32(v[start..end].to_vec()), shape))
            }
            _ => candle::bail!("{}: unexpected output storage", self.name()),
        }
    }

    fn bwd(&self, _weight: &Tensor, _res: &Tensor, grad: &Tensor) -> candle::Result<Option<Tensor>> {
        Ok(Some(grad.t()?.matmul(&self.xs)?))
    }
}

/// Rows scaled to unit length.
pub(crate) fn l2_normalise(xs: &Tensor) -> candle::Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    xs.broadcast_div(&norm)
}

/// Two projections and a calibration `sigmoid(a * cos + b)`.
#[derive(Debug, Clone)]
pub struct FusionModel {
    pub config: FusionConfig,
    image: Projection,
    text: Projection,
    /// `(1,)`: the scale `a` and offset `b` of the calibration.
    scale: Tensor,
    offset: Tensor,
}

impl FusionModel {
    pub fn new(config: FusionConfig, vb: VarBuilder) -> candle::Result<Self> {
        let image = Projection::new(config.image_dim, config.hidden_dim, config.shared_dim, vb.pp("image"))?;
        let text = if config.locked_text {
            if config.shared_dim != config.text_dim {
                candle::bail!(
                    "a locked text side needs a shared space as wide as the text ({}), not {}",
                    config.text_dim,
                    config.shared_dim
                );
            }
            Projection::locked()
        } else {
            Projection::new(config.text_dim, config.hidden_dim, config.shared_dim, vb.pp("text"))?
        };
        let scale = vb.get(1, "calibration.scale")?;
        let offset = vb.get(1, "calibration.offset")?;
        Ok(FusionModel { config, image, text, scale, offset })
    }

    /// The image and text projections (standardisation, then the MLP).
    pub fn projections(&self) -> (&Projection, &Projection) {
        (&self.image, &self.text)
    }

    /// `(n, image_dim) -> (n, shared_dim)`, unit rows.
    pub fn embed_images(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.image.forward(xs)
    }

    /// `(n, text_dim) -> (n, shared_dim)`, unit rows.
    pub fn embed_texts(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.text.forward(xs)
    }

    /// Calibrated logits `a * cos + b` of matched rows: `(n, shared), (n, shared) -> (n,)`.
    pub fn pair_logits(&self, images: &Tensor, texts: &Tensor) -> candle::Result<Tensor> {
        self.calibrate(&(images * texts)?.sum(D::Minus1)?)
    }

    /// Calibrated logits of every text against every image: `(q, shared), (m, shared) -> (q, m)`.
    pub fn logit_matrix(&self, images: &Tensor, texts: &Tensor) -> candle::Result<Tensor> {
        self.calibrate(&texts.matmul(&images.t()?)?)
    }

    /// Scores in 0..1 of every text against every image, from raw embeddings:
    /// `(m, image_dim), (q, text_dim) -> (q, m)`.
    pub fn score_matrix(&self, images: &Tensor, texts: &Tensor) -> candle::Result<Tensor> {
        candle_nn::ops::sigmoid(&self.logit_matrix(&self.embed_images(images)?, &self.embed_texts(texts)?)?)
    }

    /// The calibration `(a, b)`.
    pub fn calibration(&self) -> candle::Result<(f32, f32)> {
        Ok((self.scale.to_vec1::<f32>()?[0], self.offset.to_vec1::<f32>()?[0]))
    }

    /// `a * cos + b`.
    pub fn calibrate(&self, cos: &Tensor) -> candle::Result<Tensor> {
        cos.broadcast_mul(&self.scale)?.broadcast_add(&self.offset)
    }

    /// Writes `<dir>/fusion.safetensors` and `<dir>/fusion.json` atomically.
    pub fn save(&self, tensors: &HashMap<String, Tensor>, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_owned(), source })?;
        imsearch_fsio::write_atomic_via_path(&dir.join("fusion.safetensors"), |temp| {
            candle::safetensors::save(tensors, temp).map_err(Error::from)
        })?;
        let json = serde_json::to_string_pretty(&self.config).expect("config serialises");
        Ok(imsearch_fsio::write_bytes_atomic(&dir.join("fusion.json"), json.as_bytes())?)
    }

    /// Loads a checkpoint written by [`FusionModel::save`], checking that it was trained for
    /// the given encoders.
    pub fn load(dir: &Path, image_encoder: &str, text_encoder: &str, device: &Device) -> Result<Self> {
        let config_path = dir.join("fusion.json");
        let json = std::fs::read_to_string(&config_path)
            .map_err(|source| Error::Read { path: config_path.clone(), source })?;
        let config: FusionConfig =
            serde_json::from_str(&json).map_err(|source| Error::Config { path: config_path.clone(), source })?;
        if config.image_encoder != image_encoder || config.text_encoder != text_encoder {
            return Err(Error::EncoderMismatch {
                path: config_path,
                expected: format!("image encoder {image_encoder:?}, text encoder {text_encoder:?}"),
                found: config.encoders(),
            });
        }
        let weights = dir.join("fusion.safetensors");
        if !weights.is_file() {
            return Err(Error::Read {
                path: weights,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no weights"),
            });
        }
        let tensors = candle::safetensors::load(&weights, device)?;
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Ok(FusionModel::new(config, vb)?)
    }
}

#[cfg(test)]
mod tests {
    use candle::Var;

    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        // A small LCG: deterministic values in about -4..4.
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn fused_gelu_matches_candle_forward_and_backward() {
        let device = Device::Cpu;
        let x = Var::from_vec(values(4096, 7), (64, 64), &device).unwrap();
        let g = Tensor::from_vec(values(4096, 8), (64, 64), &device).unwrap();
        let ours = x.as_tensor().apply_op1(Gelu).unwrap();
        let theirs = x.as_tensor().gelu().unwrap();
        assert_eq!(ours.to_vec2::<f32>().unwrap(), theirs.to_vec2::<f32>().unwrap());
        let grad_ours = (&ours * &g).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        let grad_theirs = (&theirs * &g).unwrap().sum_all().unwrap().backward().unwrap().get(&x).unwrap().clone();
        let diff = (grad_ours - grad_theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }

    #[test]
    fn training_forward_matches_inference_and_candles_gradients() {
        let device = Device::Cpu;
        for hidden in [0, 12] {
            let varmap = candle_nn::VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
            let p = Projection::new(10, hidden, 6, vb).unwrap();
            let xs = Tensor::from_vec(values(50, 3), (5, 10), &device).unwrap();
            let train = p.forward_standardised_train(&xs).unwrap();
            let infer = p.forward_standardised(&xs).unwrap();
            // The same layers in candle's own ops.
            let out = p.out.as_ref().unwrap();
            let reference = l2_normalise(
                &out.forward(&match &p.hidden {
                    Some(h) => h.forward(&xs).unwrap().gelu().unwrap(),
                    None => xs.clone(),
                })
                .unwrap(),
            )
            .unwrap();
            for (name, ys) in [("training", &train), ("inference", &infer)] {
                let diff = (ys - &reference).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(diff, 0.0, "hidden {hidden}: the {name} forward differs from candle's by {diff}");
            }
            let weights = Tensor::from_vec(values(30, 4), (5, 6), &device).unwrap();
            let g1 = (&train * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (&reference * &weights).unwrap().sum_all().unwrap().backward().unwrap();
            let mut compared = 0;
            for var in varmap.all_vars() {
                // The standardisation statistics are not on this path: no gradient either way.
                let (a, b) = match (g1.get(var.as_tensor()), g2.get(var.as_tensor())) {
                    (None, None) => continue,
                    (Some(a), Some(b)) => (a, b),
                    _ => panic!("hidden {hidden}: one pass has a gradient the other has not"),
                };
                compared += 1;
                let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(diff < 1e-5, "hidden {hidden}: a gradient differs by {diff}");
            }
            assert_eq!(compared, if hidden > 0 { 4 } else { 2 }, "weights and biases of each layer");
        }
    }
}
