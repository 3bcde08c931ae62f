//! Criterion benchmarks of the imsearch crates live in `benches/`.
