//! Text-to-image retrieval: for each query, where the correct image lands among all candidates.

use serde::{Deserialize, Serialize};

/// The 1-based rank of `scores[correct]` among `scores`, counting every other candidate that
/// scores at least as high as ranked above it (pessimistic on ties). NaN scores rank last.
pub fn rank_of(scores: &[f32], correct: usize) -> usize {
    let target = scores[correct];
    if target.is_nan() {
        return scores.len();
    }
    1 + scores.iter().enumerate().filter(|&(i, &s)| i != correct && (s >= target)).count()
}

/// Retrieval figures over a set of queries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetrievalMetrics {
    pub queries: usize,
    pub recall_at_1: f64,
    pub recall_at_5: f64,
    pub recall_at_10: f64,
    pub mrr: f64,
    pub median_rank: f64,
}

impl RetrievalMetrics {
    /// Metrics from the 1-based rank of the correct image for each query.
    /// `None` when there are no queries.
    pub fn from_ranks(ranks: &[usize]) -> Option<Self> {
        if ranks.is_empty() {
            return None;
        }
        let n = ranks.len() as f64;
        let recall = |k: usize| ranks.iter().filter(|&&r| r <= k).count() as f64 / n;
        let mut sorted = ranks.to_vec();
        sorted.sort_unstable();
        let mid = sorted.len() / 2;
        let median_rank =
            if sorted.len() % 2 == 1 { sorted[mid] as f64 } else { (sorted[mid - 1] + sorted[mid]) as f64 / 2.0 };
        Some(RetrievalMetrics {
            queries: ranks.len(),
            recall_at_1: recall(1),
            recall_at_5: recall(5),
            recall_at_10: recall(10),
            mrr: ranks.iter().map(|&r| 1.0 / r as f64).sum::<f64>() / n,
            median_rank,
        })
    }

    /// Metrics from a row-major `queries x images` score matrix and each query's correct image.
    pub fn from_scores(scores: &[f32], images: usize, correct: &[usize]) -> Option<Self> {
        assert_eq!(scores.len(), images * correct.len(), "score matrix is not queries x images");
        let ranks: Vec<usize> =
            correct.iter().enumerate().map(|(q, &c)| rank_of(&scores[q * images..(q + 1) * images], c)).collect();
        Self::from_ranks(&ranks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_rank(scores: &[f32], correct: usize, expected: usize) {
        assert_eq!(rank_of(scores, correct), expected, "{scores:?}");
    }

    #[test]
    fn ranks() {
        check_rank(&[0.1, 0.9, 0.5], 1, 1);
        check_rank(&[0.1, 0.9, 0.5], 2, 2);
        check_rank(&[0.1, 0.9, 0.5], 0, 3);
        // Ties rank above the correct image.
        check_rank(&[0.5, 0.5, 0.5], 0, 3);
        check_rank(&[0.5, 0.7, 0.5], 2, 3);
        check_rank(&[f32::NAN, 0.1], 0, 2);
        check_rank(&[0.2, f32::NAN], 0, 1);
    }

    #[test]
    fn metrics_from_ranks() {
        let m = RetrievalMetrics::from_ranks(&[1, 2, 6, 11]).unwrap();
        assert_eq!(m.queries, 4);
        assert!((m.recall_at_1 - 0.25).abs() < 1e-12);
        assert!((m.recall_at_5 - 0.5).abs() < 1e-12);
        assert!((m.recall_at_10 - 0.75).abs() < 1e-12);
        assert!((m.mrr - (1.0 + 0.5 + 1.0 / 6.0 + 1.0 / 11.0) / 4.0).abs() < 1e-12);
        assert!((m.median_rank - 4.0).abs() < 1e-12);
        assert!((RetrievalMetrics::from_ranks(&[3, 1, 2]).unwrap().median_rank - 2.0).abs() < 1e-12);
        assert!(RetrievalMetrics::from_ranks(&[]).is_none());
    }

    #[test]
    fn metrics_from_scores() {
        // Two queries over three images.
        let scores = [0.9, 0.1, 0.2, /* q1 */ 0.3, 0.1, 0.8];
        let m = RetrievalMetrics::from_scores(&scores, 3, &[0, 1]).unwrap();
        assert!((m.recall_at_1 - 0.5).abs() < 1e-12);
        assert!((m.mrr - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-12);
    }
}
