//! Exact top-k over a row-major matrix of embeddings.

/// One search result: the row and its score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub row: usize,
    pub score: f32,
}

/// Dot products of `query` with every `dim`-wide row of `matrix`, into `out`.
pub fn dot_scores(matrix: &[f32], dim: usize, query: &[f32], out: &mut Vec<f32>) {
    assert_eq!(query.len(), dim, "query dimension");
    out.clear();
    out.extend(matrix.chunks_exact(dim).map(|row| dot(row, query)));
}

/// Partial sums of [`dot`]: enough independent additions to keep a core's vector units busy
/// (four AVX2 registers), so a row is summed about as fast as memory delivers it.
pub(crate) const LANES: usize = 32;

/// [`LANES`] partial sums let the compiler vectorise without reassociating, so every
/// instruction set gives the same sums. Rows of f16 are widened to f32 (exactly) first.
#[inline(always)]
pub(crate) fn dot<T: Copy + Into<f32>>(row: &[T], query: &[f32]) -> f32 {
    let dim = row.len();
    let mut acc = [0.0f32; LANES];
    let (rows, rest) = row.split_at(dim - dim % LANES);
    let (qs, qrest) = query.split_at(dim - dim % LANES);
    for (r, q) in rows.chunks_exact(LANES).zip(qs.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += r[i].into() * q[i];
        }
    }
    reduce(&acc) + rest.iter().zip(qrest).map(|(&a, b)| a.into() * b).sum::<f32>()
}

/// The [`LANES`] partial sums of [`dot`] added as a tree: the four registers' lanes first,
/// then halves of the eight lanes left. The order the AVX2 kernels add them in, with no chain
/// of 32 dependent additions at the end of every row (without it, the f16 rows' dot products
/// over 100,000 x 256 took 2.00 ms instead of 2.39 on a machine without AVX-512).
#[inline(always)]
fn reduce(acc: &[f32; LANES]) -> f32 {
    let s: [f32; 8] = std::array::from_fn(|i| (acc[i] + acc[8 + i]) + (acc[16 + i] + acc[24 + i]));
    let t: [f32; 4] = std::array::from_fn(|i| s[i] + s[4 + i]);
    (t[0] + t[2]) + (t[1] + t[3])
}

/// Rows per parallel task of [`dot_matrix`]: 2,048 rows of 256 floats are 2 MiB.
pub(crate) const ROWS_PER_TASK: usize = 2048;

/// Dot products of each of the `q` queries (`queries`: `q` rows of `dim`, row-major) with
/// every `dim`-wide row of `matrix`: `q` rows of `matrix.len() / dim` scores, exactly
/// [`dot_scores`]' sums. Built for few queries over many rows, where the matrix's memory
/// traffic is the cost: each row is read once for all queries, the rows are split across
/// threads (rayon), and on x86-64 the loop runs with AVX2 where the processor has it (the same
/// operations in the same order, so the same sums).
pub fn dot_matrix(matrix: &[f32], dim: usize, queries: &[f32]) -> Vec<Vec<f32>> {
    dot_matrix_map(matrix, dim, queries, |x| x)
}

/// [`dot_matrix`] with `map` applied to every product on the same threads (a calibration, a
/// sigmoid), while the block is still in cache.
pub fn dot_matrix_map(matrix: &[f32], dim: usize, queries: &[f32], map: impl Fn(f32) -> f32 + Sync) -> Vec<Vec<f32>> {
    dot_rows(matrix, dim, queries, map, |_, block, dim, queries, out| dot_block(block, dim, queries, out))
}

/// [`dot_matrix_map`] over rows stored as f16 (half the memory traffic): the same sums as
/// [`dot_matrix_map`] over the same values widened to f32 (which is exact). On x86-64 with
/// AVX2 and F16C the rows are widened in registers as they are read.
pub fn dot_matrix_f16_map(
    matrix: &[half::f16],
    dim: usize,
    queries: &[f32],
    map: impl Fn(f32) -> f32 + Sync,
) -> Vec<Vec<f32>> {
    #[cfg(target_arch = "x86_64")]
    let fast = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c");
    dot_rows(matrix, dim, queries, map, |_, block: &[half::f16], dim, queries, out: &mut [f32]| {
        let q = queries.len() / dim;
        for (row, out) in block.chunks_exact(dim).zip(out.chunks_exact_mut(q)) {
            for (o, query) in out.iter_mut().zip(queries.chunks_exact(dim)) {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: the processor has AVX2 and F16C, checked above.
                    *o = unsafe { dot_f16_avx2(row, query) };
                    continue;
                }
                *o = dot(row, query);
            }
        }
    })
}

