//! The interface later code programs against ([`ImageEncoder`]), the list of encoders this
//! crate knows ([`EncoderKind`]), and the one place that touches weight files ([`load`]).

use std::path::Path;

use candle::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::efficientnet_lite::{EfficientNetLite, EfficientNetLiteConfig};
use crate::error::{Error, Result};
use crate::mobilenet_v2::{MobileNetV2, MobileNetV2Config};
use crate::preprocess::PreprocessConfig;

/// An image network that turns preprocessed images into feature vectors.
pub trait ImageEncoder: Send + Sync {
    /// Stable model id, e.g. `mobilenet-v2` (the weights' folder name in the model store).
    fn id(&self) -> &str;
    /// Length of a feature vector.
    fn dim(&self) -> usize;
    /// How images must be preprocessed for this network.
    fn preprocess(&self) -> &PreprocessConfig;
    /// Globally pooled features: `(batch, 3, crop, crop) -> (batch, dim)`.
    fn features(&self, xs: &Tensor) -> candle::Result<Tensor>;
    /// ImageNet logits from features: `(batch, dim) -> (batch, 1000)`.
    fn logits(&self, features: &Tensor) -> candle::Result<Tensor>;
}

/// The encoders this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EncoderKind {
    /// torchvision MobileNetV2, 224x224, 1280-d.
    MobileNetV2,
    /// EfficientNet-Lite0, 224x224, 1280-d.
    EfficientNetLite0,
    /// EfficientNet-Lite2, 260x260, 1280-d.
    EfficientNetLite2,
}

impl EncoderKind {
    pub const ALL: [EncoderKind; 3] =
        [EncoderKind::MobileNetV2, EncoderKind::EfficientNetLite0, EncoderKind::EfficientNetLite2];

    /// The model id (also the folder of its weights in the model store).
    pub fn id(self) -> &'static str {
        match self {
            EncoderKind::MobileNetV2 => "mobilenet-v2",
            EncoderKind::EfficientNetLite0 => "efficientnet-lite0",
            EncoderKind::EfficientNetLite2 => "efficientnet-lite2",
        }
    }

    /// The kind whose [`id`](Self::id) is `id`.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// The preprocessing the network was trained with.
    pub fn preprocess(self) -> PreprocessConfig {
        match self {
            EncoderKind::MobileNetV2 => PreprocessConfig::imagenet(),
            EncoderKind::EfficientNetLite0 => EfficientNetLiteConfig::lite0().preprocess,
            EncoderKind::EfficientNetLite2 => EfficientNetLiteConfig::lite2().preprocess,
        }
    }

    /// Builds the network from a `VarBuilder` holding its checkpoint's tensors.
    pub fn build(self, vb: VarBuilder) -> candle::Result<Box<dyn ImageEncoder>> {
        Ok(match self {
            EncoderKind::MobileNetV2 => Box::new(MobileNetV2::new(&MobileNetV2Config::default(), vb)?),
            EncoderKind::EfficientNetLite0 => Box::new(EfficientNetLite::new(&EfficientNetLiteConfig::lite0(), vb)?),
            EncoderKind::EfficientNetLite2 => Box::new(EfficientNetLite::new(&EfficientNetLiteConfig::lite2(), vb)?),
        })
    }
}

impl std::fmt::Display for EncoderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.id())
    }
}

/// Loads an encoder from an f32 safetensors file with the checkpoint's original tensor names.
pub fn load(kind: EncoderKind, weights: &Path, device: &Device) -> Result<Box<dyn ImageEncoder>> {
    let err = |source| Error::Weights { path: weights.to_owned(), source };
    // SAFETY: the file is memory-mapped read-only; the model store writes weight files once
    // (atomically, by rename) and never modifies them in place while they are in use.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, device) }.map_err(err)?;
    // The folded weights are new tensors, so the mapping is dropped once the network is built.
    kind.build(vb).map_err(err)
}
