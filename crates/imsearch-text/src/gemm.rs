//! Dense `x[m, k] · W^T` for inference with a weight matrix packed once at load time: an
//! AVX-512 microkernel (12 rows x 32 columns in 24 registers), an AVX2+FMA one (3 rows x 32
//! columns in 12 registers) and a portable one, chosen at run time, rows split across rayon's
//! threads, and a per-row-block epilogue (bias, activation, residual, layer norm) run while the
//! block is still in cache. The kernels broadcast each input straight from its row of `x`; only
//! the weights are packed.

use rayon::prelude::*;

/// Rows of `x` per microkernel tile.
pub(crate) const MR: usize = 12;
/// Output columns per microkernel tile (the packed weight panel's width): two AVX-512 vectors.
pub(crate) const NR: usize = 32;
/// Inputs per block of the AVX-512 kernel: a `KC x NR` weight panel (32 KiB) is kept in L1
/// while it is swept over the rows (128 and 192 measured the same within noise on a Zen 4 with
/// a 32 KiB L1).
pub(crate) const KC: usize = 256;
/// Inputs per block of the other kernels: a 24 KiB panel, which leaves room in a 32 KiB L1 for
/// the rows the AVX2 kernel broadcasts from (192 ran MiniLM 1-3 % faster than 128 or 256 at
/// `IMSEARCH_TEXT_ISA=avx2` on a Zen 4).
pub(crate) const KC_AVX2: usize = 192;

/// The environment variable that caps the instruction set MiniLM's kernels use: `avx2` or
/// `portable` (or `avx512`, the same as unset), never above what the CPU has. For measuring a
/// slower machine's path on a faster one, as PyTorch's `ATEN_CPU_CAPABILITY`; the outputs are
/// the same within the tests' tolerance whichever path runs.
pub const ISA_ENV: &str = "IMSEARCH_TEXT_ISA";

/// The instruction sets the kernels are written for, best first (so the slower of two is the
/// larger).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    Avx512,
    Avx2,
    Portable,
}

/// The AVX-512 copies are compiled with F, VL, DQ and BW (and AVX2 and FMA); some CPUs have F
/// alone (Xeon Phi), so all are checked.
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx512() {
                return Isa::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// [`Isa::detect`] capped by [`ISA_ENV`] when it is set.
    pub(crate) fn from_env() -> crate::Result<Self> {
        Self::capped(std::env::var_os(ISA_ENV).map(|v| v.to_string_lossy().into_owned()).as_deref())
    }

    /// [`Isa::detect`] capped by `cap`, the value of [`ISA_ENV`] when it is set.
    pub(crate) fn capped(cap: Option<&str>) -> crate::Result<Self> {
        let best = Self::detect();
        let cap = match cap {
            None | Some("avx512") => return Ok(best),
            Some("avx2") => Isa::Avx2,
            Some("portable") => Isa::Portable,
            Some(other) => return Err(crate::Error::InvalidIsa { value: other.to_owned() }),
        };
        Ok(best.max(cap))
    }

    /// Every instruction set this CPU supports (for tests).
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Self> {
        let mut all = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Isa::Avx2);
            }
            if has_avx512() {
                all.push(Isa::Avx512);
            }
        }
        all
    }
}

