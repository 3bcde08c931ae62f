//! Exact search in `imsearch-index`: one query against 100,000 random 256-d unit vectors (the
//! fusion model's shared space), dot products then the top 5, and each half on its own.
//! Target: the whole search under 20 ms. Then the same dot products on every core, from f32 rows
//! and from f16 rows and 8-bit rows; then f16 and 8-bit rows as wide as the default engine's
//! layout. Needs no weights and no dataset.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use imsearch_index::{dot_matrix_f16_map, dot_matrix_map, dot_scores, top_k, I8Rows};

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
    let codes = I8Rows::quantise(&matrix, DIM);
    g.bench_function("dot_matrix_i8_threads_100k_256d", |b| {
        b.iter(|| black_box(&codes).dots_map(black_box(&query), |x| x))
    });
    g.finish();
}

/// The bytes a query reads in the default engine's layout: eight members of 256 values and the
/// bridge's 384 per image, 2,432 values, over 100,000 images (486 MB as f16, 243 MB as 8-bit
/// codes: far more than any cache).
const ENGINE_WIDTH: usize = 8 * 256 + 384;

fn engine_layout(c: &mut Criterion) {
    let mut rng = SplitMix64(1);
    let query: Vec<f32> = (0..ENGINE_WIDTH).map(|_| rng.symmetric()).collect();
    let values: Vec<f32> = (0..ROWS * ENGINE_WIDTH).map(|_| rng.symmetric()).collect();
    let halves: Vec<half::f16> = values.iter().map(|&v| half::f16::from_f32(v)).collect();
    let codes = I8Rows::quantise(&values, ENGINE_WIDTH);
    drop(values);
    let mut g = c.benchmark_group("index/engine_layout");
    g.sample_size(20);
    g.throughput(Throughput::Elements(ROWS as u64));
    g.bench_function("dot_matrix_f16_100k_2432", |b| {
        b.iter(|| dot_matrix_f16_map(black_box(&halves), ENGINE_WIDTH, black_box(&query), |x| x))
    });
    g.bench_function("dot_matrix_i8_100k_2432", |b| b.iter(|| black_box(&codes).dots_map(black_box(&query), |x| x)));
    g.finish();
}

criterion_group!(benches, exact_top_k, engine_layout);
criterion_main!(benches);
