//! Small helpers shared by the CPU kernels: contiguous f32 views of candle storage and runtime
//! selection of the widest SIMD instruction set the processor has.

use candle::{CpuStorage, Layout};

/// The f32 data of a contiguous tensor, or an error naming the op and the argument.
pub(crate) fn f32_slice<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
    arg: &str,
) -> candle::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle::bail!("{op}: {arg} must be contiguous"),
    }
}

/// The instruction set a kernel is compiled for, picked once per call at run time so that the
/// crate is built for the baseline target (no `target-cpu=native`) yet uses AVX2/AVX-512.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    Baseline,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl Isa {
    pub(crate) fn detect() -> Self {
        #[cfg(test)]
        if let Some(isa) = tests::forced() {
            return isa;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Baseline
    }

    /// Every instruction set this processor can run, the baseline first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let mut all = vec![Isa::Baseline];
        #[cfg(target_arch = "x86_64")]
        {
            let has = |f: &str| match f {
                "avx2" => std::arch::is_x86_feature_detected!("avx2"),
                "fma" => std::arch::is_x86_feature_detected!("fma"),
                _ => std::arch::is_x86_feature_detected!("avx512f"),
            };
            if has("avx2") && has("fma") {
                all.push(Isa::Avx2Fma);
            }
            if has("avx512f") && has("fma") {
                all.push(Isa::Avx512);
            }
        }
        all
    }
}

/// Multiply-add `a * b + c`, fused where the instruction set has it.
pub(crate) trait MulAdd {
    fn mul_add(a: f32, b: f32, c: f32) -> f32;
}

/// Plain multiply then add, for the baseline instruction set (where `f32::mul_add` would be
/// a slow library call).
pub(crate) struct Unfused;

impl MulAdd for Unfused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// A fused multiply-add; only used inside functions compiled with the `fma` feature.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Fused;

#[cfg(target_arch = "x86_64")]
impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

/// `min(max(x, 0), 6)`.
#[inline(always)]
pub(crate) fn relu6(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::cell::Cell;

    use super::Isa;

    thread_local! {
        static FORCED: Cell<Option<Isa>> = const { Cell::new(None) };
    }

    pub(super) fn forced() -> Option<Isa> {
        FORCED.with(Cell::get)
    }

    /// Runs `f` with every available instruction set forced in turn on this thread (the
    /// kernels pick the instruction set on the calling thread, before going parallel).
    pub(crate) fn for_each_isa(mut f: impl FnMut(Isa)) {
        for isa in Isa::available() {
            FORCED.with(|c| c.set(Some(isa)));
            f(isa);
        }
        FORCED.with(|c| c.set(None));
    }
}
