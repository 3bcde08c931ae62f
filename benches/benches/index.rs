//! Exact search in `imsearch-index`: one query against 100,000 random 256-d unit vectors (the
//! fusion model's shared space), dot products then the top 5, and each half on its own.
//! Target: the whole search under 20 ms. Then the same dot products on every core, from f32 rows
//! and from the f16 rows the engine keeps. Needs no weights and no dataset.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imsearch_index::{dot_matrix_f16_map, dot_matrix_map, dot_scores, top_k};

const ROWS: usize = 100_000;
const DIM: usize = 256;
const K: usize = 5;

/// SplitMix64: a fixed, seeded stream, so every run searches the same vectors.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `n` random vectors of unit length, row-major.
fn unit_vectors(rng: &mut SplitMix64, n: usize) -> Vec<f32> {
    let mut data: Vec<f32> = (0..n * DIM).map(|_| rng.symmetric()).collect();
    for row in data.chunks_exact_mut(DIM) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    data
}

fn exact_top_k(c: &mut Criterion) {
    let mut rng = SplitMix64(0);
    let matrix = unit_vectors(&mut rng, ROWS);
    let query = unit_vectors(&mut rng, 1);
    let mut scores = Vec::with_capacity(ROWS);
    dot_scores(&matrix, DIM, &query, &mut scores);
    let fixed_scores = scores.clone();

    let mut g = c.benchmark_group("index/top_k");
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("search_100k_256d_k5", |b| {
        b.iter(|| {
            dot_scores(black_box(&matrix), DIM, black_box(&query), &mut scores);
            top_k(&scores, K)
        })
    });
    g.bench_function("dot_scores_100k_256d", |b| {
        b.iter(|| dot_scores(black_box(&matrix), DIM, black_box(&query), &mut scores))
    });
    g.bench_function("top_k_5_of_100k", |b| b.iter(|| top_k(black_box(&fixed_scores), K)));
    // The engine's layout: rows kept as f16, read once per query on every core.
    let halves: Vec<half::f16> = matrix.iter().map(|&v| half::f16::from_f32(v)).collect();
    g.bench_function("dot_matrix_threads_100k_256d", |b| {
        b.iter(|| dot_matrix_map(black_box(&matrix), DIM, black_box(&query), |x| x))
    });
    g.bench_function("dot_matrix_f16_threads_100k_256d", |b| {
        b.iter(|| dot_matrix_f16_map(black_box(&halves), DIM, black_box(&query), |x| x))
    });
    g.finish();
}

criterion_group!(benches, exact_top_k);
criterion_main!(benches);
