//! The image policy: a logistic regression over an image embedding that says whether the image
//! may show a child, with a threshold chosen for high recall.

use serde::{Deserialize, Serialize};

use crate::{BlockReason, Decision, Error, Result};

/// Options for [`ImagePolicy::train`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainOptions {
    /// L2 penalty on the weights (not the bias), per example.
    pub l2: f32,
    pub epochs: usize,
    pub learning_rate: f32,
    /// Weigh positives so both classes count equally.
    pub balance_classes: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { l2: 1e-3, epochs: 300, learning_rate: 0.5, balance_classes: true }
    }
}

/// A standardising logistic regression and its decision threshold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePolicy {
    pub dim: usize,
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
    pub weights: Vec<f32>,
    pub bias: f32,
    /// Scores at or above this block the image.
    pub threshold: f32,
}

impl ImagePolicy {
    /// Trains on row-major `features` (`labels.len()` rows) by full-batch gradient descent:
    /// deterministic, no randomness. The threshold starts at 0.5; set it with
    /// [`threshold_for_recall`] on a validation split.
    pub fn train(features: &[f32], labels: &[bool], options: TrainOptions) -> Result<Self> {
        let n = labels.len();
        if n == 0 || features.is_empty() || !features.len().is_multiple_of(n) {
            return Err(Error::Shape { features: features.len(), dim: 0, labels: n });
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(Error::NotFinite);
        }
        let dim = features.len() / n;
        let positives = labels.iter().filter(|&&l| l).count();
        if positives == 0 || positives == n {
            return Err(Error::OneClass { positives, total: n });
        }
        let rows = || features.chunks_exact(dim);
        let mut mean = vec![0.0f64; dim];
        for row in rows() {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut var = vec![0.0f64; dim];
        for row in rows() {
            for ((s, &v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (f64::from(v) - m).powi(2);
            }
        }
        let mean: Vec<f32> = mean.iter().map(|&m| m as f32).collect();
        let inv_std: Vec<f32> = var.iter().map(|&s| 1.0 / ((s / n as f64).sqrt() as f32).max(1e-6)).collect();
        let x: Vec<f32> =
            rows().flat_map(|row| row.iter().zip(&mean).zip(&inv_std).map(|((v, m), s)| (v - m) * s)).collect();
        let (w_pos, w_neg) = if options.balance_classes {
            (n as f32 / (2.0 * positives as f32), n as f32 / (2.0 * (n - positives) as f32))
        } else {
            (1.0, 1.0)
        };
        let mut weights = vec![0.0f32; dim];
        let mut bias = 0.0f32;
        let mut grad = vec![0.0f32; dim];
        for _ in 0..options.epochs {
            grad.iter_mut().for_each(|g| *g = 0.0);
            let mut grad_b = 0.0f32;
            for (row, &label) in x.chunks_exact(dim).zip(labels) {
                let p = sigmoid(dot(&weights, row) + bias);
                let (y, w) = if label { (1.0, w_pos) } else { (0.0, w_neg) };
                let e = w * (p - y);
                grad_b += e;
                for (g, &v) in grad.iter_mut().zip(row) {
                    *g += e * v;
                }
            }
            let scale = options.learning_rate / n as f32;
            for (w, g) in weights.iter_mut().zip(&grad) {
                *w -= scale * g + options.learning_rate * options.l2 * *w;
            }
            bias -= scale * grad_b;
        }
        Ok(ImagePolicy { dim, mean, inv_std, weights, bias, threshold: 0.5 })
    }

    /// The probability-like score that the image shows a child; `None` when the embedding
    /// has the wrong dimension or is not finite.
    pub fn score(&self, embedding: &[f32]) -> Option<f32> {
        if embedding.len() != self.dim || embedding.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let z: f32 = embedding
            .iter()
            .zip(&self.mean)
            .zip(&self.inv_std)
            .zip(&self.weights)
            .map(|(((v, m), s), w)| (v - m) * s * w)
            .sum::<f32>()
            + self.bias;
        Some(sigmoid(z))
    }

    /// Allow, or block: when the score reaches the threshold, and when there is no usable
    /// embedding (fail closed).
    pub fn decide(&self, embedding: Option<&[f32]>) -> Decision {
        let Some(embedding) = embedding else {
            return Decision::Block(BlockReason::Unscored { why: "no embedding".into() });
        };
        match self.score(embedding) {
            None => Decision::Block(BlockReason::Unscored {
                why: format!("embedding of dimension {} (expected {}) or not finite", embedding.len(), self.dim),
            }),
            Some(score) if score >= self.threshold => {
                Decision::Block(BlockReason::Image { score, threshold: self.threshold })
            }
            Some(_) => Decision::Allow,
        }
    }
}

/// The highest threshold whose recall on (`scores`, `labels`) is at least `target`: every
/// positive scoring at or above it is caught. `None` without positives.
pub fn threshold_for_recall(scores: &[f32], labels: &[bool], target: f32) -> Option<f32> {
    let mut positives: Vec<f32> = scores.iter().zip(labels).filter(|(_, &l)| l).map(|(&s, _)| s).collect();
    if positives.is_empty() {
        return None;
    }
    positives.sort_by(|a, b| b.total_cmp(a));
    let needed = ((target.clamp(0.0, 1.0) * positives.len() as f32).ceil() as usize).clamp(1, positives.len());
    Some(positives[needed - 1])
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters in 3-d: positives around (1, 1, 0), negatives around (-1, -1, 0).
    fn data() -> (Vec<f32>, Vec<bool>) {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..40 {
            let jitter = (i as f32 * 0.37).sin() * 0.5;
            let positive = i % 4 == 0;
            let c = if positive { 1.0 } else { -1.0 };
            x.extend([c + jitter, c - jitter, jitter]);
            y.push(positive);
        }
        (x, y)
    }

    #[test]
    fn separates_two_clusters() {
        let (x, y) = data();
        let policy = ImagePolicy::train(&x, &y, TrainOptions::default()).unwrap();
        for (row, &label) in x.chunks(3).zip(&y) {
            assert_eq!(policy.score(row).unwrap() >= 0.5, label);
        }
        // Deterministic.
        assert_eq!(policy, ImagePolicy::train(&x, &y, TrainOptions::default()).unwrap());
    }

    #[test]
    fn fails_closed() {
        let (x, y) = data();
        let policy = ImagePolicy::train(&x, &y, TrainOptions::default()).unwrap();
        assert!(policy.decide(None).is_blocked());
        assert!(policy.decide(Some(&[1.0, 2.0])).is_blocked());
        assert!(policy.decide(Some(&[f32::NAN, 0.0, 0.0])).is_blocked());
        assert!(policy.decide(Some(&[1.0, 1.0, 0.0])).is_blocked());
        assert_eq!(policy.decide(Some(&[-1.0, -1.0, 0.0])), Decision::Allow);
    }

    #[test]
    fn training_input_is_checked() {
        assert!(matches!(
            ImagePolicy::train(&[1.0, 2.0], &[true, true], TrainOptions::default()),
            Err(Error::OneClass { .. })
        ));
        assert!(matches!(
            ImagePolicy::train(&[1.0, 2.0, 3.0], &[true, false], TrainOptions::default()),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ImagePolicy::train(&[f32::NAN, 2.0], &[true, false], TrainOptions::default()),
            Err(Error::NotFinite)
        ));
    }

    #[test]
    fn threshold_meets_the_recall_target() {
        let scores = [0.9, 0.8, 0.3, 0.7, 0.2, 0.1];
        let labels = [true, true, true, false, true, false];
        // Four positives: 0.9, 0.8, 0.3, 0.2.
        assert_eq!(threshold_for_recall(&scores, &labels, 1.0), Some(0.2));
        assert_eq!(threshold_for_recall(&scores, &labels, 0.75), Some(0.3));
        assert_eq!(threshold_for_recall(&scores, &labels, 0.5), Some(0.8));
        assert_eq!(threshold_for_recall(&scores, &labels, 0.0), Some(0.9));
        assert_eq!(threshold_for_recall(&scores, &[false; 6], 0.9), None);
    }
}
