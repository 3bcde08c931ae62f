//! A fast depthwise 2-D convolution (groups = channels) for the CPU, as a candle custom op.
//!
//! candle's `conv2d` with `groups > 1` runs one convolution per group, which makes
//! MobileNetV2-style networks crawl. This kernel works plane by plane (one image, one
//! channel), a few groups of planes per rayon thread. Each plane is copied once into a
//! zero-padded scratch buffer, split into stride phases so that stride 2 reads contiguous
//! memory too; with the padded row width as the accumulator's row stride, every one of the
//! `k * k` taps is then a single multiply-add loop over the whole plane at a fixed offset,
//! which the compiler vectorises fully (see `Geometry`). Bias and an optional ReLU6 are fused
//! into the final copy-out, which also drops the padding columns. The loops are compiled for
//! AVX-512, AVX2+FMA and the baseline target and picked at run time (no `target-cpu=native`
//! needed). The output is written without being zero-filled first.

use std::mem::MaybeUninit;

use candle::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::{self, Isa, MulAdd, Unfused};

/// Kernel sizes the CPU kernel is specialised for.
const KERNELS: [usize; 3] = [3, 5, 7];

/// A depthwise convolution with bias: `(batch, c, h, w)` input, `(c, 1, k, k)` weight, `(c,)`
/// bias.
///
/// Padding is given per side so that TensorFlow "same" padding (one more row/column at the
/// bottom/right) is expressed exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConv2d {
    /// Stride in both directions: 1 or 2.
    pub stride: usize,
    /// Zero padding `[top, bottom, left, right]`.
    pub padding: [usize; 4],
    /// Apply `min(max(x, 0), 6)` to the output.
    pub relu6: bool,
}

impl DepthwiseConv2d {
    /// Output height and width for an input of `h x w` and a `k x k` kernel, or an error when
    /// the padded input is smaller than the kernel.
    pub fn out_dims(&self, h: usize, w: usize, k: usize) -> candle::Result<(usize, usize)> {
        let [top, bottom, left, right] = self.padding;
        let (hp, wp) = (h + top + bottom, w + left + right);
        if self.stride == 0 || hp < k || wp < k {
            candle::bail!("depthwise conv: padded input {hp}x{wp} smaller than kernel {k} or zero stride")
        }
        Ok(((hp - k) / self.stride + 1, (wp - k) / self.stride + 1))
    }

    /// Runs the convolution: `(batch, c, h, w) -> (batch, c, h_out, w_out)`.
    ///
    /// On the CPU with f32 data this is the dedicated kernel (kernel 3, 5 or 7, stride 1 or 2);
    /// anything else falls back to [`DepthwiseConv2d::forward_reference`].
    pub fn forward(&self, xs: &Tensor, weight: &Tensor, bias: &Tensor) -> candle::Result<Tensor> {
        let (_, _, k, _) = weight.dims4()?;
        let fast = xs.device().is_cpu()
            && xs.dtype() == candle::DType::F32
            && KERNELS.contains(&k)
            && (self.stride == 1 || self.stride == 2);
        if fast {
            xs.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, self)
        } else {
            self.forward_reference(xs, weight, bias)
        }
    }

    /// The same convolution with candle's grouped `conv2d` (slow on the CPU): the reference the
    /// kernel is tested against, and the path for other devices.
    pub fn forward_reference(&self, xs: &Tensor, weight: &Tensor, bias: &Tensor) -> candle::Result<Tensor> {
        let c = xs.dim(1)?;
        let [top, bottom, left, right] = self.padding;
        let xs = xs.pad_with_zeros(2, top, bottom)?.pad_with_zeros(3, left, right)?;
        let ys = xs.conv2d(weight, 0, self.stride, 1, c)?;
        let ys = ys.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
        if self.relu6 {
            ys.clamp(0f32, 6f32)
        } else {
            Ok(ys)
        }
    }
}

