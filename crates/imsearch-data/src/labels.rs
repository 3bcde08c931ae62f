//! Label aggregation: expert grades and crowd votes joined into one 0..1 label per pair.
//!
//! The join is a full outer join on (image, query): a pair graded only by the crowd keeps the
//! crowd's label, a pair graded only by experts keeps theirs.

use std::collections::BTreeMap;

use imsearch_types::{ExpertGrades, GradeSources, GradedPair, ImageId, QueryId, Score, SourceKind};
use serde::{Deserialize, Serialize};

use crate::{read::CrowdRow, read::ExpertRow, Error, Result};

/// How expert grades and crowd votes become one label.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
pub enum Aggregation {
    /// The experts' majority grade (given by at least 2 of 3; pairs without one are dropped),
    /// normalised to `(g - 1) / 3`, blended with the crowd's share of "yes" votes by the two
    /// weights where both exist; either source alone where only one exists.
    Blend { expert_weight: f32, crowd_weight: f32 },
    /// The mean of the three expert grades, normalised; expert-graded pairs only.
    ExpertMean,
    /// The experts' majority grade, normalised; expert-graded pairs only.
    ExpertOnly,
    /// The crowd's share of "yes" votes; crowd-graded pairs only.
    CrowdOnly,
}

impl Default for Aggregation {
    fn default() -> Self {
        Aggregation::Blend { expert_weight: 0.7, crowd_weight: 0.3 }
    }
}

impl Aggregation {
    fn validate(self) -> Result<()> {
        if let Aggregation::Blend { expert_weight: e, crowd_weight: c } = self {
            let ok = |w: f32| w.is_finite() && w >= 0.0;
            if !ok(e) || !ok(c) || e + c <= 0.0 {
                return Err(Error::Config(format!(
                    "blend weights must be non-negative with a positive sum, got expert {e}, crowd {c}"
                )));
            }
        }
        Ok(())
    }
}

/// What aggregation kept, dropped and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LabelReport {
    /// Distinct pairs with expert grades.
    pub expert_pairs: usize,
    /// Distinct pairs with crowd votes.
    pub crowd_pairs: usize,
    /// Distinct pairs in the union of both.
    pub joined_pairs: usize,
    /// Expert-graded pairs whose three grades all differ.
    pub expert_no_majority: usize,
    /// Pairs dropped because no expert majority exists (under strategies that need one),
    /// including those that also have crowd votes.
    pub dropped_no_majority: usize,
    /// Pairs dropped because the strategy ignores their only source.
    pub dropped_by_strategy: usize,
    /// Pairs whose query id has no caption text.
    pub unknown_text: usize,
    /// Pairs kept.
    pub labelled: usize,
    /// Pairs kept, by the sources present.
    pub by_source: BTreeMap<SourceKind, usize>,
}

/// The labelled pairs and the report of how they were made.
#[derive(Debug, Clone)]
pub struct Labels {
    pub pairs: Vec<GradedPair>,
    pub report: LabelReport,
}

/// Joins expert and crowd rows and applies `strategy`.
///
/// `has_text` tells whether a query id has a caption; pairs whose caption is unknown are
/// counted in [`LabelReport::unknown_text`] and left out. The output is sorted by
/// (image, query), so it does not depend on the order of the input rows.
pub fn aggregate(
    expert: &[ExpertRow],
    crowd: &[CrowdRow],
    strategy: Aggregation,
    has_text: impl Fn(&QueryId) -> bool,
) -> Result<Labels> {
    strategy.validate()?;
    let mut joined: BTreeMap<(ImageId, QueryId), GradeSources> = BTreeMap::new();
    for row in expert {
        joined.entry((row.image.clone(), row.query.clone())).or_default().expert = Some(row.grades);
    }
    for row in crowd {
        joined.entry((row.image.clone(), row.query.clone())).or_default().crowd = Some(row.votes);
    }
    let mut report = LabelReport {
        expert_pairs: joined.values().filter(|s| s.expert.is_some()).count(),
        crowd_pairs: joined.values().filter(|s| s.crowd.is_some()).count(),
        joined_pairs: joined.len(),
        expert_no_majority: joined.values().filter(|s| s.expert.is_some_and(|g| g.majority().is_none())).count(),
        ..Default::default()
    };
    let mut pairs = Vec::with_capacity(joined.len());
    for ((image, query), sources) in joined {
        let label = match label(strategy, &sources) {
            Ok(label) => label,
            Err(Drop::NoMajority) => {
                report.dropped_no_majority += 1;
                continue;
            }
            Err(Drop::Strategy) => {
                report.dropped_by_strategy += 1;
                continue;
            }
        };
        if !has_text(&query) {
            report.unknown_text += 1;
            continue;
        }
        let kind = sources.kind().expect("a joined pair has at least one source");
        *report.by_source.entry(kind).or_default() += 1;
        pairs.push(GradedPair { image, query, label: Score::saturating(label), sources });
    }
    report.labelled = pairs.len();
    Ok(Labels { pairs, report })
}

