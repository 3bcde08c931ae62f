//! A 1x1 ("pointwise") convolution for the CPU as a candle custom op: one matrix multiply per
//! image, `(c_out, c_in) @ (c_in, h*w)`, straight on the NCHW data with no im2col copy, with
//! the bias, an optional residual input and an optional ReLU6 fused in.
//!
//! The output is made a tile of columns at a time: the tile is filled with the bias (plus the
//! residual), the product is accumulated into it by `gemm` and ReLU6 is applied while the tile
//! is still in cache. Images run in parallel with rayon, each multiply on one thread; a batch
//! of one image lets `gemm` use all threads instead.

use std::mem::MaybeUninit;

use candle::{CpuStorage, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu;

/// Output columns (pixels) per tile: 256 to 1024 all measured within noise of each other on
/// MobileNetV2's layers; a whole image at once was slower.
const TILE: usize = 512;

/// A 1x1 convolution with bias whose weight and bias are packed into one `(c_out, c_in + 1)`
/// tensor (the bias is the last column), made by [`PointwiseConv2d::pack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointwiseConv2d {
    /// Apply `min(max(x, 0), 6)` to the output (after the residual is added).
    pub relu6: bool,
}

impl PointwiseConv2d {
    /// Packs a `(c_out, c_in, 1, 1)` or `(c_out, c_in)` weight and a `(c_out,)` bias into the
    /// `(c_out, c_in + 1)` layout `forward` takes.
    pub fn pack(weight: &Tensor, bias: &Tensor) -> candle::Result<Tensor> {
        let c_out = weight.dim(0)?;
        let weight = weight.reshape((c_out, ()))?;
        Tensor::cat(&[&weight, &bias.reshape((c_out, 1))?], 1)?.contiguous()
    }

    /// Runs the convolution: `(batch, c_in, h, w) -> (batch, c_out, h, w)`; `residual`, if
    /// given, has the output's shape and is added before the activation.
    pub fn forward(&self, xs: &Tensor, packed: &Tensor, residual: Option<&Tensor>) -> candle::Result<Tensor> {
        if !(xs.device().is_cpu() && xs.dtype() == candle::DType::F32) {
            return self.forward_reference(xs, packed, residual);
        }
        let xs = xs.contiguous()?;
        let packed = packed.contiguous()?;
        match residual {
            None => xs.apply_op2_no_bwd(&packed, self),
            Some(r) => xs.apply_op3_no_bwd(&packed, &r.contiguous()?, self),
        }
    }

    /// The same computation with plain candle ops: the reference the kernel is tested against,
    /// and the path for other devices.
    pub fn forward_reference(&self, xs: &Tensor, packed: &Tensor, residual: Option<&Tensor>) -> candle::Result<Tensor> {
        let (b, c_in, h, w) = xs.dims4()?;
        let c_out = packed.dim(0)?;
        let weight = packed.narrow(1, 0, c_in)?;
        let bias = packed.narrow(1, c_in, 1)?;
        let ys =
            weight.broadcast_matmul(&xs.reshape((b, c_in, h * w))?)?.broadcast_add(&bias)?.reshape((b, c_out, h, w))?;
        let ys = match residual {
            Some(r) => (ys + r)?,
            None => ys,
        };
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }

    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        packed: (&CpuStorage, &Layout),
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let name = "pointwise-conv2d";
        let (b, c_in, h, w) = x.1.shape().dims4()?;
        let (c_out, c_in1) = packed.1.shape().dims2()?;
        if c_in1 != c_in + 1 {
            candle::bail!("{name}: input {:?} does not fit packed weight {:?}", x.1.shape(), packed.1.shape())
        }
        let out_shape = Shape::from((b, c_out, h, w));
        let res = match residual {
            Some((s, l)) => {
                if l.shape() != &out_shape {
                    candle::bail!("{name}: residual {:?} is not the output shape {out_shape:?}", l.shape())
                }
                Some(cpu::f32_slice(s, l, name, "residual")?)
            }
            None => None,
        };
        let xs = cpu::f32_slice(x.0, x.1, name, "input")?;
        let wb = cpu::f32_slice(packed.0, packed.1, name, "weight")?;
        let hw = h * w;
        let len = b * c_out * hw;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        if len == 0 {
            return Ok((CpuStorage::F32(out), out_shape));
        }
        let image = |i: usize, o: &mut [MaybeUninit<f32>], par: gemm::Parallelism| {
            let args = Image {
                x: &xs[i * c_in * hw..(i + 1) * c_in * hw],
                wb,
                residual: res.map(|r| &r[i * c_out * hw..(i + 1) * c_out * hw]),
                c_in,
                c_out,
                hw,
                relu6: self.relu6,
                out: o,
            };
            args.run(par)
        };
        let buf = &mut out.spare_capacity_mut()[..len];
        if b == 1 {
            image(0, buf, gemm::Parallelism::Rayon(0));
        } else {
            buf.par_chunks_mut(c_out * hw).enumerate().for_each(|(i, o)| image(i, o, gemm::Parallelism::None));
        }
        // SAFETY: the images cover all `len` values and `Image::run` writes every value of its
        // image.
        unsafe { out.set_len(len) };
        Ok((CpuStorage::F32(out), out_shape))
    }
}

