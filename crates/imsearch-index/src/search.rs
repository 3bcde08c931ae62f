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
    out.extend(matrix.chunks_exact(dim).map(|row| {
        // Eight partial sums let the compiler vectorise without reassociating.
        let mut acc = [0.0f32; 8];
        let (rows, rest) = row.split_at(dim - dim % 8);
        let (qs, qrest) = query.split_at(dim - dim % 8);
        for (r, q) in rows.chunks_exact(8).zip(qs.chunks_exact(8)) {
            for i in 0..8 {
                acc[i] += r[i] * q[i];
            }
        }
        acc.iter().sum::<f32>() + rest.iter().zip(qrest).map(|(a, b)| a * b).sum::<f32>()
    }));
}

/// The `k` highest `scores`, best first; ties keep the lower row first, NaN scores never win.
pub fn top_k(scores: &[f32], k: usize) -> Vec<Hit> {
    let k = k.min(scores.len());
    if k == 0 {
        return Vec::new();
    }
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    let better = |a: &Hit, b: &Hit| key(a.score) > key(b.score) || (key(a.score) == key(b.score) && a.row < b.row);
    // A partial selection keeps this O(n + k log k).
    let mut hits: Vec<Hit> = scores.iter().enumerate().map(|(row, &score)| Hit { row, score }).collect();
    let order = |a: &Hit, b: &Hit| {
        if better(a, b) {
            std::cmp::Ordering::Less
        } else if better(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    };
    if k < hits.len() {
        hits.select_nth_unstable_by(k - 1, order);
        hits.truncate(k);
    }
    hits.sort_by(order);
    hits
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
