//! MobileNetV2 as in torchvision (`torchvision.models.mobilenet_v2`), with torchvision's
//! checkpoint names (`features.N...`, `classifier.1`).

use candle::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::encoder::ImageEncoder;
use crate::layers::{global_avg_pool, in_chunks, ConvBn, ConvSpec, InvertedResidual, Padding};
use crate::preprocess::PreprocessConfig;

/// MobileNetV2 hyper-parameters; the default is torchvision's ImageNet model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MobileNetV2Config {
    /// Channel multiplier (torchvision's `width_mult`).
    pub width_mult: f64,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Batch-norm epsilon.
    pub bn_eps: f64,
    /// How images are turned into input.
    pub preprocess: PreprocessConfig,
}

impl Default for MobileNetV2Config {
    fn default() -> Self {
        Self { width_mult: 1.0, num_classes: 1000, bn_eps: 1e-5, preprocess: PreprocessConfig::imagenet() }
    }
}

/// torchvision's `_make_divisible(v, 8)`.
fn make_divisible(v: f64) -> usize {
    let d = 8.0f64;
    let new = (d.max(((v + d / 2.0) / d).floor() * d)) as usize;
    if (new as f64) < 0.9 * v {
        new + 8
    } else {
        new
    }
}

/// torchvision's MobileNetV2: `features` (stem, 17 inverted residual blocks, 1x1 head to
/// 1280 channels), global average pooling and `classifier.1`.
#[derive(Debug, Clone)]
pub struct MobileNetV2 {
    cfg: MobileNetV2Config,
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    classifier: Linear,
    dim: usize,
}

impl MobileNetV2 {
    /// Stages as (expansion t, channels c, repeats n, first stride s).
    const STAGES: [(usize, usize, usize, usize); 7] =
        [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)];

    pub fn new(cfg: &MobileNetV2Config, vb: VarBuilder) -> candle::Result<Self> {
        let eps = cfg.bn_eps;
        let spec = |c_in, c_out, kernel, stride, groups, relu6| ConvSpec {
            c_in,
            c_out,
            kernel,
            stride,
            groups,
            padding: Padding::Symmetric,
            eps,
            relu6,
        };
        let f = vb.pp("features");
        let mut c_in = make_divisible(32.0 * cfg.width_mult);
        let last = make_divisible(1280.0 * cfg.width_mult.max(1.0));
        let stem = ConvBn::new(spec(3, c_in, 3, 2, 1, true), f.pp("0").pp("0"), f.pp("0").pp("1"))?;
        let mut blocks = Vec::new();
        for (t, c, n, s) in Self::STAGES {
            let c_out = make_divisible(c as f64 * cfg.width_mult);
            for i in 0..n {
                let stride = if i == 0 { s } else { 1 };
                let hidden = c_in * t;
                let conv = f.pp((blocks.len() + 1).to_string()).pp("conv");
                // torchvision numbers the block's layers: [expand (ConvBNReLU)], depthwise
                // (ConvBNReLU), project conv, project bn.
                let (expand, j) = if t != 1 {
                    let e = ConvBn::new(spec(c_in, hidden, 1, 1, 1, true), conv.pp("0").pp("0"), conv.pp("0").pp("1"))?;
                    (Some(e), 1)
                } else {
                    (None, 0)
                };
                let depthwise = ConvBn::new(
                    spec(hidden, hidden, 3, stride, hidden, true),
                    conv.pp(j.to_string()).pp("0"),
                    conv.pp(j.to_string()).pp("1"),
                )?;
                let project = ConvBn::new(
                    spec(hidden, c_out, 1, 1, 1, false),
                    conv.pp((j + 1).to_string()),
                    conv.pp((j + 2).to_string()),
                )?;
                blocks.push(InvertedResidual { expand, depthwise, project, residual: stride == 1 && c_in == c_out });
                c_in = c_out;
            }
        }
        let head_idx = (blocks.len() + 1).to_string();
        let head = ConvBn::new(spec(c_in, last, 1, 1, 1, true), f.pp(&head_idx).pp("0"), f.pp(&head_idx).pp("1"))?;
        let classifier = candle_nn::linear(last, cfg.num_classes, vb.pp("classifier").pp("1"))?;
        Ok(Self { cfg: cfg.clone(), stem, blocks, head, classifier, dim: last })
    }

    /// Globally average-pooled features: `(batch, 3, h, w) -> (batch, 1280)`.
    pub fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        in_chunks(xs, |xs| {
            let mut xs = self.stem.forward(xs)?;
            for block in &self.blocks {
                xs = block.forward(&xs)?;
            }
            global_avg_pool(&self.head.forward(&xs)?)
        })
    }

    /// ImageNet logits: `(batch, 1280) -> (batch, 1000)` (the dropout before `classifier.1`
    /// is the identity at inference).
    pub fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        self.classifier.forward(features)
    }
}

impl Module for MobileNetV2 {
    /// `(batch, 3, h, w) -> (batch, 1000)` ImageNet logits.
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.logits(&self.features(xs)?)
    }
}

impl ImageEncoder for MobileNetV2 {
    fn id(&self) -> &str {
        "mobilenet-v2"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn preprocess(&self) -> &PreprocessConfig {
        &self.cfg.preprocess
    }

    fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        MobileNetV2::features(self, xs)
    }

    fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        MobileNetV2::logits(self, features)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn make_divisible_matches_torchvision() {
        assert_eq!(super::make_divisible(32.0), 32);
        assert_eq!(super::make_divisible(1280.0), 1280);
        assert_eq!(super::make_divisible(16.0 * 0.75), 16);
        assert_eq!(super::make_divisible(24.0 * 0.35), 8);
    }
}