/// The rows of `matrix` split across threads, `block` scoring each share (its first row's
/// number, its rows) against every query into its rows of `out` (image-major), then `map`ped
/// and turned query-major.
pub(crate) fn dot_rows<T: Sync>(
    matrix: &[T],
    dim: usize,
    queries: &[f32],
    map: impl Fn(f32) -> f32 + Sync,
    block: impl Fn(usize, &[T], usize, &[f32], &mut [f32]) + Sync,
) -> Vec<Vec<f32>> {
    use rayon::prelude::*;
    assert!(dim > 0 && queries.len().is_multiple_of(dim), "query dimension");
    assert_eq!(matrix.len() % dim, 0, "matrix dimension");
    let (q, rows) = (queries.len() / dim, matrix.len() / dim);
    if q == 0 {
        return Vec::new();
    }
    // Image-major (`rows x q`), so each task writes one contiguous block.
    let mut out = vec![0.0f32; rows * q];
    out.par_chunks_mut(ROWS_PER_TASK * q).zip(matrix.par_chunks(ROWS_PER_TASK * dim)).enumerate().for_each(
        |(task, (out, rows))| {
            block(task * ROWS_PER_TASK, rows, dim, queries, out);
            out.iter_mut().for_each(|v| *v = map(*v));
        },
    );
    if q == 1 {
        return vec![out];
    }
    (0..q).map(|j| out.iter().skip(j).step_by(q).copied().collect()).collect()
}

/// [`dot`] of f16 rows with the lanes in four AVX2 registers: the same products and additions in the
/// same order (a multiply then an add, not fused), so the same sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn dot_f16_avx2(row: &[half::f16], query: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let dim = row.len();
    let whole = dim - dim % LANES;
    let mut acc = [_mm256_setzero_ps(); LANES / 8];
    let (r, q) = (row.as_ptr().cast::<u16>(), query.as_ptr());
    let mut at = 0;
    while at < whole {
        for (k, a) in acc.iter_mut().enumerate() {
            let i = at + 8 * k;
            // SAFETY: i + 8 <= whole <= dim = row.len() = query.len().
            let wide = _mm256_cvtph_ps(_mm_loadu_si128(r.add(i).cast()));
            *a = _mm256_add_ps(*a, _mm256_mul_ps(wide, _mm256_loadu_ps(q.add(i))));
        }
        at += LANES;
    }
    reduce_avx2(&acc) + row[whole..].iter().zip(&query[whole..]).map(|(a, b)| a.to_f32() * b).sum::<f32>()
}

/// [`reduce`]'s tree over the four AVX2 registers of [`LANES`] partial sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) unsafe fn reduce_avx2(acc: &[std::arch::x86_64::__m256; LANES / 8]) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    let u = _mm_add_ps(t, _mm_movehl_ps(t, t));
    _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)))
}