/// One image's multiply: `out = act(wb[:, ..c_in] @ x + wb[:, c_in] + residual)`, with `x`
/// `(c_in, hw)`, `wb` `(c_out, c_in + 1)` and `out` and `residual` `(c_out, hw)`, row-major.
pub(crate) struct Image<'a> {
    pub(crate) x: &'a [f32],
    pub(crate) wb: &'a [f32],
    pub(crate) residual: Option<&'a [f32]>,
    pub(crate) c_in: usize,
    pub(crate) c_out: usize,
    pub(crate) hw: usize,
    pub(crate) relu6: bool,
    /// Uninitialised on entry, every value written on return.
    pub(crate) out: &'a mut [MaybeUninit<f32>],
}

impl Image<'_> {
    pub(crate) fn run(self, par: gemm::Parallelism) {
        let Image { x, wb, residual, c_in, c_out, hw, relu6, out } = self;
        assert!(
            x.len() == c_in * hw && wb.len() == c_out * (c_in + 1) && out.len() == c_out * hw,
            "pointwise-conv2d: slice lengths do not match the shapes"
        );
        let mut j0 = 0;
        while j0 < hw {
            let n = TILE.min(hw - j0);
            // Start the tile (rows 0..c_out, columns j0..j0 + n) at bias (+ residual).
            for co in 0..c_out {
                let bias = wb[co * (c_in + 1) + c_in];
                let o = &mut out[co * hw + j0..co * hw + j0 + n];
                match residual {
                    Some(r) => {
                        for (o, r) in o.iter_mut().zip(&r[co * hw + j0..co * hw + j0 + n]) {
                            o.write(bias + r);
                        }
                    }
                    None => {
                        for o in o.iter_mut() {
                            o.write(bias);
                        }
                    }
                }
            }
            // SAFETY: the assert above gives `x` c_in rows of hw, `wb` c_out rows of c_in + 1
            // and `out` c_out rows of hw; the multiply reads and writes columns j0..j0 + n <= hw
            // of `x` and `out` (initialised just above) and the first c_in columns of `wb`, all
            // in bounds. `out` is borrowed mutably here and nothing else aliases it.
            unsafe {
                gemm::gemm(
                    c_out,
                    n,
                    c_in,
                    out.as_mut_ptr().add(j0).cast::<f32>(),
                    1,
                    hw as isize,
                    true,
                    wb.as_ptr(),
                    1,
                    (c_in + 1) as isize,
                    x.as_ptr().add(j0),
                    1,
                    hw as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
            if relu6 {
                for co in 0..c_out {
                    let o = &mut out[co * hw + j0..co * hw + j0 + n];
                    // SAFETY: this part of the tile was initialised above.
                    let o = unsafe { &mut *(o as *mut [MaybeUninit<f32>] as *mut [f32]) };
                    for v in o {
                        *v = cpu::relu6(*v);
                    }
                }
            }
            j0 += n;
        }
    }
}

impl CustomOp2 for PointwiseConv2d {
    fn name(&self) -> &'static str {
        "pointwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for PointwiseConv2d {
    fn name(&self) -> &'static str {
        "pointwise-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

#[cfg(test)]
mod tests {
    use candle::{Device, Tensor};

    use super::*;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[track_caller]
    fn check(b: usize, c_in: usize, c_out: usize, h: usize, w: usize, res: bool, relu6: bool) {
        let xs = rand(&[b, c_in, h, w], 1);
        let packed =
            PointwiseConv2d::pack(&rand(&[c_out, c_in, 1, 1], 2), &(rand(&[c_out], 3) * 4.0).unwrap()).unwrap();
        let r = rand(&[b, c_out, h, w], 4);
        let r = res.then_some(&r);
        let op = PointwiseConv2d { relu6 };
        let got = op.forward(&xs, &packed, r).unwrap();
        let want = op.forward_reference(&xs, &packed, r).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff =
            (got - want).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max diff {diff}");
    }

    #[test]
    fn matches_matmul() {
        check(2, 16, 96, 23, 31, false, true);
        check(1, 16, 96, 23, 31, true, false);
        check(3, 40, 8, 7, 7, true, true);
        check(2, 7, 5, 33, 33, false, false);
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let xs = rand(&[1, 4, 3, 3], 1);
        let packed = PointwiseConv2d::pack(&rand(&[2, 5], 2), &rand(&[2], 3)).unwrap();
        assert!(PointwiseConv2d { relu6: false }.forward(&xs, &packed, None).is_err());
    }
}
