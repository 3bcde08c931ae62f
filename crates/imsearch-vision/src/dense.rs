//! A dense (groups = 1) k x k convolution for the CPU as a candle custom op: per image, an
//! im2col copy into a per-thread buffer, then the fused multiply of [`crate::pointwise`]
//! (bias and ReLU6 included). Used for the networks' 3x3 stride-2 stems, where candle's own
//! `conv2d` is several times slower; padding is per side for TensorFlow "same".

use candle::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu;
use crate::pointwise::{Image, PointwiseConv2d};

/// A dense convolution with bias: `(batch, c_in, h, w)` input and a `(c_out, c_in * k * k + 1)`
/// packed weight (the `(c_out, c_in, k, k)` weight flattened, bias last) made by
/// [`PointwiseConv2d::pack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseConv2d {
    /// Kernel side.
    pub kernel: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero padding `[top, bottom, left, right]`.
    pub padding: [usize; 4],
    /// Apply `min(max(x, 0), 6)` to the output.
    pub relu6: bool,
}

impl DenseConv2d {
    /// Output height and width for an `h x w` input.
    pub fn out_dims(&self, h: usize, w: usize) -> candle::Result<(usize, usize)> {
        let [top, bottom, left, right] = self.padding;
        let (hp, wp, k) = (h + top + bottom, w + left + right, self.kernel);
        if self.stride == 0 || k == 0 || hp < k || wp < k {
            candle::bail!("dense conv: padded input {hp}x{wp} smaller than kernel {k} or zero stride")
        }
        Ok(((hp - k) / self.stride + 1, (wp - k) / self.stride + 1))
    }

    /// Runs the convolution: `(batch, c_in, h, w) -> (batch, c_out, h_out, w_out)`.
    pub fn forward(&self, xs: &Tensor, packed: &Tensor) -> candle::Result<Tensor> {
        if xs.device().is_cpu() && xs.dtype() == candle::DType::F32 {
            xs.contiguous()?.apply_op2_no_bwd(&packed.contiguous()?, self)
        } else {
            self.forward_reference(xs, packed)
        }
    }

    /// The same convolution with candle's `conv2d`: the test reference and the path for other
    /// devices.
    pub fn forward_reference(&self, xs: &Tensor, packed: &Tensor) -> candle::Result<Tensor> {
        let c_in = xs.dim(1)?;
        let (c_out, n) = packed.dims2()?;
        let k = self.kernel;
        if n != c_in * k * k + 1 {
            candle::bail!("dense conv: packed weight {:?} does not fit {c_in} channels", packed.shape())
        }
        let weight = packed.narrow(1, 0, n - 1)?.reshape((c_out, c_in, k, k))?;
        let bias = packed.narrow(1, n - 1, 1)?.reshape((1, c_out, 1, 1))?;
        let [top, bottom, left, right] = self.padding;
        let xs = xs.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let ys = xs.conv2d(&weight, 0, self.stride, 1, 1)?.broadcast_add(&bias)?;
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }
}

impl CustomOp2 for DenseConv2d {
    fn name(&self) -> &'static str {
        "dense-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let name = self.name();
        let (b, c_in, h, w) = l1.shape().dims4()?;
        let (c_out, n) = l2.shape().dims2()?;
        let k = self.kernel;
        if n != c_in * k * k + 1 {
            candle::bail!("{name}: input {:?} does not fit packed weight {:?}", l1.shape(), l2.shape())
        }
        let xs = cpu::f32_slice(s1, l1, name, "input")?;
        let wb = cpu::f32_slice(s2, l2, name, "weight")?;
        let (ho, wo) = self.out_dims(h, w)?;
        let hw = ho * wo;
        let rows = c_in * k * k;
        let len = b * c_out * hw;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        if len > 0 {
            out.spare_capacity_mut()[..len].par_chunks_mut(c_out * hw).zip(xs.par_chunks(c_in * h * w)).for_each_init(
                || vec![0f32; rows * hw],
                |cols, (o, x)| {
                    self.im2col(x, c_in, h, w, ho, wo, cols);
                    Image { x: cols, wb, residual: None, c_in: rows, c_out, hw, relu6: self.relu6, out: o }
                        .run(gemm::Parallelism::None)
                },
            );
            // SAFETY: the images cover all `len` values and `Image::run` writes every value of
            // its image.
            unsafe { out.set_len(len) };
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c_out, ho, wo))))
    }
}

impl DenseConv2d {
    /// Writes the `(c_in * k * k, ho * wo)` patch matrix of one image into `cols`.
    #[allow(clippy::too_many_arguments)]
    fn im2col(&self, x: &[f32], c_in: usize, h: usize, w: usize, ho: usize, wo: usize, cols: &mut [f32]) {
        let (k, s) = (self.kernel, self.stride);
        let [top, _, left, _] = self.padding;
        let hw = ho * wo;
        for ci in 0..c_in {
            let plane = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..k {
                for kx in 0..k {
                    let row = &mut cols[((ci * k + ky) * k + kx) * hw..][..hw];
                    for oy in 0..ho {
                        let out = &mut row[oy * wo..(oy + 1) * wo];
                        let iy = (oy * s + ky).wrapping_sub(top);
                        if iy >= h {
                            out.fill(0.0);
                            continue;
                        }
                        let src = &plane[iy * w..(iy + 1) * w];
                        for (ox, o) in out.iter_mut().enumerate() {
                            let ix = (ox * s + kx).wrapping_sub(left);
                            *o = if ix < w { src[ix] } else { 0.0 };
                        }
                    }
                }
            }
        }
    }
}

/// Packs a `(c_out, c_in, k, k)` weight and `(c_out,)` bias for [`DenseConv2d`].
pub fn pack(weight: &Tensor, bias: &Tensor) -> candle::Result<Tensor> {
    PointwiseConv2d::pack(weight, bias)
}

#[cfg(test)]
mod tests {
    use candle::{Device, Tensor};

    use super::*;

    #[track_caller]
    fn check(c_in: usize, c_out: usize, h: usize, w: usize, op: DenseConv2d) {
        let dev = Device::Cpu;
        let k = op.kernel;
        let xs = Tensor::randn(0f32, 1f32, (2, c_in, h, w), &dev).unwrap();
        let wk = Tensor::randn(0f32, 1f32, (c_out, c_in, k, k), &dev).unwrap();
        let bias = Tensor::randn(0f32, 1f32, c_out, &dev).unwrap();
        let packed = pack(&wk, &bias).unwrap();
        let got = op.forward(&xs, &packed).unwrap();
        let want = op.forward_reference(&xs, &packed).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff =
            (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{op:?}: {diff}");
    }

    #[test]
    fn matches_candle_conv2d() {
        let op = |kernel, stride, padding, relu6| DenseConv2d { kernel, stride, padding, relu6 };
        check(3, 32, 224, 224, op(3, 2, [1, 1, 1, 1], true));
        check(3, 32, 224, 224, op(3, 2, [0, 1, 0, 1], true));
        check(3, 8, 17, 20, op(3, 2, [1, 1, 1, 1], false));
        check(4, 5, 9, 9, op(5, 1, [2, 2, 2, 2], false));
        check(2, 3, 8, 8, op(1, 1, [0, 0, 0, 0], true));
    }
}