fn dot_block(block: &[f32], dim: usize, queries: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the processor has AVX2, checked just above.
        return unsafe { dot_block_avx2(block, dim, queries, out) };
    }
    dot_block_portable(block, dim, queries, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_block_avx2(block: &[f32], dim: usize, queries: &[f32], out: &mut [f32]) {
    dot_block_portable(block, dim, queries, out)
}

#[inline(always)]
fn dot_block_portable(block: &[f32], dim: usize, queries: &[f32], out: &mut [f32]) {
    let q = queries.len() / dim;
    for (row, out) in block.chunks_exact(dim).zip(out.chunks_exact_mut(q)) {
        for (o, query) in out.iter_mut().zip(queries.chunks_exact(dim)) {
            *o = dot(row, query);
        }
    }
}

/// The `k` highest `scores`, best first; ties keep the lower row first, NaN scores never win.
/// One pass that keeps only the best `k` (no copy of the scores).
pub fn top_k(scores: &[f32], k: usize) -> Vec<Hit> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    // Rows come in increasing order, so a later row beats a kept one only by a higher key.
    let mut best: Vec<Hit> = Vec::with_capacity(k + 1);
    for (row, &score) in scores.iter().enumerate() {
        if best.len() == k && key(score) <= key(best[k - 1].score) {
            continue;
        }
        // After every kept hit whose key is at least this one's (ties: the lower row first).
        let at = best.partition_point(|h| key(h.score) >= key(score));
        best.insert(at, Hit { row, score });
        best.truncate(k);
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_exact() {
        let scores = [0.1, 0.9, 0.5, f32::NAN, 0.9, -1.0];
        let rows: Vec<usize> = top_k(&scores, 3).iter().map(|h| h.row).collect();
        assert_eq!(rows, vec![1, 4, 2]);
        assert_eq!(top_k(&scores, 100).len(), 6);
        assert_eq!(top_k(&scores, 100).last().unwrap().row, 3);
        assert!(top_k(&[], 5).is_empty());
        assert!(top_k(&scores, 0).is_empty());
    }

    #[test]
    fn top_k_agrees_with_a_full_sort_on_ties_and_nan() {
        // Few distinct values: many ties, which the lower row wins.
        let scores: Vec<f32> =
            (0..500).map(|i| if i % 37 == 0 { f32::NAN } else { ((i * 7919) % 13) as f32 }).collect();
        let mut sorted: Vec<Hit> = scores.iter().enumerate().map(|(row, &score)| Hit { row, score }).collect();
        let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
        sorted.sort_by(|a, b| key(b.score).total_cmp(&key(a.score)).then(a.row.cmp(&b.row)));
        for k in [1, 5, 40, 499, 500] {
            let got: Vec<usize> = top_k(&scores, k).iter().map(|h| h.row).collect();
            let want: Vec<usize> = sorted[..k].iter().map(|h| h.row).collect();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn dot_matrix_gives_dot_scores_sums_for_every_query() {
        let dim = 71;
        let rows = 2 * ROWS_PER_TASK + 3;
        let matrix: Vec<f32> = (0..dim * rows).map(|i| (i as f32 * 0.013).sin()).collect();
        let queries: Vec<f32> = (0..dim * 3).map(|i| (i as f32 * 0.7).cos()).collect();
        let got = dot_matrix(&matrix, dim, &queries);
        assert_eq!(got.len(), 3);
        for (query, got) in queries.chunks(dim).zip(&got) {
            let mut want = Vec::new();
            dot_scores(&matrix, dim, query, &mut want);
            assert_eq!(got, &want, "the same sums, bit for bit");
        }
        assert!(dot_matrix(&matrix, dim, &[]).is_empty());
        let mapped = dot_matrix_map(&matrix, dim, &queries[..dim], |x| 2.0 * x + 1.0);
        assert!(mapped[0].iter().zip(&got[0]).all(|(m, g)| *m == 2.0 * g + 1.0));
    }

    #[test]
    fn f16_rows_give_the_sums_of_their_f32_values() {
        let dim = 250;
        let rows = ROWS_PER_TASK + 21;
        let matrix: Vec<half::f16> = (0..dim * rows).map(|i| half::f16::from_f32((i as f32 * 0.37).sin())).collect();
        let wide: Vec<f32> = matrix.iter().map(|v| v.to_f32()).collect();
        let queries: Vec<f32> = (0..dim * 2).map(|i| (i as f32 * 0.11).cos()).collect();
        let got = dot_matrix_f16_map(&matrix, dim, &queries, |x| x - 1.0);
        let want = dot_matrix_map(&wide, dim, &queries, |x| x - 1.0);
        assert_eq!(got, want);
        assert_eq!(got[1].len(), rows);
        // The portable loop gives the same sums as the vector one.
        let portable: Vec<f32> = matrix.chunks(dim).map(|r| dot(r, &queries[..dim]) - 1.0).collect();
        assert_eq!(got[0], portable);
    }

    #[test]
    fn dot_scores_match_naive() {
        let dim = 19;
        let matrix: Vec<f32> = (0..dim * 4).map(|i| (i as f32 * 0.13).sin()).collect();
        let query: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.7).cos()).collect();
        let mut out = Vec::new();
        dot_scores(&matrix, dim, &query, &mut out);
        for (row, got) in matrix.chunks(dim).zip(&out) {
            let naive: f32 = row.iter().zip(&query).map(|(a, b)| a * b).sum();
            assert!((naive - got).abs() < 1e-5);
        }
    }
}