/// Where everything lives in the scratch buffer of one plane.
///
/// The zero-padded input plane is split into `stride * stride` phase planes (row parity x
/// column parity for stride 2), each `hq x wq`, so that every tap of every output reads a
/// contiguous run: output `(oy, ox)` at flat position `oy * wq + ox` takes tap `(ky, kx)` from
/// phase `(ky % s, kx % s)` at flat position `oy * wq + ox + (ky / s) * wq + kx / s`. The
/// accumulator is laid out the same way (`ho x wq`, the last `wq - wo` columns discarded), so
/// each tap is one long multiply-add loop over the whole plane.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    top: usize,
    left: usize,
    /// Padded rows and columns the output reads.
    rows: usize,
    cols: usize,
    /// Phase plane width and length (one spare row so the last taps stay in bounds).
    wq: usize,
    phase_len: usize,
}

impl Geometry {
    fn new(h: usize, w: usize, ho: usize, wo: usize, k: usize, s: usize, p: [usize; 4]) -> Self {
        let rows = (ho - 1) * s + k;
        let cols = (wo - 1) * s + k;
        let wq = cols.div_ceil(s);
        let hq = rows.div_ceil(s);
        Self { h, w, ho, wo, top: p[0], left: p[2], rows, cols, wq, phase_len: (hq + 1) * wq }
    }

    fn scratch_len(&self, s: usize) -> usize {
        s * s * self.phase_len + self.ho * self.wq
    }
}

impl CustomOp3 for DepthwiseConv2d {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
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
        let name = self.name();
        let (b, c, h, w) = l1.shape().dims4()?;
        let (cw, one, k, k2) = l2.shape().dims4()?;
        let cb = l3.shape().dims1()?;
        if cw != c || cb != c || one != 1 || k != k2 {
            candle::bail!(
                "{name}: input {:?} does not fit weight {:?} and bias {:?}",
                l1.shape(),
                l2.shape(),
                l3.shape()
            )
        }
        let x = cpu::f32_slice(s1, l1, name, "input")?;
        let wk = cpu::f32_slice(s2, l2, name, "weight")?;
        let bias = cpu::f32_slice(s3, l3, name, "bias")?;
        let (ho, wo) = self.out_dims(h, w, k)?;
        let g = Geometry::new(h, w, ho, wo, k, self.stride, self.padding);
        let (planes, plane_out) = (b * c, ho * wo);
        let mut out: Vec<f32> = Vec::with_capacity(planes * plane_out);
        if planes * plane_out > 0 {
            let isa = Isa::detect();
            let plane_fn = select(k, self.stride)?;
            // A few groups of planes per thread, each with its own scratch buffer.
            let per = planes.div_ceil(4 * rayon::current_num_threads()).max(1);
            out.spare_capacity_mut()
                .par_chunks_mut(per * plane_out)
                .zip(x.par_chunks(per * h * w))
                .enumerate()
                .for_each(|(group, (o, xg))| {
                    let mut scratch = vec![0f32; g.scratch_len(self.stride)];
                    for (j, (o, xp)) in o.chunks_mut(plane_out).zip(xg.chunks(h * w)).enumerate() {
                        let ch = (group * per + j) % c;
                        let args = PlaneArgs {
                            g: &g,
                            x: xp,
                            wk: &wk[ch * k * k..(ch + 1) * k * k],
                            bias: bias[ch],
                            relu6: self.relu6,
                            scratch: &mut scratch,
                            out: o,
                        };
                        plane_fn(isa, args)
                    }
                });
            // SAFETY: the chunks above cover the whole capacity (planes * plane_out values),
            // and `plane` writes every value of its plane (ho rows of wo).
            unsafe { out.set_len(planes * plane_out) };
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, ho, wo))))
    }
}

struct PlaneArgs<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    wk: &'a [f32],
    bias: f32,
    relu6: bool,
    scratch: &'a mut [f32],
    /// The plane's `ho * wo` outputs, all written.
    out: &'a mut [MaybeUninit<f32>],
}

