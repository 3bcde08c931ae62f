//! Counts of a yes/no decision (block, flag, retrieve) against labels, and the recall and
//! precision they give.

use serde::{Deserialize, Serialize};

/// How many items a decision called positive or negative, against their labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confusion {
    pub true_positives: usize,
    pub false_positives: usize,
    pub true_negatives: usize,
    pub false_negatives: usize,
}

impl Confusion {
    /// Counts `predicted` against `labels`, pair by pair (items past the shorter slice are not
    /// counted).
    pub fn from_predictions(predicted: &[bool], labels: &[bool]) -> Self {
        let mut c = Confusion::default();
        for (&p, &y) in predicted.iter().zip(labels) {
            match (p, y) {
                (true, true) => c.true_positives += 1,
                (true, false) => c.false_positives += 1,
                (false, true) => c.false_negatives += 1,
                (false, false) => c.true_negatives += 1,
            }
        }
        c
    }

    /// Counts the decision `score >= threshold` (a score equal to the threshold is positive)
    /// against `labels`. A NaN score is negative.
    pub fn at_threshold(scores: &[f64], labels: &[bool], threshold: f64) -> Self {
        let predicted: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
        Confusion::from_predictions(&predicted, labels)
    }

    /// Items called positive.
    pub fn predicted_positives(&self) -> usize {
        self.true_positives + self.false_positives
    }

    /// Items labelled positive.
    pub fn positives(&self) -> usize {
        self.true_positives + self.false_negatives
    }

    /// The share of the positives called positive; `None` without positives.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.true_positives, self.positives())
    }

    /// The share of the items called positive that are positive; `None` when none is called
    /// positive.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.true_positives, self.predicted_positives())
    }
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_ratio(actual: Option<f64>, expected: Option<f64>) {
        match (actual, expected) {
            (Some(a), Some(e)) => assert!((a - e).abs() < 1e-12, "{a} != {e}"),
            (a, e) => assert_eq!(a, e),
        }
    }

    #[test]
    fn counts_recall_and_precision_at_a_threshold() {
        let scores = [0.9, 0.8, 0.4, 0.3, 0.1];
        let labels = [true, false, true, false, true];
        // 0.4 itself is positive.
        let c = Confusion::at_threshold(&scores, &labels, 0.4);
        assert_eq!(c, Confusion { true_positives: 2, false_positives: 1, true_negatives: 1, false_negatives: 1 });
        assert_eq!((c.positives(), c.predicted_positives()), (3, 3));
        check_ratio(c.recall(), Some(2.0 / 3.0));
        check_ratio(c.precision(), Some(2.0 / 3.0));
    }

    #[test]
    fn undefined_ratios_are_none() {
        let scores = [0.9, 0.8, 0.4, 0.3, 0.1];
        let labels = [true, false, true, false, true];
        let none_called = Confusion::at_threshold(&scores, &labels, 2.0);
        check_ratio(none_called.precision(), None);
        check_ratio(none_called.recall(), Some(0.0));
        let no_positives = Confusion::at_threshold(&scores, &[false; 5], 0.5);
        check_ratio(no_positives.recall(), None);
        check_ratio(no_positives.precision(), Some(0.0));
        assert_eq!(Confusion::from_predictions(&[], &[]), Confusion::default());
    }

    #[test]
    fn predictions_are_counted_pair_by_pair() {
        let c = Confusion::from_predictions(&[true, true, false, false], &[true, false, true, false]);
        assert_eq!(c, Confusion { true_positives: 1, false_positives: 1, true_negatives: 1, false_negatives: 1 });
        assert_eq!(Confusion::at_threshold(&[f64::NAN], &[true], 0.0).false_negatives, 1);
    }
}
