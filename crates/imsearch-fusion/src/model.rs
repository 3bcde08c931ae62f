//! The fusion model's layers, scoring and checkpoint format.

use std::{collections::HashMap, path::Path};

use candle::{DType, Device, Module, Tensor, D};
use candle_nn::{Linear, VarBuilder};
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

/// Standardisation followed by an MLP (or a linear map) into the shared space, L2-normalised.
#[derive(Debug, Clone)]
pub struct Projection {
    mean: Tensor,
    inv_std: Tensor,
    hidden: Option<Linear>,
    out: Linear,
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
        Ok(Projection { mean, inv_std, hidden, out })
    }

    /// `(n, in_dim) -> (n, shared_dim)`, each row of unit length.
    pub fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.forward_standardised(&self.standardise(xs)?)
    }

    /// `(n, in_dim) -> (n, in_dim)`: the inputs centred and scaled as [`Projection::forward`] does
    /// first (row by row, so standardising a matrix once and selecting rows later gives the
    /// same numbers).
    pub fn standardise(&self, xs: &Tensor) -> candle::Result<Tensor> {
        xs.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)
    }

    /// [`Projection::forward`] of inputs already passed through [`Projection::standardise`].
    pub fn forward_standardised(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let xs = match &self.hidden {
            Some(h) => h.forward(xs)?.gelu()?,
            None => xs.clone(),
        };
        l2_normalise(&self.out.forward(&xs)?)
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
        let text = Projection::new(config.text_dim, config.hidden_dim, config.shared_dim, vb.pp("text"))?;
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

    fn calibrate(&self, cos: &Tensor) -> candle::Result<Tensor> {
        cos.broadcast_mul(&self.scale)?.broadcast_add(&self.offset)
    }

    /// Writes `<dir>/fusion.safetensors` and `<dir>/fusion.json` atomically.
    pub fn save(&self, tensors: &HashMap<String, Tensor>, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Write { path: dir.to_owned(), source })?;
        let weights = dir.join("fusion.safetensors");
        let tmp = dir.join("fusion.safetensors.tmp");
        candle::safetensors::save(tensors, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(|source| Error::Write { path: weights.clone(), source })?;
        let config = dir.join("fusion.json");
        let tmp = dir.join("fusion.json.tmp");
        let json = serde_json::to_string_pretty(&self.config).expect("config serialises");
        std::fs::write(&tmp, json).map_err(|source| Error::Write { path: tmp.clone(), source })?;
        std::fs::rename(&tmp, &config).map_err(|source| Error::Write { path: config, source })
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