enum Drop {
    NoMajority,
    Strategy,
}

fn label(strategy: Aggregation, sources: &GradeSources) -> Result<f32, Drop> {
    let crowd = sources.crowd.and_then(|v| v.fraction());
    let majority = || sources.expert.map(|g| g.majority().map(|m| ExpertGrades::normalise(f32::from(m))));
    match strategy {
        Aggregation::Blend { expert_weight, crowd_weight } => match (majority(), crowd) {
            (Some(None), _) => Err(Drop::NoMajority),
            (Some(Some(e)), Some(c)) => Ok((expert_weight * e + crowd_weight * c) / (expert_weight + crowd_weight)),
            (Some(Some(e)), None) => Ok(e),
            (None, Some(c)) => Ok(c),
            (None, None) => Err(Drop::Strategy),
        },
        Aggregation::ExpertOnly => match majority() {
            Some(Some(e)) => Ok(e),
            Some(None) => Err(Drop::NoMajority),
            None => Err(Drop::Strategy),
        },
        Aggregation::ExpertMean => sources.expert.map(|g| ExpertGrades::normalise(g.mean())).ok_or(Drop::Strategy),
        Aggregation::CrowdOnly => crowd.ok_or(Drop::Strategy),
    }
}

#[cfg(test)]
mod tests {
    use imsearch_types::CrowdVotes;

    use super::*;

    fn expert(image: &str, query: &str, grades: [u8; 3]) -> ExpertRow {
        ExpertRow { line: 1, image: image.into(), query: QueryId::parse(query).unwrap(), grades: ExpertGrades(grades) }
    }

    fn crowd(image: &str, query: &str, yes: u32, no: u32) -> CrowdRow {
        let votes = CrowdVotes { yes, no };
        CrowdRow {
            line: 1,
            image: image.into(),
            query: QueryId::parse(query).unwrap(),
            fraction: f64::from(votes.fraction().unwrap()),
            votes,
        }
    }

    fn rows() -> (Vec<ExpertRow>, Vec<CrowdRow>) {
        (
            vec![
                expert("a.jpg", "b.jpg#0", [4, 4, 3]), // both, majority 4 -> 1.0
                expert("a.jpg", "c.jpg#0", [2, 2, 1]), // expert only, majority 2 -> 1/3
                expert("b.jpg", "c.jpg#0", [1, 2, 3]), // no majority, has crowd
                expert("b.jpg", "d.jpg#1", [1, 3, 4]), // no majority, expert only
            ],
            vec![
                crowd("a.jpg", "b.jpg#0", 1, 2), // 1/3
                crowd("b.jpg", "c.jpg#0", 3, 0),
                crowd("c.jpg", "a.jpg#2", 2, 2), // crowd only -> 0.5
                crowd("c.jpg", "x.jpg#0", 0, 3), // crowd only, text unknown
            ],
        )
    }

    #[track_caller]
    fn check(strategy: Aggregation, expected: &[(&str, &str, f32)], expected_report: LabelReport) {
        let (e, c) = rows();
        let labels = aggregate(&e, &c, strategy, |q| q.source_image().as_str() != "x.jpg").unwrap();
        let got: Vec<_> =
            labels.pairs.iter().map(|p| (p.image.to_string(), p.query.to_string(), p.label.get())).collect();
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for ((gi, gq, gl), (ei, eq, el)) in got.iter().zip(expected) {
            assert_eq!((gi.as_str(), gq.as_str()), (*ei, *eq));
            assert!((gl - el).abs() < 1e-6, "{gi} {gq}: {gl} != {el}");
        }
        assert_eq!(labels.report, expected_report);
    }

