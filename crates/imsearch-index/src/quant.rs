//! Rows kept as 8-bit codes with one scale per row: half the memory of f16 rows and a quarter
//! of f32's. An exact search over many rows costs what memory delivers, so half the bytes is
//! about half the time.

#[cfg(target_arch = "x86_64")]
use crate::search::reduce_avx2;
use crate::search::{dot, dot_rows, LANES};

/// `n` rows of `dim` values, each value kept as `scale * code`: `code` in -127..=127, `scale`
/// the row's largest magnitude over 127. A value is off by at most half a step (1/254 of its
/// row's largest magnitude), and a dot product with a query `q` by at most that times the sum
/// of `|q|`. Non-finite values are kept as 0.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct I8Rows {
    dim: usize,
    codes: Vec<i8>,
    scales: Vec<f32>,
}

impl I8Rows {
    /// `values`: rows of `dim`, row-major. Panics if `dim` is 0 or does not divide the length.
    pub fn quantise(values: &[f32], dim: usize) -> Self {
        assert!(dim > 0 && values.len().is_multiple_of(dim), "row dimension");
        let mut codes = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(values.len() / dim);
        for row in values.chunks_exact(dim) {
            let largest = row.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
            if largest == 0.0 {
                codes.extend(std::iter::repeat_n(0, dim));
                scales.push(0.0);
                continue;
            }
            let inverse = 127.0 / largest;
            codes.extend(row.iter().map(|&v| match v.is_finite() {
                true => (v * inverse).round().clamp(-127.0, 127.0) as i8,
                false => 0,
            }));
            scales.push(largest / 127.0);
        }
        I8Rows { dim, codes, scales }
    }

    /// Rows from their codes and scales (as [`I8Rows::codes`] and [`I8Rows::scales`] give
    /// them); `None` when the lengths disagree, `dim` is 0, a code is -128 or a scale is
    /// negative or not finite.
    pub fn from_parts(dim: usize, codes: Vec<i8>, scales: Vec<f32>) -> Option<Self> {
        let fits = dim > 0 && codes.len() == scales.len() * dim;
        let valid = !codes.contains(&i8::MIN) && scales.iter().all(|s| s.is_finite() && *s >= 0.0);
        (fits && valid).then_some(I8Rows { dim, codes, scales })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.scales.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scales.is_empty()
    }

    /// Every row's codes, row-major.
    pub fn codes(&self) -> &[i8] {
        &self.codes
    }

    /// Every row's scale.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Bytes held per row: the codes and the scale.
    pub fn bytes_per_row(&self) -> usize {
        self.dim + std::mem::size_of::<f32>()
    }

    /// Row `row`'s values (`scale * code`). Panics past the end.
    pub fn row(&self, row: usize) -> Vec<f32> {
        let scale = self.scales[row];
        self.codes[row * self.dim..(row + 1) * self.dim].iter().map(|&c| f32::from(c) * scale).collect()
    }

