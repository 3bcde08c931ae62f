//! The policies measured on a labelled collection: what the text policy removes from training,
//! the training captions each of its rules catches and which queries it blocks ([`TextAudit`]),
//! and the image policy against the images' ground truth ([`ImageAudit`]).

use std::collections::{BTreeMap, BTreeSet};

use imsearch_eval::{roc_auc, Confusion};
use imsearch_types::{GradedPair, ImageId, QueryId};
use serde::{Deserialize, Serialize};

use crate::{PolicyCheckpoint, TextPolicy, LEXICON, PHRASES};

/// What the text policy removes from a training set of captions and graded pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainingFilter {
    /// Pairs whose caption names a child.
    pub pairs_removed: usize,
    /// Captions that name a child.
    pub captions_removed: usize,
    /// Images with at least one removed pair.
    pub images_affected: usize,
    /// Images with a pair or a caption of their own before the filter and none after it.
    pub images_removed: usize,
}

impl TrainingFilter {
    pub fn new(captions: &BTreeMap<QueryId, &str>, pairs: &[GradedPair], policy: &TextPolicy) -> Self {
        let names_child = |q: &QueryId| captions.get(q).is_some_and(|t| policy.matched(t).is_some());
        let (mut before, mut after, mut affected) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        let mut pairs_removed = 0;
        for p in pairs {
            before.insert(&p.image);
            if names_child(&p.query) {
                pairs_removed += 1;
                affected.insert(&p.image);
            } else {
                after.insert(&p.image);
            }
        }
        let mut captions_removed = 0;
        for q in captions.keys() {
            before.insert(q.source_image());
            if names_child(q) {
                captions_removed += 1;
            } else {
                after.insert(q.source_image());
            }
        }
        TrainingFilter {
            pairs_removed,
            captions_removed,
            images_affected: affected.len(),
            images_removed: before.difference(&after).count(),
        }
    }
}

/// One rule of the text policy (a lexicon word or a phrase) and the training captions it
/// catches: the evidence a rule is kept for, read on training data only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleEvidence {
    pub rule: String,
    /// Training captions the rule matches (a caption may be caught by several rules).
    pub train_captions: usize,
    /// The first few of them, in query-id order.
    pub examples: Vec<String>,
}

/// For every rule of the default policy, the training captions it catches (`examples`: at
/// most `max_examples` each), in lexicon order, phrases last.
pub fn lexicon_evidence(captions: &BTreeMap<QueryId, &str>, max_examples: usize) -> Vec<RuleEvidence> {
    let evidence = |rule: String, catches: &dyn Fn(&str) -> bool| {
        let caught: Vec<&str> = captions.values().copied().filter(|t| catches(t)).collect();
        RuleEvidence {
            rule,
            train_captions: caught.len(),
            examples: caught.iter().take(max_examples).map(|t| (*t).to_owned()).collect(),
        }
    };
    let words = LEXICON.iter().map(|w| {
        let policy = TextPolicy::new([*w]);
        evidence((*w).to_owned(), &|t| policy.matched_word(t).is_some())
    });
    let phrases = PHRASES.iter().map(|p| evidence(p.join(" "), &|t| TextPolicy::has_phrase(t, p)));
    words.chain(phrases).collect()
}

/// The default text policy on a training set (captions and their graded pairs) and on a set of
/// queries. The field names are those of `compliance.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextAudit {
    pub lexicon_words: usize,
    pub train_captions: usize,
    pub train_captions_removed: usize,
    pub train_pairs_labelled: usize,
    pub train_pairs_removed: usize,
    /// Images with at least one removed pair (what `cargo xtask train` prints).
    pub train_images_affected: usize,
    /// Images with a pair or a caption of their own before the filter and none after it.
    pub train_images_removed: usize,
    pub test_queries: usize,
    pub test_queries_blocked: usize,
    pub test_queries_blocked_by_word: BTreeMap<String, usize>,
    /// Images one of whose queries names a child.
    pub test_child_images: usize,
    /// Allowed queries written for those images (most say "a person", "two people").
    pub test_child_image_queries_allowed: usize,
    /// Each rule with the training captions it catches (test queries are only scored).
    pub lexicon: Vec<RuleEvidence>,
}

