//! Calibration: how far predicted probabilities are from what was observed (a reliability table
//! and the expected calibration error), and a logistic regression with soft labels that maps
//! scores to probabilities (Platt scaling, with one or several inputs).

use serde::Serialize;

/// One bin of a reliability table: pairs whose predictions fall together.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bin {
    pub count: usize,
    /// The mean prediction in the bin.
    pub predicted: f64,
    /// The mean label in the bin.
    pub observed: f64,
}

impl Bin {
    /// `|predicted - observed|`.
    pub fn gap(&self) -> f64 {
        (self.predicted - self.observed).abs()
    }
}

/// The reliability table of `predicted` against `labels` (each in 0..1; a label may be soft):
/// the pairs sorted by prediction and cut into `bins` bins of equal count (deciles for 10; the
/// first bins take one more pair when the count does not divide). Empty when the inputs are
/// empty, of different lengths, or `bins` is 0.
pub fn reliability(predicted: &[f64], labels: &[f64], bins: usize) -> Vec<Bin> {
    let n = predicted.len();
    if n == 0 || n != labels.len() || bins == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| predicted[a].total_cmp(&predicted[b]));
    let bins = bins.min(n);
    let mut out = Vec::with_capacity(bins);
    let mut start = 0;
    for b in 0..bins {
        let len = n / bins + usize::from(b < n % bins);
        let rows = &order[start..start + len];
        start += len;
        let mean = |v: &[f64]| rows.iter().map(|&i| v[i]).sum::<f64>() / len as f64;
        out.push(Bin { count: len, predicted: mean(predicted), observed: mean(labels) });
    }
    out
}

/// The expected calibration error of a reliability table: the mean gap between predicted and
/// observed, weighted by each bin's count. `None` for an empty table.
pub fn expected_calibration_error(bins: &[Bin]) -> Option<f64> {
    let n: usize = bins.iter().map(|b| b.count).sum();
    (n > 0).then(|| bins.iter().map(|b| b.count as f64 * b.gap()).sum::<f64>() / n as f64)
}

/// `sigmoid(weights . x + bias)`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Logistic {
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl Logistic {
    pub fn predict(&self, x: &[f64]) -> f64 {
        let z = self.bias + self.weights.iter().zip(x).map(|(w, v)| w * v).sum::<f64>();
        1.0 / (1.0 + (-z).exp())
    }
}

/// A logistic regression of `labels` (each in 0..1: soft labels are the mean of what they
/// stand for) on the rows `x`, by Newton's method on the cross-entropy with an L2 penalty
/// `l2 * |weights|^2 / 2` (the bias is not penalised). Deterministic. `None` when the inputs are
/// empty, ragged, not finite, or the fit does not converge.
// Index loops over a small dense matrix read as the algebra they implement.
#[allow(clippy::needless_range_loop)]
pub fn fit_logistic(x: &[Vec<f64>], labels: &[f64], l2: f64) -> Option<Logistic> {
    let n = x.len();
    let d = x.first()?.len();
    if n != labels.len() || x.iter().any(|r| r.len() != d) {
        return None;
    }
    if x.iter().flatten().chain(labels).any(|v| !v.is_finite()) || labels.iter().any(|l| !(0.0..=1.0).contains(l)) {
        return None;
    }
    // Parameters: weights then the bias (a constant input of 1).
    let p = d + 1;
    let mut theta = vec![0.0f64; p];
    for _ in 0..100 {
        let mut grad = vec![0.0f64; p];
        let mut hess = vec![vec![0.0f64; p]; p];
        for (row, &y) in x.iter().zip(labels) {
            let z = theta[d] + row.iter().zip(&theta).map(|(v, w)| v * w).sum::<f64>();
            let mu = 1.0 / (1.0 + (-z).exp());
            let s = (mu * (1.0 - mu)).max(1e-12);
            let input = |j: usize| if j < d { row[j] } else { 1.0 };
            for j in 0..p {
                grad[j] += (mu - y) * input(j);
                for k in 0..=j {
                    hess[j][k] += s * input(j) * input(k);
                }
            }
        }
        for j in 0..d {
            grad[j] += l2 * theta[j];
            hess[j][j] += l2;
        }
        for j in 0..p {
            for k in 0..j {
                hess[k][j] = hess[j][k];
            }
        }
        let step = solve(hess, grad)?;
        let size = step.iter().map(|s| s.abs()).fold(0.0, f64::max);
        theta.iter_mut().zip(&step).for_each(|(t, s)| *t -= s);
        if !theta.iter().all(|t| t.is_finite()) {
            return None;
        }
        if size < 1e-10 {
            return Some(Logistic { weights: theta[..d].to_vec(), bias: theta[d] });
        }
    }
    None
}