    /// Every row's values, row-major (what [`I8Rows::row`] gives, row after row).
    pub fn values(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.codes.len());
        for (codes, &scale) in self.codes.chunks_exact(self.dim).zip(&self.scales) {
            out.extend(codes.iter().map(|&c| f32::from(c) * scale));
        }
        out
    }

    /// Rows `rows`, in that order. Panics past the end.
    pub fn select(&self, rows: &[usize]) -> Self {
        let mut codes = Vec::with_capacity(rows.len() * self.dim);
        for &r in rows {
            codes.extend_from_slice(&self.codes[r * self.dim..(r + 1) * self.dim]);
        }
        I8Rows { dim: self.dim, codes, scales: rows.iter().map(|&r| self.scales[r]).collect() }
    }

    /// `parts`' rows one after the other; `None` when their dimensions differ or there are none.
    pub fn concat(parts: &[&I8Rows]) -> Option<Self> {
        let dim = parts.first()?.dim;
        if parts.iter().any(|p| p.dim != dim) {
            return None;
        }
        Some(I8Rows {
            dim,
            codes: parts.iter().flat_map(|p| p.codes.iter().copied()).collect(),
            scales: parts.iter().flat_map(|p| p.scales.iter().copied()).collect(),
        })
    }

    /// Each row's Euclidean length.
    pub fn norms(&self) -> Vec<f32> {
        self.codes
            .chunks_exact(self.dim)
            .zip(&self.scales)
            .map(|(codes, &scale)| codes.iter().map(|&c| f32::from(c) * f32::from(c)).sum::<f32>().sqrt() * scale)
            .collect()
    }

    /// Dot products of each of the `q` queries (`queries`: `q` rows of `dim`) with every row,
    /// then `map`ped: `q` rows of [`I8Rows::len`] scores. As [`crate::dot_matrix_map`]: each
    /// row read once for all queries, the rows split across threads, AVX2 where the processor
    /// has it. A row's product is its scale times the sum of `code * query` in the lanes and
    /// order of [`crate::dot_scores`], so every instruction set gives the same sums. Panics if
    /// `queries` are not rows of [`I8Rows::dim`].
    pub fn dots_map(&self, queries: &[f32], map: impl Fn(f32) -> f32 + Sync) -> Vec<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        let fast = std::arch::is_x86_feature_detected!("avx2");
        let scales = &self.scales;
        dot_rows(&self.codes, self.dim, queries, map, |first, block: &[i8], dim, queries, out: &mut [f32]| {
            let q = queries.len() / dim;
            for ((row, out), &scale) in block.chunks_exact(dim).zip(out.chunks_exact_mut(q)).zip(&scales[first..]) {
                for (o, query) in out.iter_mut().zip(queries.chunks_exact(dim)) {
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the processor has AVX2, checked above.
                        *o = scale * unsafe { dot_i8_avx2(row, query) };
                        continue;
                    }
                    *o = scale * dot(row, query);
                }
            }
        })
    }
}

/// Bytes ahead of the codes being read that [`dot_i8_avx2`] asks the cache for (past the row's
/// end too: the rows are contiguous). Without it the kernel read 23 GB/s where f16 rows read
/// 28-30; with it, one query against 100,000 rows of 2,432 codes took 8.8-9.4 ms instead of
/// 10.4-11.0 (512 bytes: 11.3 ms, 2,048: 9.6, 4,096: 9.8).
#[cfg(target_arch = "x86_64")]
const PREFETCH: usize = 1024;