    fn base_report() -> LabelReport {
        LabelReport { expert_pairs: 4, crowd_pairs: 4, joined_pairs: 6, expert_no_majority: 2, ..Default::default() }
    }

    #[test]
    fn blend_is_a_full_outer_join() {
        check(
            Aggregation::default(),
            &[("a.jpg", "b.jpg#0", 0.7 + 0.3 / 3.0), ("a.jpg", "c.jpg#0", 1.0 / 3.0), ("c.jpg", "a.jpg#2", 0.5)],
            LabelReport {
                dropped_no_majority: 2,
                unknown_text: 1,
                labelled: 3,
                by_source: [(SourceKind::Both, 1), (SourceKind::Expert, 1), (SourceKind::Crowd, 1)].into(),
                ..base_report()
            },
        );
    }

    #[test]
    fn blend_weights_are_normalised() {
        let (e, c) = rows();
        let strategy = Aggregation::Blend { expert_weight: 1.0, crowd_weight: 1.0 };
        let labels = aggregate(&e, &c, strategy, |_| true).unwrap();
        assert!((labels.pairs[0].label.get() - (1.0 + 1.0 / 3.0) / 2.0).abs() < 1e-6);
        let bad = Aggregation::Blend { expert_weight: -1.0, crowd_weight: 0.5 };
        assert!(aggregate(&e, &c, bad, |_| true).is_err());
        let zero = Aggregation::Blend { expert_weight: 0.0, crowd_weight: 0.0 };
        assert!(aggregate(&e, &c, zero, |_| true).is_err());
    }

    #[test]
    fn expert_mean_keeps_disagreements() {
        check(
            Aggregation::ExpertMean,
            &[
                ("a.jpg", "b.jpg#0", (11.0 / 3.0 - 1.0) / 3.0),
                ("a.jpg", "c.jpg#0", (5.0 / 3.0 - 1.0) / 3.0),
                ("b.jpg", "c.jpg#0", 1.0 / 3.0),
                ("b.jpg", "d.jpg#1", (8.0 / 3.0 - 1.0) / 3.0),
            ],
            LabelReport {
                dropped_by_strategy: 2,
                labelled: 4,
                by_source: [(SourceKind::Both, 2), (SourceKind::Expert, 2)].into(),
                ..base_report()
            },
        );
    }

    #[test]
    fn expert_only() {
        check(
            Aggregation::ExpertOnly,
            &[("a.jpg", "b.jpg#0", 1.0), ("a.jpg", "c.jpg#0", 1.0 / 3.0)],
            LabelReport {
                dropped_no_majority: 2,
                dropped_by_strategy: 2,
                labelled: 2,
                by_source: [(SourceKind::Both, 1), (SourceKind::Expert, 1)].into(),
                ..base_report()
            },
        );
    }

    #[test]
    fn crowd_only() {
        check(
            Aggregation::CrowdOnly,
            &[("a.jpg", "b.jpg#0", 1.0 / 3.0), ("b.jpg", "c.jpg#0", 1.0), ("c.jpg", "a.jpg#2", 0.5)],
            LabelReport {
                dropped_by_strategy: 2,
                unknown_text: 1,
                labelled: 3,
                by_source: [(SourceKind::Both, 2), (SourceKind::Crowd, 1)].into(),
                ..base_report()
            },
        );
    }

    #[test]
    fn strategy_parses_from_json() {
        let s: Aggregation =
            serde_json::from_str(r#"{"strategy":"blend","expert_weight":0.5,"crowd_weight":0.5}"#).unwrap();
        assert_eq!(s, Aggregation::Blend { expert_weight: 0.5, crowd_weight: 0.5 });
        assert!(serde_json::from_str::<Aggregation>(r#"{"strategy":"blend","expert_weight":0.5}"#).is_err());
    }
}
