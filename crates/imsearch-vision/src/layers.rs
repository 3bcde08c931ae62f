//! The building block both networks are made of: a convolution whose batch norm was folded
//! into its weight and bias at load time, followed by an optional ReLU6.

use candle::{Module, Tensor};
use candle_nn::VarBuilder;

use crate::dense::DenseConv2d;
use crate::depthwise::DepthwiseConv2d;
use crate::pointwise::PointwiseConv2d;

/// How a convolution pads its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Padding {
    /// PyTorch's `padding=(k - 1) / 2` on every side.
    Symmetric,
    /// TensorFlow's "same": output `ceil(in / stride)`, the odd pixel of padding at the
    /// bottom/right.
    TfSame,
}

impl Padding {
    /// `[top, bottom, left, right]` for an `h x w` input.
    fn sides(self, h: usize, w: usize, k: usize, stride: usize) -> [usize; 4] {
        match self {
            Padding::Symmetric => [(k - 1) / 2; 4],
            Padding::TfSame => {
                let total = |n: usize| ((n.div_ceil(stride) - 1) * stride + k).saturating_sub(n);
                let (ph, pw) = (total(h), total(w));
                [ph / 2, ph - ph / 2, pw / 2, pw - pw / 2]
            }
        }
    }
}

/// The shape of one convolution as stored in a checkpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvSpec {
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) kernel: usize,
    pub(crate) stride: usize,
    /// 1, or `c_in` (= `c_out`) for a depthwise convolution.
    pub(crate) groups: usize,
    pub(crate) padding: Padding,
    /// Batch-norm epsilon.
    pub(crate) eps: f64,
    pub(crate) relu6: bool,
}

#[derive(Debug, Clone)]
enum Kind {
    /// 1x1, stride 1: weight and bias packed for [`PointwiseConv2d`].
    Pointwise { packed: Tensor },
    /// groups = channels: `(c, 1, k, k)` weight.
    Depthwise { weight: Tensor, bias: Tensor },
    /// Anything else (the 3x3 stem): im2col + multiply, weight and bias packed.
    Dense { packed: Tensor },
}

/// Convolution (bias-free in the checkpoint) + batch norm (+ ReLU6), with the batch norm
/// folded into the convolution: `w' = w * g / sqrt(v + eps)`, `b' = beta - m * g / sqrt(v + eps)`.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    spec: ConvSpec,
    kind: Kind,
}

impl ConvBn {
    /// Reads `weight` from `conv` and `weight`, `bias`, `running_mean`, `running_var` from `bn`.
    pub(crate) fn new(spec: ConvSpec, conv: VarBuilder, bn: VarBuilder) -> candle::Result<Self> {
        let ConvSpec { c_in, c_out, kernel: k, groups, .. } = spec;
        if groups != 1 && (groups != c_in || c_in != c_out) {
            candle::bail!(
                "only dense or depthwise convolutions are supported, got groups {groups} for {c_in} -> {c_out}"
            )
        }
        let weight = conv.get((c_out, c_in / groups, k, k), "weight")?;
        let gamma = bn.get(c_out, "weight")?;
        let beta = bn.get(c_out, "bias")?;
        let mean = bn.get(c_out, "running_mean")?;
        let var = bn.get(c_out, "running_var")?;
        let scale = (gamma / (var + spec.eps)?.sqrt()?)?;
        let weight = weight.broadcast_mul(&scale.reshape((c_out, 1, 1, 1))?)?;
        let bias = (beta - (mean * &scale)?)?;
        let kind = if k == 1 && spec.stride == 1 && groups == 1 {
            Kind::Pointwise { packed: PointwiseConv2d::pack(&weight, &bias)? }
        } else if groups > 1 {
            Kind::Depthwise { weight, bias }
        } else {
            Kind::Dense { packed: crate::dense::pack(&weight, &bias)? }
        };
        Ok(Self { spec, kind })
    }