/// [`dot`] of 8-bit codes with the lanes in four AVX2 registers: eight codes widened to f32
/// at a time, the same products and additions in the same order (a multiply then an add, not
/// fused), so the same sums. (Integer products, 16 codes per `vpmaddwd` against a query in
/// 16-bit codes, measured the same: the rows' memory traffic is the cost, not the arithmetic.)
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_i8_avx2(row: &[i8], query: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let dim = row.len();
    let whole = dim - dim % LANES;
    let mut acc = [_mm256_setzero_ps(); LANES / 8];
    let (r, q) = (row.as_ptr(), query.as_ptr());
    let mut at = 0;
    while at < whole {
        _mm_prefetch::<_MM_HINT_T0>(r.wrapping_add(at + PREFETCH).cast());
        for (k, a) in acc.iter_mut().enumerate() {
            let i = at + 8 * k;
            // SAFETY: i + 8 <= whole <= dim = row.len() = query.len().
            let wide = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(r.add(i).cast())));
            *a = _mm256_add_ps(*a, _mm256_mul_ps(wide, _mm256_loadu_ps(q.add(i))));
        }
        at += LANES;
    }
    reduce_avx2(&acc) + row[whole..].iter().zip(&query[whole..]).map(|(&a, b)| f32::from(a) * b).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::ROWS_PER_TASK;

    fn wave(n: usize, step: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * step).sin()).collect()
    }

    #[test]
    fn values_are_within_half_a_step_and_zero_rows_stay_zero() {
        let dim = 37;
        let mut values = wave(dim * 5, 0.29);
        values[dim..2 * dim].iter_mut().for_each(|v| *v = 0.0);
        values[3 * dim + 4] = f32::NAN;
        values[4 * dim + 1] = f32::INFINITY;
        let rows = I8Rows::quantise(&values, dim);
        assert_eq!((rows.len(), rows.dim(), rows.bytes_per_row()), (5, dim, dim + 4));
        assert_eq!(rows.scales()[1], 0.0);
        assert!(rows.row(1).iter().all(|&v| v == 0.0));
        assert_eq!((rows.row(3)[4], rows.row(4)[1]), (0.0, 0.0), "non-finite values are kept as 0");
        for (r, original) in values.chunks(dim).enumerate() {
            let largest = original.iter().filter(|v| v.is_finite()).fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(rows.codes()[r * dim..(r + 1) * dim].iter().all(|&c| c != i8::MIN));
            for (got, want) in rows.row(r).iter().zip(original).filter(|(_, w)| w.is_finite()) {
                assert!((got - want).abs() <= largest / 254.0 * 1.0001, "row {r}: {got} for {want}");
            }
        }
        assert_eq!(rows.values(), (0..5).flat_map(|r| rows.row(r)).collect::<Vec<_>>());
    }

    #[test]
    fn dots_are_the_scaled_sums_of_the_codes_on_every_path() {
        let dim = 250;
        let n = 2 * ROWS_PER_TASK + 7;
        let rows = I8Rows::quantise(&wave(dim * n, 0.37), dim);
        let queries = wave(dim * 2, 0.11);
        let got = rows.dots_map(&queries, |x| x - 1.0);
        assert_eq!((got.len(), got[1].len()), (2, n));
        for (query, got) in queries.chunks(dim).zip(&got) {
            // The portable loop, row by row: the same sums, bit for bit.
            let portable: Vec<f32> =
                rows.codes().chunks(dim).zip(rows.scales()).map(|(codes, s)| s * dot(codes, query) - 1.0).collect();
            assert_eq!(got, &portable);
            // And what the values give, up to rounding.
            let values = rows.values();
            for (row, g) in values.chunks(dim).zip(got) {
                let want: f32 = row.iter().zip(query).map(|(a, b)| a * b).sum::<f32>() - 1.0;
                assert!((want - g).abs() < 1e-4, "{want} against {g}");
            }
        }
    }

    #[test]
    fn selected_and_joined_rows_keep_their_codes_and_scales() {
        let dim = 8;
        let rows = I8Rows::quantise(&wave(dim * 6, 0.5), dim);
        let picked = rows.select(&[4, 0, 4]);
        assert_eq!(picked.row(0), rows.row(4));
        assert_eq!(picked.row(1), rows.row(0));
        let joined = I8Rows::concat(&[&rows, &picked]).unwrap();
        assert_eq!(joined.len(), 9);
        assert_eq!(joined.row(8), rows.row(4));
        assert!(I8Rows::concat(&[&rows, &I8Rows::quantise(&[1.0; 3], 3)]).is_none());
        assert!(I8Rows::concat(&[]).is_none());
        let back = I8Rows::from_parts(dim, rows.codes().to_vec(), rows.scales().to_vec()).unwrap();
        assert_eq!(back, rows);
        assert!(I8Rows::from_parts(dim, rows.codes()[1..].to_vec(), rows.scales().to_vec()).is_none());
        assert!(I8Rows::from_parts(dim, vec![i8::MIN; dim], vec![1.0]).is_none());
        assert!(I8Rows::from_parts(dim, vec![0; dim], vec![f32::NAN]).is_none());
        let norms = rows.norms();
        for (r, n) in norms.iter().enumerate() {
            let want = rows.row(r).iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((n - want).abs() < 1e-5);
        }
    }
}