type PlaneFn = fn(Isa, PlaneArgs<'_>);

fn select(k: usize, s: usize) -> candle::Result<PlaneFn> {
    Ok(match (k, s) {
        (3, 1) => dispatch::<3, 1>,
        (3, 2) => dispatch::<3, 2>,
        (5, 1) => dispatch::<5, 1>,
        (5, 2) => dispatch::<5, 2>,
        (7, 1) => dispatch::<7, 1>,
        (7, 2) => dispatch::<7, 2>,
        _ => candle::bail!("depthwise conv: no CPU kernel for kernel {k} stride {s}"),
    })
}

fn dispatch<const K: usize, const S: usize>(isa: Isa, a: PlaneArgs<'_>) {
    match isa {
        Isa::Baseline => plane::<K, S, Unfused>(a),
        // SAFETY: `Isa::detect` returned this variant only after checking that the processor
        // has the features these functions are compiled with.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => unsafe { plane_avx2::<K, S>(a) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { plane_avx512::<K, S>(a) },
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn plane_avx2<const K: usize, const S: usize>(a: PlaneArgs<'_>) {
    plane::<K, S, cpu::Fused>(a)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn plane_avx512<const K: usize, const S: usize>(a: PlaneArgs<'_>) {
    plane::<K, S, cpu::Fused>(a)
}

/// One (image, channel) plane: `K x K` kernel, stride `S` (see [`Geometry`]).
#[inline(always)]
fn plane<const K: usize, const S: usize, M: MulAdd>(a: PlaneArgs<'_>) {
    let PlaneArgs { g, x, wk, bias, relu6, scratch, out } = a;
    let (phases, acc) = scratch.split_at_mut(S * S * g.phase_len);
    // Copy the input into the phase planes. Cells outside the input were zeroed when the
    // scratch was made and are never written, so they stay zero from plane to plane.
    let n = g.w.min(g.cols.saturating_sub(g.left));
    for iy in 0..g.h.min(g.rows.saturating_sub(g.top)) {
        let r = iy + g.top;
        let src = &x[iy * g.w..iy * g.w + n];
        let row = (r % S) * S * g.phase_len + (r / S) * g.wq;
        if S == 1 {
            phases[row + g.left..row + g.left + n].copy_from_slice(src);
        } else {
            // Column j = ix + left goes to phase j % 2 at j / 2.
            let (even, odd) = phases[row..].split_at_mut(g.phase_len);
            let (even, odd) = (&mut even[..g.wq], &mut odd[..g.wq]);
            let (src, q) = if g.left % 2 == 1 {
                if let Some((&first, rest)) = src.split_first() {
                    odd[g.left / 2] = first;
                    (rest, g.left.div_ceil(2))
                } else {
                    (src, 0)
                }
            } else {
                (src, g.left / 2)
            };
            let pairs = src.chunks_exact(2);
            if let [last] = pairs.remainder() {
                even[q + src.len() / 2] = *last;
            }
            let m = src.len() / 2;
            for ((e, o), pair) in even[q..q + m].iter_mut().zip(&mut odd[q..q + m]).zip(pairs) {
                *e = pair[0];
                *o = pair[1];
            }
        }
    }

    let len = g.ho * g.wq;
    let acc = &mut acc[..len];
    acc.fill(bias);
    for ky in 0..K {
        for kx in 0..K {
            let wv = wk[ky * K + kx];
            let phase = ((ky % S) * S + kx % S) * g.phase_len;
            let off = phase + (ky / S) * g.wq + kx / S;
            for (a, &v) in acc.iter_mut().zip(&phases[off..off + len]) {
                *a = M::mul_add(wv, v, *a);
            }
        }
    }
    // `out` has ho rows of wo and `acc` ho rows of wq >= wo: every output is written.
    for (o, a) in out.chunks_exact_mut(g.wo).zip(acc.chunks_exact(g.wq)) {
        if relu6 {
            for (o, &a) in o.iter_mut().zip(a) {
                o.write(cpu::relu6(a));
            }
        } else {
            for (o, &a) in o.iter_mut().zip(a) {
                o.write(a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use candle::{Device, Tensor};

    use super::*;

    /// Deterministic pseudo-random values in [-1, 1) (a tiny LCG; no seeded RNG crate needed).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    #[track_caller]
    fn check(b: usize, c: usize, h: usize, w: usize, k: usize, op: DepthwiseConv2d) {
        let dev = Device::Cpu;
        let xs = Tensor::from_vec(values(b * c * h * w, 1), (b, c, h, w), &dev).unwrap();
        // Scale the weights up so that ReLU6 clips on both sides.
        let wk = (Tensor::from_vec(values(c * k * k, 2), (c, 1, k, k), &dev).unwrap() * 3.0).unwrap();
        let bias = Tensor::from_vec(values(c, 3), c, &dev).unwrap();
        let want = op.forward_reference(&xs, &wk, &bias).unwrap();
        crate::cpu::tests::for_each_isa(|isa| {
            let got = op.forward(&xs, &wk, &bias).unwrap();
            assert_eq!(got.dims(), want.dims(), "{op:?} k={k} {h}x{w}");
            let diff = (got - &want)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 1e-4, "{op:?} k={k} {h}x{w} {isa:?}: max diff {diff}");
        });
    }

    fn op(stride: usize, padding: [usize; 4], relu6: bool) -> DepthwiseConv2d {
        DepthwiseConv2d { stride, padding, relu6 }
    }

    #[test]
    fn torch_padding_matches_grouped_conv() {
        // MobileNetV2: k 3, symmetric padding 1, stride 1 and 2, at sizes it meets (and odd ones).
        for (h, w) in [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (9, 13), (1, 1)] {
            check(2, 5, h, w, 3, op(1, [1, 1, 1, 1], true));
            check(2, 5, h, w, 3, op(2, [1, 1, 1, 1], true));
        }
    }

    #[test]
    fn tf_same_padding_matches_grouped_conv() {
        // EfficientNet-Lite: k 3 and 5; "same" padding is symmetric at stride 1 and one more
        // at the bottom/right at stride 2 on even sizes; odd sizes (Lite2 at 260) too.
        for (h, w) in [(112, 112), (56, 56), (28, 28), (14, 14), (7, 7), (65, 65), (33, 17)] {
            check(2, 4, h, w, 3, op(1, [1, 1, 1, 1], true));
            check(2, 4, h, w, 3, op(2, [0, 1, 0, 1], true));
            check(2, 4, h, w, 3, op(2, [1, 1, 1, 1], true));
            check(2, 4, h, w, 5, op(1, [2, 2, 2, 2], true));
            check(2, 4, h, w, 5, op(2, [1, 2, 1, 2], true));
            check(2, 4, h, w, 5, op(2, [2, 2, 2, 2], true));
        }
    }

    #[test]
    fn other_paddings_and_no_activation() {
        check(1, 3, 10, 11, 3, op(1, [0, 0, 0, 0], false));
        check(1, 3, 10, 11, 3, op(2, [0, 0, 0, 0], false));
        check(1, 3, 10, 11, 5, op(1, [0, 3, 1, 0], false));
        check(3, 2, 40, 37, 7, op(2, [3, 3, 3, 3], false));
        check(1, 2, 40, 37, 7, op(1, [3, 3, 3, 3], true));
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let xs = Tensor::zeros((1, 4, 8, 8), candle::DType::F32, &dev).unwrap();
        let wk = Tensor::zeros((3, 1, 3, 3), candle::DType::F32, &dev).unwrap();
        let bias = Tensor::zeros(3, candle::DType::F32, &dev).unwrap();
        assert!(op(1, [1, 1, 1, 1], false).forward(&xs, &wk, &bias).is_err());
    }
}
