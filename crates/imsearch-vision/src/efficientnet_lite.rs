//! EfficientNet-Lite (Lite0, Lite2): EfficientNet without squeeze-excite, with ReLU6, a fixed
//! stem and head and TensorFlow "same" padding, under the lukemelas-style checkpoint names
//! (`_conv_stem`, `_bn0`, `_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, `_fc`).

use candle::{Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::encoder::ImageEncoder;
use crate::layers::{global_avg_pool, in_chunks, ConvBn, ConvSpec, InvertedResidual, Padding};
use crate::preprocess::PreprocessConfig;

/// EfficientNet-Lite hyper-parameters; the default is Lite0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EfficientNetLiteConfig {
    /// Model id, e.g. `efficientnet-lite0`.
    pub id: String,
    /// Channel multiplier (stem and head excepted).
    pub width: f64,
    /// Repeat multiplier (first and last stage excepted).
    pub depth: f64,
    /// Classifier outputs.
    pub num_classes: usize,
    /// Batch-norm epsilon.
    pub bn_eps: f64,
    /// How images are turned into input (crop = the native resolution).
    pub preprocess: PreprocessConfig,
}

impl Default for EfficientNetLiteConfig {
    fn default() -> Self {
        Self::lite0()
    }
}

impl EfficientNetLiteConfig {
    /// EfficientNet-Lite0: width 1.0, depth 1.0, input 224.
    pub fn lite0() -> Self {
        Self {
            id: "efficientnet-lite0".into(),
            width: 1.0,
            depth: 1.0,
            num_classes: 1000,
            bn_eps: 1e-3,
            preprocess: PreprocessConfig::efficientnet_lite(224),
        }
    }

    /// EfficientNet-Lite2: width 1.1, depth 1.2, input 260.
    pub fn lite2() -> Self {
        Self {
            id: "efficientnet-lite2".into(),
            width: 1.1,
            depth: 1.2,
            preprocess: PreprocessConfig::efficientnet_lite(260),
            ..Self::lite0()
        }
    }

    /// TensorFlow's `round_filters` (divisor 8).
    fn filters(&self, c: usize) -> usize {
        let c = c as f64 * self.width;
        let new = (8.0f64).max(((c + 4.0) as usize / 8 * 8) as f64);
        if new < 0.9 * c {
            new as usize + 8
        } else {
            new as usize
        }
    }
}

/// EfficientNet-Lite: stem, inverted residual blocks, 1x1 head to 1280 channels, global
/// average pooling and `_fc`.
#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    cfg: EfficientNetLiteConfig,
    stem: ConvBn,
    blocks: Vec<InvertedResidual>,
    head: ConvBn,
    fc: Linear,
}

impl EfficientNetLite {
    /// Lite0's stages as (repeats, kernel, first stride, expansion, channels).
    const STAGES: [(usize, usize, usize, usize, usize); 7] = [
        (1, 3, 1, 1, 16),
        (2, 3, 2, 6, 24),
        (2, 5, 2, 6, 40),
        (3, 3, 2, 6, 80),
        (3, 5, 1, 6, 112),
        (4, 5, 2, 6, 192),
        (1, 3, 1, 6, 320),
    ];
    const STEM: usize = 32;
    const HEAD: usize = 1280;

    pub fn new(cfg: &EfficientNetLiteConfig, vb: VarBuilder) -> candle::Result<Self> {
        let eps = cfg.bn_eps;
        let spec = |c_in, c_out, kernel, stride, groups, relu6| ConvSpec {
            c_in,
            c_out,
            kernel,
            stride,
            groups,
            padding: Padding::TfSame,
            eps,
            relu6,
        };
        let stem = ConvBn::new(spec(3, Self::STEM, 3, 2, 1, true), vb.pp("_conv_stem"), vb.pp("_bn0"))?;
        let mut blocks = Vec::new();
        let mut c_in = Self::STEM;
        let last_stage = Self::STAGES.len() - 1;
        for (i, (r, k, s, e, c)) in Self::STAGES.into_iter().enumerate() {
            let c_out = cfg.filters(c);
            let repeats = if i == 0 || i == last_stage { r } else { (cfg.depth * r as f64).ceil() as usize };
            for j in 0..repeats {
                let stride = if j == 0 { s } else { 1 };
                let hidden = c_in * e;
                let b = vb.pp("_blocks").pp(blocks.len().to_string());
                let expand = if e != 1 {
                    Some(ConvBn::new(spec(c_in, hidden, 1, 1, 1, true), b.pp("_expand_conv"), b.pp("_bn0"))?)
                } else {
                    None
                };
                let depthwise =
                    ConvBn::new(spec(hidden, hidden, k, stride, hidden, true), b.pp("_depthwise_conv"), b.pp("_bn1"))?;
                let project = ConvBn::new(spec(hidden, c_out, 1, 1, 1, false), b.pp("_project_conv"), b.pp("_bn2"))?;
                blocks.push(InvertedResidual { expand, depthwise, project, residual: stride == 1 && c_in == c_out });
                c_in = c_out;
            }
        }
        let head = ConvBn::new(spec(c_in, Self::HEAD, 1, 1, 1, true), vb.pp("_conv_head"), vb.pp("_bn1"))?;
        let fc = candle_nn::linear(Self::HEAD, cfg.num_classes, vb.pp("_fc"))?;
        Ok(Self { cfg: cfg.clone(), stem, blocks, head, fc })
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

    /// ImageNet logits: `(batch, 1280) -> (batch, 1000)`.
    pub fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        self.fc.forward(features)
    }
}

impl Module for EfficientNetLite {
    /// `(batch, 3, h, w) -> (batch, 1000)` ImageNet logits.
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.logits(&self.features(xs)?)
    }
}

impl ImageEncoder for EfficientNetLite {
    fn id(&self) -> &str {
        &self.cfg.id
    }

    fn dim(&self) -> usize {
        Self::HEAD
    }

    fn preprocess(&self) -> &PreprocessConfig {
        &self.cfg.preprocess
    }

    fn features(&self, xs: &Tensor) -> candle::Result<Tensor> {
        EfficientNetLite::features(self, xs)
    }

    fn logits(&self, features: &Tensor) -> candle::Result<Tensor> {
        EfficientNetLite::logits(self, features)
    }
}

#[cfg(test)]
mod tests {
    use super::EfficientNetLiteConfig;

    #[test]
    fn lite2_channels() {
        let cfg = EfficientNetLiteConfig::lite2();
        let got: Vec<_> = [16, 24, 40, 80, 112, 192, 320].map(|c| cfg.filters(c)).to_vec();
        assert_eq!(got, [16, 24, 48, 88, 120, 208, 352]);
        assert_eq!(EfficientNetLiteConfig::lite0().filters(112), 112);
    }
}
