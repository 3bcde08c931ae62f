//! Choices made on validation: ranks of each caption's own image, and the ensemble's weights
//! that maximise the MRR pooled over several validation splits.

use imsearch_eval::RetrievalMetrics;

use crate::scorer::combine;

/// The weights tried for each part after the first (whose weight is 1): 0 to 3 in steps of 0.25.
pub const WEIGHT_GRID: [f32; 13] = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.25, 2.5, 2.75, 3.0];

/// The rank of each row's correct column (ties count against the scorer).
pub fn ranks(scores: &[Vec<f32>], correct: &[usize]) -> Vec<usize> {
    scores.iter().zip(correct).map(|(s, &c)| imsearch_eval::rank_of(s, c)).collect()
}

/// MRR of `ranks`, 0 for none.
pub fn mrr(ranks: &[usize]) -> f64 {
    RetrievalMetrics::from_ranks(ranks).map_or(0.0, |r| r.mrr)
}

/// Every weight vector of `parts` parts on the grid: the first part's weight 1, each other
/// part's on [`WEIGHT_GRID`], in odometer order (the earliest part turning fastest).
pub fn weight_grid(parts: usize) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let mut at = vec![0usize; parts.saturating_sub(1)];
    loop {
        out.push(std::iter::once(1.0).chain(at.iter().map(|&i| WEIGHT_GRID[i])).collect());
        // The next grid point, like an odometer.
        let Some(k) = at.iter().position(|&i| i + 1 < WEIGHT_GRID.len()) else { break };
        at[k] += 1;
        at[..k].iter_mut().for_each(|i| *i = 0);
    }
    out
}

/// The ranks of every split's rows under the parts combined with `weights`, splits in order.
pub fn pooled_ranks(mats: &[Vec<Vec<Vec<f32>>>], correct: &[Vec<usize>], weights: &[f32]) -> Vec<usize> {
    mats.iter().zip(correct).flat_map(|(m, c)| ranks(&combine(m, weights), c)).collect()
}

/// The weights of the other parts against the first (weight 1) that maximise the MRR pooled
/// over the splits, on [`weight_grid`]; the earlier grid point wins ties. `mats[s][part]` is
/// each part's score matrix on split `s`, `correct[s]` each row's correct column there.
pub fn choose_weights(mats: &[Vec<Vec<Vec<f32>>>], correct: &[Vec<usize>]) -> (Vec<f32>, f64) {
    let n = mats.first().map_or(1, Vec::len);
    let mut best = (vec![1.0; n], f64::NEG_INFINITY);
    for w in weight_grid(n) {
        let mrr = mrr(&pooled_ranks(mats, correct, &w));
        if mrr > best.1 {
            best = (w, mrr);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_weights_finds_the_part_that_ranks_right() {
        // Part 0 ranks the correct column (0) last; part 1 ranks it first: part 1 must weigh more.
        let part0 = vec![vec![0.0, 1.0, 2.0]];
        let part1 = vec![vec![9.0, 1.0, 0.0]];
        let (w, mrr) = choose_weights(&[vec![part0, part1]], &[vec![0]]);
        assert_eq!(w[0], 1.0);
        assert!(w[1] > 1.0, "{w:?}");
        assert!((mrr - 1.0).abs() < 1e-9);
    }

    #[test]
    fn the_weight_grid_covers_every_point_once_with_the_first_part_at_1() {
        let grid = weight_grid(3);
        assert_eq!(grid.len(), WEIGHT_GRID.len() * WEIGHT_GRID.len());
        assert!(grid.iter().all(|w| w.len() == 3 && w[0] == 1.0));
        assert_eq!(grid[1], vec![1.0, 0.25, 0.0]);
        let distinct: std::collections::BTreeSet<Vec<u32>> =
            grid.iter().map(|w| w.iter().map(|x| x.to_bits()).collect()).collect();
        assert_eq!(distinct.len(), grid.len());
        assert_eq!(weight_grid(1), vec![vec![1.0]]);
    }
}