impl TextAudit {
    /// `queries` are `(id, text, image)`: scored for the report only, never read to decide a rule.
    pub fn new(captions: &BTreeMap<QueryId, &str>, pairs: &[GradedPair], queries: &[(String, &str, &ImageId)]) -> Self {
        let policy = TextPolicy::default();
        let filter = TrainingFilter::new(captions, pairs, &policy);
        let mut by_word = BTreeMap::new();
        let mut child_images = BTreeSet::new();
        for (_, text, image) in queries {
            if let Some(word) = policy.matched(text) {
                *by_word.entry(word).or_insert(0) += 1;
                child_images.insert(*image);
            }
        }
        let allowed = queries
            .iter()
            .filter(|(_, text, image)| child_images.contains(image) && policy.matched(text).is_none())
            .count();
        TextAudit {
            lexicon_words: LEXICON.len(),
            train_captions: captions.len(),
            train_captions_removed: filter.captions_removed,
            train_pairs_labelled: pairs.len(),
            train_pairs_removed: filter.pairs_removed,
            train_images_affected: filter.images_affected,
            train_images_removed: filter.images_removed,
            test_queries: queries.len(),
            test_queries_blocked: by_word.values().sum(),
            test_queries_blocked_by_word: by_word,
            test_child_images: child_images.len(),
            test_child_image_queries_allowed: allowed,
            lexicon: lexicon_evidence(captions, 3),
        }
    }
}

/// An image policy measured on labelled images. The field names are those of `compliance.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAudit {
    pub test_images: usize,
    pub positives: usize,
    /// Images without a score (no features, or unusable ones: blocked, fail closed).
    pub unscored: usize,
    pub roc_auc: Option<f64>,
    pub recall: Option<f64>,
    pub precision: Option<f64>,
    pub threshold: f32,
    pub blocked: usize,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    /// Recall and precision both reach the targets given.
    pub targets_met: bool,
    /// Train images the policy blocks (in-sample: it was fitted on them).
    pub train_images_blocked: usize,
    pub train_images: usize,
}