/// `a^-1 b` by Gaussian elimination with partial pivoting; `None` for a singular `a`.
#[allow(clippy::needless_range_loop)]
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Option<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        for row in col + 1..n {
            let f = a[row][col] / a[col][col];
            for k in col..n {
                a[row][k] -= f * a[col][k];
            }
            b[row] -= f * b[col];
        }
    }
    let mut out = vec![0.0; n];
    for row in (0..n).rev() {
        let rest: f64 = (row + 1..n).map(|k| a[row][k] * out[k]).sum();
        out[row] = (b[row] - rest) / a[row][row];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deciles_of_a_calibrated_predictor_have_small_gaps_and_a_biased_one_large() {
        // Labels drawn so that P(label = 1) = prediction, deterministically.
        let predicted: Vec<f64> = (0..1000).map(|i| (i as f64 + 0.5) / 1000.0).collect();
        let labels: Vec<f64> = (0..1000).map(|i| f64::from((i * 7919) % 1000 < i)).collect();
        let bins = reliability(&predicted, &labels, 10);
        assert_eq!(bins.len(), 10);
        assert_eq!(bins.iter().map(|b| b.count).sum::<usize>(), 1000);
        let ece = expected_calibration_error(&bins).unwrap();
        assert!(ece < 0.06, "calibrated: ECE {ece}, {bins:?}");
        let biased: Vec<f64> = predicted.iter().map(|p| (p + 0.3).min(1.0)).collect();
        let ece = expected_calibration_error(&reliability(&biased, &labels, 10)).unwrap();
        assert!(ece > 0.2, "biased: ECE {ece}");
        assert!(reliability(&[], &[], 10).is_empty());
        assert!(reliability(&[0.5], &[0.5, 1.0], 10).is_empty());
        assert_eq!(expected_calibration_error(&[]), None);
    }

    #[test]
    fn logistic_regression_recovers_the_generating_weights_from_soft_labels() {
        // Soft labels that are exactly sigmoid(2 x0 - x1 + 0.5): the fit must find them.
        let x: Vec<Vec<f64>> =
            (0..200).map(|i| vec![(i % 20) as f64 / 5.0 - 2.0, ((i * 7) % 13) as f64 / 4.0 - 1.5]).collect();
        let truth = Logistic { weights: vec![2.0, -1.0], bias: 0.5 };
        let labels: Vec<f64> = x.iter().map(|r| truth.predict(r)).collect();
        let fit = fit_logistic(&x, &labels, 0.0).unwrap();
        for (w, t) in fit.weights.iter().zip(&truth.weights) {
            assert!((w - t).abs() < 1e-6, "{fit:?}");
        }
        assert!((fit.bias - truth.bias).abs() < 1e-6, "{fit:?}");
        // A penalty shrinks the weights.
        let shrunk = fit_logistic(&x, &labels, 100.0).unwrap();
        assert!(shrunk.weights[0].abs() < fit.weights[0].abs(), "{shrunk:?}");
        // Bad input is refused, not a panic.
        assert_eq!(fit_logistic(&[], &[], 0.0), None);
        assert_eq!(fit_logistic(&[vec![1.0], vec![1.0, 2.0]], &[0.0, 1.0], 0.0), None);
        assert_eq!(fit_logistic(&[vec![f64::NAN]], &[1.0], 0.0), None);
        assert_eq!(fit_logistic(&[vec![1.0]], &[2.0], 0.0), None);
    }
}
