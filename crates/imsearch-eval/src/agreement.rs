//! Agreement between predicted scores and human labels: errors, ROC-AUC and rank correlations.
//!
//! Every function returns `None` where the figure is undefined (empty input, lengths that
//! differ, a constant side, a single class).

/// Mean absolute error.
pub fn mae(pred: &[f64], label: &[f64]) -> Option<f64> {
    same_len(pred, label)?;
    Some(pred.iter().zip(label).map(|(p, l)| (p - l).abs()).sum::<f64>() / pred.len() as f64)
}

/// Root mean squared error.
pub fn rmse(pred: &[f64], label: &[f64]) -> Option<f64> {
    same_len(pred, label)?;
    Some((pred.iter().zip(label).map(|(p, l)| (p - l).powi(2)).sum::<f64>() / pred.len() as f64).sqrt())
}

/// Area under the ROC curve of `score` for the positives `positive[i]`, with ties counted as
/// half (the Mann-Whitney U statistic). `None` without both classes.
pub fn roc_auc(score: &[f64], positive: &[bool]) -> Option<f64> {
    if score.len() != positive.len() {
        return None;
    }
    let ranks = average_ranks(score);
    let n_pos = positive.iter().filter(|&&p| p).count();
    let n_neg = positive.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return None;
    }
    let rank_sum: f64 = ranks.iter().zip(positive).filter(|(_, &p)| p).map(|(r, _)| r).sum();
    let u = rank_sum - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Some(u / (n_pos as f64 * n_neg as f64))
}

/// Spearman's rank correlation: Pearson's correlation of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> Option<f64> {
    same_len(x, y)?;
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Kendall's tau-b, which corrects for ties on either side.
pub fn kendall_tau_b(x: &[f64], y: &[f64]) -> Option<f64> {
    let c = pair_counts(x, y)?;
    let n0 = c.pairs as f64;
    let denom = ((n0 - c.ties_x as f64) * (n0 - c.ties_y as f64)).sqrt();
    (denom > 0.0).then(|| (c.concordant as f64 - c.discordant as f64) / denom)
}

/// Kendall's tau-c (Stuart's), for tables that are not square, e.g. a continuous score against
/// a grade in 1..=4: `2 (C - D) / (n^2 (m - 1) / m)` with `m` the smaller number of distinct
/// values on either side.
pub fn kendall_tau_c(x: &[f64], y: &[f64]) -> Option<f64> {
    let c = pair_counts(x, y)?;
    let m = distinct(x).min(distinct(y)) as f64;
    let n = x.len() as f64;
    (m > 1.0).then(|| 2.0 * (c.concordant as f64 - c.discordant as f64) / (n * n * (m - 1.0) / m))
}

struct PairCounts {
    pairs: u64,
    concordant: u64,
    discordant: u64,
    /// Pairs tied in x (including those tied in both).
    ties_x: u64,
    ties_y: u64,
}

/// Counts concordant, discordant and tied pairs: O(n^2), which is fine for the validation split's
/// tens of thousands of pairs.
fn pair_counts(x: &[f64], y: &[f64]) -> Option<PairCounts> {
    same_len(x, y)?;
    let mut c = PairCounts { pairs: 0, concordant: 0, discordant: 0, ties_x: 0, ties_y: 0 };
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            c.pairs += 1;
            let dx = x[i] - x[j];
            let dy = y[i] - y[j];
            if dx == 0.0 {
                c.ties_x += 1;
            }
            if dy == 0.0 {
                c.ties_y += 1;
            }
            let s = dx * dy;
            if s > 0.0 {
                c.concordant += 1;
            } else if s < 0.0 {
                c.discordant += 1;
            }
        }
    }
    Some(c)
}

fn distinct(v: &[f64]) -> usize {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.dedup();
    s.len()
}

/// 1-based ranks, ties given the average of the ranks they span.
fn average_ranks(v: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..v.len()).collect();
    order.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut ranks = vec![0.0; v.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && v[order[j + 1]] == v[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

fn pearson(x: &[f64], y: &[f64]) -> Option<f64> {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx).powi(2);
        syy += (b - my).powi(2);
    }
    let denom = (sxx * syy).sqrt();
    (denom > 0.0).then(|| sxy / denom)
}

fn same_len(a: &[f64], b: &[f64]) -> Option<()> {
    (a.len() == b.len() && !a.is_empty()).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values from scipy 1.x / scikit-learn on the same data:
    // stats.kendalltau(x, y, variant='b'|'c'), stats.spearmanr(x, y), roc_auc_score(y >= 0.5, x).
    const X: [f64; 7] = [0.1, 0.4, 0.4, 0.8, 0.9, 0.3, 0.7];
    const Y: [f64; 7] = [0.0, 0.33, 0.5, 1.0, 0.67, 0.33, 0.5];
    const GRADES: [f64; 7] = [1.0, 2.0, 2.0, 4.0, 3.0, 2.0, 3.0];

    #[track_caller]
    fn check(got: Option<f64>, expected: f64) {
        let got = got.expect("defined");
        assert!((got - expected).abs() < 1e-9, "{got} != {expected}");
    }

    #[test]
    fn against_scipy() {
        check(kendall_tau_b(&X, &Y), 0.8207826816681232);
        check(kendall_tau_c(&X, &Y), 0.8163265306122448);
        check(kendall_tau_c(&X, &GRADES), 0.8163265306122449);
        check(spearman(&X, &Y), 0.9174698042719671);
        let positive: Vec<bool> = Y.iter().map(|&y| y >= 0.5).collect();
        check(roc_auc(&X, &positive), 0.9583333333333334);
    }

    #[test]
    fn by_hand() {
        check(mae(&[0.0, 1.0], &[0.5, 0.5]), 0.5);
        check(rmse(&[0.0, 1.0, 1.0], &[0.0, 0.0, 0.0]), (2.0f64 / 3.0).sqrt());
        // Perfect and reversed orders.
        check(kendall_tau_b(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]), 1.0);
        check(kendall_tau_b(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]), -1.0);
        check(spearman(&[1.0, 2.0, 3.0, 4.0], &[1.0, 3.0, 2.0, 4.0]), 0.8);
        // One positive scored above both negatives, one tied with one of them: (2 + 1.5) / 4.
        check(roc_auc(&[0.9, 0.5, 0.5, 0.1], &[true, true, false, false]), 0.875);
    }

    #[test]
    fn undefined_cases() {
        assert!(mae(&[], &[]).is_none());
        assert!(mae(&[1.0], &[1.0, 2.0]).is_none());
        assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_none());
        assert!(kendall_tau_b(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        assert!(kendall_tau_c(&[1.0, 1.0], &[1.0, 2.0]).is_none());
        assert!(spearman(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]).is_none());
    }
}