    /// `(batch, c_in, h, w) -> (batch, c_out, h', w')`, adding `residual` (the output's
    /// shape) before the activation if given.
    pub(crate) fn forward_residual(&self, xs: &Tensor, residual: Option<&Tensor>) -> candle::Result<Tensor> {
        let s = &self.spec;
        let ys = match &self.kind {
            Kind::Pointwise { packed } => {
                return PointwiseConv2d { relu6: s.relu6 }.forward(xs, packed, residual);
            }
            Kind::Depthwise { weight, bias } => {
                let (_, _, h, w) = xs.dims4()?;
                let op = DepthwiseConv2d {
                    stride: s.stride,
                    padding: s.padding.sides(h, w, s.kernel, s.stride),
                    relu6: s.relu6 && residual.is_none(),
                };
                op.forward(xs, weight, bias)?
            }
            Kind::Dense { packed } => {
                let (_, _, h, w) = xs.dims4()?;
                let op = DenseConv2d {
                    kernel: s.kernel,
                    stride: s.stride,
                    padding: s.padding.sides(h, w, s.kernel, s.stride),
                    relu6: s.relu6 && residual.is_none(),
                };
                op.forward(xs, packed)?
            }
        };
        match residual {
            Some(r) => {
                let ys = (ys + r)?;
                if s.relu6 {
                    ys.clamp(0f32, 6f32)
                } else {
                    Ok(ys)
                }
            }
            None => Ok(ys),
        }
    }
}

impl Module for ConvBn {
    /// `(batch, c_in, h, w) -> (batch, c_out, h', w')`.
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.forward_residual(xs, None)
    }
}

/// An inverted residual block (MobileNetV2 and EfficientNet-Lite alike): optional 1x1
/// expansion + ReLU6, depthwise + ReLU6, linear 1x1 projection, plus the input when the shape
/// is kept.
#[derive(Debug, Clone)]
pub(crate) struct InvertedResidual {
    pub(crate) expand: Option<ConvBn>,
    pub(crate) depthwise: ConvBn,
    pub(crate) project: ConvBn,
    pub(crate) residual: bool,
}

impl Module for InvertedResidual {
    /// `(batch, c_in, h, w) -> (batch, c_out, h / stride, w / stride)` (rounded up).
    fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        let ys = match &self.expand {
            Some(e) => e.forward(xs)?,
            None => xs.clone(),
        };
        let ys = self.depthwise.forward(&ys)?;
        self.project.forward_residual(&ys, self.residual.then_some(xs))
    }
}

/// Images per pass through the network. Larger batches are cut into chunks of this many so
/// that activations stay small enough for the allocator to reuse (instead of mapping fresh
/// zeroed pages for every op) and mostly stay in cache. Measured at batch 32 on 2 cores:
/// MobileNetV2 94, 114, 148 and 142 images/s for chunks of 32, 8, 4 and 2.
pub(crate) const SUB_BATCH: usize = 4;

/// Runs `f` on chunks of at most [`SUB_BATCH`] images and concatenates the results along
/// the batch dimension.
pub(crate) fn in_chunks(xs: &Tensor, f: impl Fn(&Tensor) -> candle::Result<Tensor>) -> candle::Result<Tensor> {
    let b = xs.dim(0)?;
    let n = SUB_BATCH;
    if b <= n {
        return f(xs);
    }
    let parts = (0..b).step_by(n).map(|i| f(&xs.narrow(0, i, n.min(b - i))?)).collect::<candle::Result<Vec<_>>>()?;
    Tensor::cat(&parts, 0)
}

/// Mean over the spatial dimensions: `(batch, c, h, w) -> (batch, c)`.
pub(crate) fn global_avg_pool(xs: &Tensor) -> candle::Result<Tensor> {
    xs.mean((2, 3))
}

#[cfg(test)]
mod tests {
    use super::Padding;

    #[test]
    fn tf_same_padding() {
        assert_eq!(Padding::TfSame.sides(224, 224, 3, 2), [0, 1, 0, 1]);
        assert_eq!(Padding::TfSame.sides(112, 112, 3, 1), [1, 1, 1, 1]);
        assert_eq!(Padding::TfSame.sides(56, 56, 5, 2), [1, 2, 1, 2]);
        assert_eq!(Padding::TfSame.sides(65, 65, 5, 2), [2, 2, 2, 2]);
        assert_eq!(Padding::TfSame.sides(7, 7, 1, 1), [0, 0, 0, 0]);
        assert_eq!(Padding::Symmetric.sides(224, 224, 3, 2), [1, 1, 1, 1]);
    }
}