/// `$vis fn $name(isa: Isa, args...)`: calls the `#[inline(always)]` function
/// `$body(isa, args...)` inlined into a copy compiled for `isa`, so that LLVM vectorises its loops (and those of the
/// `#[inline(always)]` helpers it calls) with that instruction set.
macro_rules! multiversion {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) => $body:ident) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(isa: $crate::gemm::Isa, $($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx512(isa: $crate::gemm::Isa, $($arg: $ty),*) {
                $body(isa, $($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::too_many_arguments)]
            unsafe fn avx2(isa: $crate::gemm::Isa, $($arg: $ty),*) {
                $body(isa, $($arg),*)
            }
            match isa {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx512` is only made by `Isa::detect`/`Isa::available` after
                // `has_avx512` found every feature this copy is compiled with.
                $crate::gemm::Isa::Avx512 => unsafe { avx512(isa, $($arg),*) },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: `Isa::Avx2` is only made after AVX2 and FMA were detected.
                $crate::gemm::Isa::Avx2 => unsafe { avx2(isa, $($arg),*) },
                _ => $body(isa, $($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// What happens to each finished block of output rows, while it is still in cache.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Epilogue<'a> {
    /// Nothing (for tests and benchmarks of the product alone).
    #[cfg_attr(not(test), allow(dead_code))]
    None,
    /// `c += bias` on every row.
    Bias(&'a [f32]),
    /// `c = gelu(c + bias)`, GELU with the exact erf.
    BiasGelu(&'a [f32]),
    /// `c = layer_norm(c + bias + residual)`; `residual` has the rows of the whole `c`.
    BiasResidualNorm { bias: &'a [f32], residual: &'a [f32], gamma: &'a [f32], beta: &'a [f32], eps: f32 },
}

impl Epilogue<'_> {
    /// Applies it to `rows` (whole rows of `c`, the first being row `first`).
    #[inline(always)]
    fn apply(&self, first: usize, rows: &mut [f32]) {
        match *self {
            Epilogue::None => {}
            Epilogue::Bias(bias) => crate::bert::add_bias(rows, bias),
            Epilogue::BiasGelu(bias) => crate::bert::add_bias_gelu(rows, bias),
            Epilogue::BiasResidualNorm { bias, residual, gamma, beta, eps } => {
                let n = bias.len();
                let residual = &residual[first * n..first * n + rows.len()];
                crate::bert::add_bias_residual_norm(rows, bias, residual, gamma, beta, eps)
            }
        }
    }
}

/// Output columns of a half panel: one AVX-512 vector, two AVX2 ones.
const HALF: usize = NR / 2;

/// 16 floats on a 64-byte boundary: one cache line of a half panel.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; HALF]);

/// A weight matrix `W[n, k]` (PyTorch's `Linear` layout) packed for the kernels: panels of
/// [`NR`] output columns, each stored as two half panels of 16 columns, each `k`-major
/// (`half[p][j] = W[panel * NR + h * 16 + j][p]`), the last one padded with zeros. Every row of
/// a half panel is one cache line, so each input `p` of a panel is two aligned lines.
#[derive(Debug, Clone)]
pub(crate) struct PackedWeight {
    n: usize,
    k: usize,
    lines: Vec<Line>,
}

impl PackedWeight {
    /// Packs the row-major `w` (`n * k` values).
    pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight of {n}x{k} expected");
        let halves = n.div_ceil(NR) * 2;
        let mut lines = vec![Line([0.0; HALF]); halves * k];
        if k > 0 {
            for (h, half) in lines.chunks_exact_mut(k).enumerate() {
                for j in 0..HALF.min(n.saturating_sub(h * HALF)) {
                    let row = &w[(h * HALF + j) * k..][..k];
                    for (line, &v) in half.iter_mut().zip(row) {
                        line.0[j] = v;
                    }
                }
            }
        }
        PackedWeight { n, k, lines }
    }

    /// Output columns.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Rows `kb..kb + kc` of half panel `h` (`kc * 16` values, 64-byte aligned).
    fn half(&self, h: usize, kb: usize, kc: usize) -> &[f32] {
        let lines = &self.lines[h * self.k + kb..][..kc];
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` (its size is 64, a multiple of its
        // alignment, so no padding): `kc` lines are `kc * 16` initialised floats.
        unsafe { std::slice::from_raw_parts(lines.as_ptr().cast::<f32>(), kc * HALF) }
    }
}

/// `c[m, n] = a[m, k] · W^T`, then `epilogue` on each block of up to [`MR`] finished rows, on
/// the thread that computed them. Rows are split across rayon's threads.
pub(crate) fn matmul(isa: Isa, a: &[f32], w: &PackedWeight, c: &mut [f32], epilogue: Epilogue<'_>) {
    let (n, k) = (w.n, w.k);
    assert_eq!(a.len() % k.max(1), 0, "a holds whole rows of {k}");
    let m = a.len().checked_div(k).unwrap_or(c.len() / n.max(1));
    assert_eq!(c.len(), m * n, "c holds {m} rows of {n}");
    if let Epilogue::BiasResidualNorm { bias, residual, gamma, beta, .. } = epilogue {
        assert!(bias.len() == n && gamma.len() == n && beta.len() == n && residual.len() == m * n);
    }
    if let Epilogue::Bias(bias) | Epilogue::BiasGelu(bias) = epilogue {
        assert_eq!(bias.len(), n);
    }
    if m == 0 || n == 0 {
        return;
    }
    // A few tasks per thread keep both cores busy when one is briefly taken by something else.
    let panels = m.div_ceil(MR);
    let tasks = (rayon::current_num_threads() * 2).clamp(1, panels);
    let rows_per_task = panels.div_ceil(tasks) * MR;
    c.par_chunks_mut(rows_per_task * n).enumerate().for_each(|(t, c)| {
        let first = t * rows_per_task;
        let a = &a[first * k..(first + c.len() / n) * k];
        block(isa, a, w, c, first, epilogue);
    });
}

multiversion! {
    /// [`block_any`] compiled for `isa`.
    fn block(a: &[f32], w: &PackedWeight, c: &mut [f32], first: usize, epilogue: Epilogue<'_>) => block_any
}

/// The rows `first..` of `c` from the matching rows `a`, blocked as GotoBLAS does except that
/// the rows are not packed: for each block of [`KC`] (AVX-512) or [`KC_AVX2`] (the others)
/// inputs, each weight panel of [`NR`] columns, kept in L1, is swept over all the rows in tiles
/// of [`MR`], the kernels broadcasting straight from the rows (on MiniLM packing them cost more
/// than it saved). Then `epilogue` on each block of [`MR`] rows.
#[inline(always)]
fn block_any(isa: Isa, a: &[f32], w: &PackedWeight, c: &mut [f32], first: usize, epilogue: Epilogue<'_>) {
    let (n, k) = (w.n, w.k);
    let m = c.len() / n;
    let panels = m.div_ceil(MR);
    let n_panels = n.div_ceil(NR);
    // Tiles are written straight into `c` unless the last one would overhang its rows.
    let padded = n_panels * NR;
    let mut scratch = if padded == n { Vec::new() } else { vec![0f32; m * padded] };
    let block_inputs = if isa == Isa::Avx512 { KC } else { KC_AVX2 };
    let mut kb = 0;
    while kb < k {
        let kc = block_inputs.min(k - kb);
        let (target, ldc): (&mut [f32], usize) = if padded == n { (&mut *c, n) } else { (&mut scratch, padded) };
        // The rows of tile `panel`, from input `kb` on.
        let rows_of = |panel: usize| (MR.min(m - panel * MR), &a[panel * MR * k + kb..]);
        for j in 0..n_panels {
            let b = [w.half(2 * j, kb, kc), w.half(2 * j + 1, kb, kc)];
            for panel in 0..panels {
                let (rows, a) = rows_of(panel);
                tile(isa, kc, a, k, b, &mut target[panel * MR * ldc + j * NR..], ldc, rows, kb > 0);
            }
        }
        kb += kc;
    }
    if k == 0 {
        // No inputs: every product is zero (the scratch, when used, starts at zero).
        c.fill(0.0);
    }
    if padded != n {
        for (c, s) in c.chunks_exact_mut(n).zip(scratch.chunks_exact(padded)) {
            c.copy_from_slice(&s[..n]);
        }
    }
    for (panel, c) in c.chunks_mut(MR * n).enumerate() {
        epilogue.apply(first + panel * MR, c);
    }
}

/// One `rows x NR` tile: `c[r * ldc + h * 16 + j] (+)= sum_p a[r * lda + p] * b[h][p * 16 + j]`
/// for `p < k`, added to what `c` holds when `accumulate`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn tile(
    isa: Isa,
    k: usize,
    a: &[f32],
    lda: usize,
    b: [&[f32]; 2],
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    accumulate: bool,
) {
    assert!((1..=MR).contains(&rows) && k <= lda && a.len() >= (rows - 1) * lda + k);
    assert!(b[0].len() >= k * HALF && b[1].len() >= k * HALF);
    assert!(b.iter().all(|b| b.as_ptr().addr().is_multiple_of(64)), "half panels come from PackedWeight::half");
    assert!(c.len() >= (rows - 1) * ldc + NR);
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 was detected (see `has_avx512`); the asserts above bound every read of
        // `a` and `b` and every write of `c` the kernel makes, and align `b` for its loads.
        Isa::Avx512 => unsafe {
            x86::tile_avx512(k, a.as_ptr(), lda, [b[0].as_ptr(), b[1].as_ptr()], c.as_mut_ptr(), ldc, rows, accumulate)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected (`Isa::Avx2` is only made then); the asserts above
        // bound every access and align `b` for its loads.
        Isa::Avx2 => unsafe {
            x86::tile_avx2(k, a.as_ptr(), lda, [b[0].as_ptr(), b[1].as_ptr()], c.as_mut_ptr(), ldc, rows, accumulate)
        },
        _ => {
            for (h, b) in b.into_iter().enumerate() {
                half_tile_portable(k, a, lda, b, &mut c[h * HALF..], ldc, rows, accumulate);
            }
        }
    }
}

/// One `rows x 16` tile in plain Rust: `c[r * ldc + j] (+)= sum_p a[r * lda + p] * b[p * 16 + j]`
/// for `p < k`, added to what `c` holds when `accumulate`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn half_tile_portable(
    k: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    c: &mut [f32],
    ldc: usize,
    rows: usize,
    accumulate: bool,
) {
    for r in 0..rows {
        let mut acc = [0f32; HALF];
        if accumulate {
            acc.copy_from_slice(&c[r * ldc..r * ldc + HALF]);
        }
        for (&av, b) in a[r * lda..r * lda + k].iter().zip(b.chunks_exact(HALF)) {
            for (acc, &bv) in acc.iter_mut().zip(b) {
                *acc += av * bv;
            }
        }
        c[r * ldc..r * ldc + HALF].copy_from_slice(&acc);
    }
}

// The AVX-512 intrinsics are stable since Rust 1.89 (the workspace's rust-version).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{HALF, MR};

    /// The 12x32 tile in 24 zmm accumulators: per `p`, a load of each half panel and 12
    /// broadcasts, one from each row of `a`, feed 24 FMAs.
    ///
    /// # Safety
    /// AVX-512F must be available; `a` must hold `(rows - 1) * lda + k` values, `b[0]` and
    /// `b[1]` `k * 16` each on a 64-byte boundary, and `c` must be readable and writable at
    /// `r * ldc + j` for `r < rows`, `j < NR`; `1 <= rows <= MR`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_avx512(
        k: usize,
        a: *const f32,
        lda: usize,
        b: [*const f32; 2],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
    ) {
        // Rows past `rows` read the last row again and are never stored.
        // SAFETY: r.min(rows - 1) < rows: a row the caller lets us read.
        let a: [*const f32; MR] = std::array::from_fn(|r| a.add(r.min(rows - 1) * lda));
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        if accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                if r < rows {
                    // SAFETY: r < rows: inside the tile the caller lets us read.
                    acc[0] = _mm512_loadu_ps(c.add(r * ldc));
                    acc[1] = _mm512_loadu_ps(c.add(r * ldc + 16));
                }
            }
        }
        for p in 0..k {
            // SAFETY (all pointer reads in this loop): p < k, so p * 16 + 16 <= k * 16 and
            // every row pointer plus p stays inside its row's first k values.
            let b0 = _mm512_load_ps(b[0].add(p * HALF));
            let b1 = _mm512_load_ps(b[1].add(p * HALF));
            for (a, acc) in a.iter().zip(acc.iter_mut()) {
                let av = _mm512_set1_ps(*a.add(p));
                acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            if r < rows {
                // SAFETY: r < rows, so the caller guarantees c[r * ldc .. r * ldc + 32] is writable.
                _mm512_storeu_ps(c.add(r * ldc), acc[0]);
                _mm512_storeu_ps(c.add(r * ldc + 16), acc[1]);
            }
        }
    }

    /// The 12x32 tile as four 3x32 AVX2 tiles (12 ymm accumulators each): per `p`, three
    /// broadcasts, one from each row of `a`, and a load of each quarter of the panel's two lines
    /// feed 12 FMAs. Seven loads per 12 FMAs, where a 6x16 tile needs eight: it ran MiniLM
    /// about 4 % faster on a Zen 4 held to AVX2.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `a` must hold `(rows - 1) * lda + k` values, `b[0]` and
    /// `b[1]` `k * 16` each on a 32-byte boundary, and `c` must be readable and writable at
    /// `r * ldc + j` for `r < rows`, `j < NR`; `1 <= rows <= MR`.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile_avx2(
        k: usize,
        a: *const f32,
        lda: usize,
        b: [*const f32; 2],
        c: *mut f32,
        ldc: usize,
        rows: usize,
        accumulate: bool,
    ) {
        const R: usize = 3;
        // Quarter `q` of the panel's columns: 8 floats of half panel `q / 2`.
        let quarter = |q: usize, p: usize| b[q / 2].add(p * HALF + (q % 2) * 8);
        for r0 in (0..rows).step_by(R) {
            // Rows past `rows` read the last row again and are never stored.
            // SAFETY: (r0 + r).min(rows - 1) < rows: a row the caller lets us read.
            let a: [*const f32; R] = std::array::from_fn(|r| a.add((r0 + r).min(rows - 1) * lda));
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            if accumulate {
                for (r, acc) in acc.iter_mut().enumerate() {
                    if r0 + r < rows {
                        for (q, acc) in acc.iter_mut().enumerate() {
                            // SAFETY: r0 + r < rows and q * 8 + 8 <= NR: inside the tile.
                            *acc = _mm256_loadu_ps(c.add((r0 + r) * ldc + q * 8));
                        }
                    }
                }
            }
            for p in 0..k {
                // SAFETY: p < k keeps the reads of every row and of `b` in bounds; each half
                // panel is 32-byte aligned and p * 16 + q % 2 * 8 floats are multiples of 32 bytes.
                let av: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(*a[r].add(p)));
                for q in 0..4 {
                    let bq = _mm256_load_ps(quarter(q, p));
                    for (acc, av) in acc.iter_mut().zip(&av) {
                        acc[q] = _mm256_fmadd_ps(*av, bq, acc[q]);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                if r0 + r < rows {
                    for (q, acc) in acc.iter().enumerate() {
                        // SAFETY: r0 + r < rows and q * 8 + 8 <= NR: inside the writable tile.
                        _mm256_storeu_ps(c.add((r0 + r) * ldc + q * 8), *acc);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [-1, 1).
    fn values(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s >> 8) as f32 / (1u32 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[track_caller]
    fn check(isa: Isa, m: usize, n: usize, k: usize) {
        let a = values(m * k, 1 + m as u32);
        let w = values(n * k, 2 + n as u32);
        let bias = values(n, 3);
        let packed = PackedWeight::pack(&w, n, k);
        let mut c = vec![f32::NAN; m * n];
        matmul(isa, &a, &packed, &mut c, Epilogue::Bias(&bias));
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|p| a[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>() + bias[j] as f64;
                let got = c[i * n + j];
                let tol = 1e-5 * (k as f64).sqrt().max(1.0);
                assert!((got as f64 - want).abs() < tol, "{isa:?} {m}x{n}x{k} at ({i}, {j}): {got} vs {want}");
            }
        }
    }

    #[test]
    fn every_kernel_matches_the_naive_product() {
        for isa in Isa::available() {
            for (m, n, k) in [
                (1, 1, 1),
                (12, 32, 8),
                (13, 33, 7),
                (5, 64, 384),
                (37, 96, 31),
                (100, 40, 3),
                (3, 7, 0),
                (25, 45, 400),
                (49, 64, 1536),
            ] {
                check(isa, m, n, k);
            }
        }
    }

    #[test]
    fn detect_is_among_the_available() {
        assert!(Isa::available().contains(&Isa::detect()));
    }

    #[test]
    fn a_cap_never_raises_the_instruction_set() {
        let best = Isa::detect();
        assert_eq!(Isa::capped(None).unwrap(), best);
        assert_eq!(Isa::capped(Some("avx512")).unwrap(), best);
        assert_eq!(Isa::capped(Some("portable")).unwrap(), Isa::Portable);
        let avx2 = Isa::capped(Some("avx2")).unwrap();
        assert!(avx2 != Isa::Avx512 && Isa::available().contains(&avx2));
        let err = Isa::capped(Some("sse2")).unwrap_err().to_string();
        assert!(err.contains(ISA_ENV) && err.contains("sse2"), "{err}");
    }

    /// The epilogues against their definitions, on rows split across blocks and threads.
    #[test]
    fn epilogues_match_their_definitions() {
        let (m, n, k) = (29, 40, 16);
        let a = values(m * k, 4);
        let packed = PackedWeight::pack(&values(n * k, 5), n, k);
        let (bias, residual, gamma, beta) = (values(n, 6), values(m * n, 7), values(n, 8), values(n, 9));
        for isa in Isa::available() {
            let mut plain = vec![0f32; m * n];
            matmul(isa, &a, &packed, &mut plain, Epilogue::None);
            let mut gelu = vec![0f32; m * n];
            matmul(isa, &a, &packed, &mut gelu, Epilogue::BiasGelu(&bias));
            let mut normed = vec![0f32; m * n];
            let epilogue =
                Epilogue::BiasResidualNorm { bias: &bias, residual: &residual, gamma: &gamma, beta: &beta, eps: 1e-12 };
            matmul(isa, &a, &packed, &mut normed, epilogue);
            for i in 0..m {
                let row: Vec<f64> = (0..n).map(|j| plain[i * n + j] as f64 + bias[j] as f64).collect();
                for j in 0..n {
                    let x = row[j];
                    let want = 0.5 * x * (1.0 + crate::bert::tests::erf64(x / std::f64::consts::SQRT_2));
                    assert!((gelu[i * n + j] as f64 - want).abs() < 1e-5, "{isa:?} gelu ({i}, {j})");
                }
                let x: Vec<f64> = row.iter().zip(&residual[i * n..]).map(|(x, r)| x + *r as f64).collect();
                let mean = x.iter().sum::<f64>() / n as f64;
                let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
                for j in 0..n {
                    let want = (x[j] - mean) / (var + 1e-12).sqrt() * gamma[j] as f64 + beta[j] as f64;
                    assert!((normed[i * n + j] as f64 - want).abs() < 1e-4, "{isa:?} norm ({i}, {j})");
                }
            }
        }
    }
}