impl ImageAudit {
    /// `ckpt`'s decisions on `test` images (features of `layout`, `None` when missing, and
    /// whether the image shows a child) and on `train` images. An image that cannot be scored
    /// counts as blocked and scores 1 in the ROC-AUC; with another layout every image is blocked.
    pub fn new(
        ckpt: &PolicyCheckpoint,
        layout: &str,
        test: impl IntoIterator<Item = (Option<Vec<f32>>, bool)>,
        train: impl IntoIterator<Item = Option<Vec<f32>>>,
        (target_recall, target_precision): (f64, f64),
    ) -> Self {
        let (mut scores, mut blocked, mut labels, mut unscored) = (Vec::new(), Vec::new(), Vec::new(), 0);
        for (features, label) in test {
            let score = features.as_deref().and_then(|f| ckpt.policy.score(f));
            unscored += usize::from(score.is_none());
            scores.push(score.map_or(1.0, f64::from));
            blocked.push(ckpt.decide(layout, features.as_deref()).is_blocked());
            labels.push(label);
        }
        let c = Confusion::from_predictions(&blocked, &labels);
        let (recall, precision) = (c.recall(), c.precision());
        let (mut train_images, mut train_images_blocked) = (0, 0);
        for features in train {
            train_images += 1;
            train_images_blocked += usize::from(ckpt.decide(layout, features.as_deref()).is_blocked());
        }
        ImageAudit {
            test_images: labels.len(),
            positives: c.positives(),
            unscored,
            roc_auc: roc_auc(&scores, &labels),
            recall,
            precision,
            threshold: ckpt.policy.threshold,
            blocked: c.predicted_positives(),
            true_positives: c.true_positives,
            false_positives: c.false_positives,
            false_negatives: c.false_negatives,
            targets_met: recall.is_some_and(|r| r >= target_recall) && precision.is_some_and(|p| p >= target_precision),
            train_images_blocked,
            train_images,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fit::tests::{pair, q};

    #[test]
    fn training_filter_counts() {
        let captions: BTreeMap<QueryId, &str> =
            [(q("a.jpg#0"), "A girl"), (q("b.jpg#0"), "A dog")].into_iter().collect();
        let pairs = [
            pair("a.jpg", "a.jpg#0", 1.0),
            pair("b.jpg", "a.jpg#0", 0.0),
            pair("b.jpg", "b.jpg#0", 1.0),
            pair("c.jpg", "a.jpg#0", 0.3),
        ];
        let f = TrainingFilter::new(&captions, &pairs, &TextPolicy::default());
        // a.jpg loses its pair and its caption, c.jpg its only pair; b.jpg keeps one of each.
        assert_eq!(f, TrainingFilter { pairs_removed: 3, captions_removed: 1, images_affected: 3, images_removed: 2 });
    }

    #[test]
    fn lexicon_evidence_counts_the_training_captions_of_each_rule() {
        let q = |s: &str| QueryId::parse(s).unwrap();
        let captions: BTreeMap<QueryId, &str> = [
            (q("a.jpg#0"), "a boy and his dog"),
            (q("b.jpg#0"), "two boys' bikes"),
            (q("c.jpg#0"), "young people dance"),
            (q("d.jpg#0"), "a young man runs"),
        ]
        .into_iter()
        .collect();
        let e = lexicon_evidence(&captions, 1);
        let rule = |r: &str| e.iter().find(|x| x.rule == r).unwrap().clone();
        assert_eq!(rule("boy").train_captions, 1);
        assert_eq!(rule("boy").examples, ["a boy and his dog"]);
        assert_eq!(rule("boys").train_captions, 1);
        assert_eq!(rule("girl").train_captions, 0);
        assert!(rule("girl").examples.is_empty());
        assert_eq!(e.len(), LEXICON.len() + PHRASES.len());
    }

    #[test]
    fn text_audit_counts_training_and_queries() {
        let captions: BTreeMap<QueryId, &str> =
            [(q("a.jpg#0"), "A girl"), (q("b.jpg#0"), "A dog")].into_iter().collect();
        let pairs = [pair("a.jpg", "a.jpg#0", 1.0), pair("b.jpg", "b.jpg#0", 1.0)];
        let (a, b) = (ImageId::from("a.jpg"), ImageId::from("b.jpg"));
        let queries = vec![
            ("a.jpg#0".to_owned(), "Two boys", &a),
            ("a.jpg#1".to_owned(), "a boy's bike", &a),
            ("a.jpg#2".to_owned(), "little ones", &a),
            ("a.jpg#3".to_owned(), "a girl", &a),
            ("b.jpg#0".to_owned(), "a young man", &b),
        ];
        let t = TextAudit::new(&captions, &pairs, &queries);
        assert_eq!((t.lexicon_words, t.train_captions, t.train_captions_removed), (LEXICON.len(), 2, 1));
        assert_eq!((t.train_pairs_labelled, t.train_pairs_removed, t.train_images_affected), (2, 1, 1));
        assert_eq!((t.train_images_removed, t.test_queries, t.test_queries_blocked), (1, 5, 3));
        let by_word: Vec<(&str, usize)> =
            t.test_queries_blocked_by_word.iter().map(|(w, &n)| (w.as_str(), n)).collect();
        assert_eq!(by_word, [("boy", 1), ("boys", 1), ("girl", 1)]);
        // "little ones" is allowed: it names no child in the lexicon.
        assert_eq!((t.test_child_images, t.test_child_image_queries_allowed), (1, 1));
        // The evidence is read on the training captions alone: "girl" catches the one caption,
        // "boy" none (the queries that use it do not count).
        let rule = |r: &str| t.lexicon.iter().find(|x| x.rule == r).map(|x| x.train_captions);
        assert_eq!((rule("girl"), rule("boy")), (Some(1), Some(0)));
    }

    #[test]
    fn image_audit_fails_closed_and_counts() {
        let d = crate::fit::tests::synthetic();
        let ckpt = d.fit(&crate::fit::tests::sides(40), &crate::fit::tests::SETTINGS, &mut |_| {}).unwrap();
        let child = Some(vec![1.0, 1.0, 0.0, 0.5]);
        let other = Some(vec![-1.0, -1.0, 0.0, -0.5]);
        let test = [(child.clone(), true), (None, true), (other.clone(), true), (other.clone(), false), (None, false)];
        let train = [child.clone(), other.clone(), None];
        let a = ImageAudit::new(&ckpt, "m", test.clone(), train.clone(), (0.6, 0.6));
        assert_eq!((a.test_images, a.positives, a.unscored, a.blocked), (5, 3, 2, 3));
        assert_eq!((a.true_positives, a.false_positives, a.false_negatives), (2, 1, 1));
        assert_eq!((a.train_images, a.train_images_blocked), (3, 2));
        assert!((a.recall.unwrap() - 2.0 / 3.0).abs() < 1e-12 && (a.precision.unwrap() - 2.0 / 3.0).abs() < 1e-12);
        // Positives score high, 1 (unscored) and low; negatives low and 1: of the six pairs, two
        // are ordered, two are ties and two inverted.
        assert!((a.roc_auc.unwrap() - 0.5).abs() < 1e-12, "{:?}", a.roc_auc);
        assert!(a.targets_met);
        assert!(!ImageAudit::new(&ckpt, "m", test.clone(), train.clone(), (0.7, 0.6)).targets_met);
        // Features of another layout: everything is blocked.
        let other_layout = ImageAudit::new(&ckpt, "n", test, train, (0.6, 0.6));
        assert_eq!((other_layout.blocked, other_layout.train_images_blocked), (5, 3));
    }
}
