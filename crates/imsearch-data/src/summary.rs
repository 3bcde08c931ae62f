//! What a person or a script looks at first about a loaded dataset: the counts of
//! `summary.json` ([`Summary`]), each annotation file's kept rows as text cells ([`file_rows`]),
//! the distributions behind the plots ([`Distributions`]) and a seeded sample of captioned
//! training images. Plain numbers and strings: drawing them is imsearch-report's job.

use std::collections::{BTreeMap, BTreeSet};

use imsearch_types::{GradedPair, ImageId, SourceKind};
use rand::{seq::SliceRandom, SeedableRng};
use serde::Serialize;

use crate::{files, read::column_names, Aggregation, Dataset, LabelReport};

/// The counts of a dataset and of its label aggregation (`summary.json` of `cargo xtask eda`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub train_rows: usize,
    pub train_images: usize,
    pub query_ids: usize,
    pub crowd_rows: usize,
    pub expert_rows: usize,
    pub expert_no_majority: usize,
    pub labelled_pairs: usize,
    /// Every [`SourceKind`], zero when no pair has it.
    pub labelled_pairs_by_source: BTreeMap<SourceKind, usize>,
    pub test_queries: usize,
    pub test_images: usize,
    pub aggregation: Aggregation,
    pub labels: LabelReport,
    /// Skipped rows by file and reason.
    pub skipped_rows: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub unreferenced_train_images: usize,
    pub unreferenced_test_images: usize,
}

impl Summary {
    /// The counts of `ds` and of the labels `aggregation` made of it (`labels`).
    pub fn new(ds: &Dataset, aggregation: Aggregation, labels: &LabelReport) -> Self {
        Summary {
            train_rows: ds.train.len(),
            train_images: ds.train.iter().map(|r| &r.image).collect::<BTreeSet<_>>().len(),
            query_ids: ds.train.iter().map(|r| &r.query).collect::<BTreeSet<_>>().len(),
            crowd_rows: ds.crowd.len(),
            expert_rows: ds.expert.len(),
            expert_no_majority: labels.expert_no_majority,
            labelled_pairs: labels.labelled,
            labelled_pairs_by_source: [SourceKind::Expert, SourceKind::Crowd, SourceKind::Both]
                .into_iter()
                .map(|k| (k, labels.by_source.get(&k).copied().unwrap_or(0)))
                .collect(),
            test_queries: ds.test_queries.len(),
            test_images: ds.test_images.len(),
            aggregation,
            labels: labels.clone(),
            skipped_rows: ds.report.files.iter().map(|f| (f.file.clone(), f.skip_counts())).collect(),
            unreferenced_train_images: ds.report.unreferenced_train_images.len(),
            unreferenced_test_images: ds.report.unreferenced_test_images.len(),
        }
    }

    /// The headline counts as (what, how many) rows, in the order a person reads them.
    pub fn figures(&self) -> Vec<(&'static str, usize)> {
        let by = |kind| self.labelled_pairs_by_source.get(&kind).copied().unwrap_or(0);
        vec![
            ("train rows (train_dataset.csv)", self.train_rows),
            ("train images", self.train_images),
            ("query ids (captions) in train", self.query_ids),
            ("crowd rows", self.crowd_rows),
            ("expert rows", self.expert_rows),
            ("expert pairs with no majority (dropped)", self.expert_no_majority),
            ("labelled pairs", self.labelled_pairs),
            ("labelled by experts only", by(SourceKind::Expert)),
            ("labelled by the crowd only", by(SourceKind::Crowd)),
            ("labelled by both", by(SourceKind::Both)),
            ("pairs whose caption text is unknown (left out)", self.labels.unknown_text),
            ("test queries", self.test_queries),
            ("test images", self.test_images),
        ]
    }
}

/// One annotation file's kept rows as text cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRows {
    /// The file name, e.g. `train_dataset.csv`.
    pub file: &'static str,
    /// The columns as this project names them (the TSVs have no header): [`column_names`].
    pub columns: &'static [&'static str],
    pub rows: Vec<Vec<String>>,
}

/// Each annotation file's kept rows, in reading order ([`files::ANNOTATIONS`]).
pub fn file_rows(ds: &Dataset) -> Vec<FileRows> {
    fn rows<T>(file: &'static str, rows: &[T], cells: impl Fn(&T) -> Vec<String>) -> FileRows {
        let columns = column_names(file).unwrap_or_default();
        FileRows { file, columns, rows: rows.iter().map(cells).collect() }
    }
    vec![
        rows(files::TRAIN_DATASET, &ds.train, |r| vec![r.image.to_string(), r.query.to_string(), r.text.clone()]),
        rows(files::CROWD, &ds.crowd, |r| {
            let (image, query) = (r.image.to_string(), r.query.to_string());
            vec![image, query, r.fraction.to_string(), r.votes.yes.to_string(), r.votes.no.to_string()]
        }),
        rows(files::EXPERT, &ds.expert, |r| {
            let [a, b, c] = r.grades.0;
            vec![r.image.to_string(), r.query.to_string(), a.to_string(), b.to_string(), c.to_string()]
        }),
        rows(files::TEST_QUERIES, &ds.test_queries, |r| {
            vec![r.index.to_string(), r.query.to_string(), r.text.clone(), r.image.to_string()]
        }),
        rows(files::TEST_IMAGES, &ds.test_images, |r| vec![r.image.to_string()]),
    ]
}

/// The distributions of votes, grades and labels, as counts and values ready to plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Distributions {
    /// Each crowd row's share of "yes" votes.
    pub crowd_fractions: Vec<f64>,
    /// Crowd rows by their number of "yes" votes (index: votes, from 0 to the most votes cast
    /// either way, so both vectors have the same length).
    pub crowd_yes_votes: Vec<usize>,
    /// Crowd rows by their number of "no" votes, indexed like `crowd_yes_votes`.
    pub crowd_no_votes: Vec<usize>,
    /// Expert rows by grade (index: grade - 1), one array per expert.
    pub expert_grades: [[usize; 4]; 3],
    /// Expert rows by majority grade (index: grade - 1); rows without a majority are not counted.
    pub majority_grades: [usize; 4],
    /// The aggregated labels, by the sources that graded the pair; every kind is present.
    pub labels: BTreeMap<SourceKind, Vec<f64>>,
}

impl Distributions {
    /// The distributions of `ds`'s annotations and of the labels aggregated from them (`pairs`).
    pub fn new(ds: &Dataset, pairs: &[GradedPair]) -> Self {
        let max_votes = ds.crowd.iter().map(|r| r.votes.yes.max(r.votes.no)).max().unwrap_or(0);
        let by_votes = |get: fn(&crate::CrowdRow) -> u32| -> Vec<usize> {
            (0..=max_votes).map(|v| ds.crowd.iter().filter(|r| get(r) == v).count()).collect()
        };
        let grade_count = |grade: fn(&crate::ExpertRow) -> Option<u8>| -> [usize; 4] {
            [1, 2, 3, 4].map(|g| ds.expert.iter().filter(|r| grade(r) == Some(g)).count())
        };
        let by_kind = |kind: SourceKind| -> Vec<f64> {
            pairs.iter().filter(|p| p.sources.kind() == Some(kind)).map(|p| f64::from(p.label.get())).collect()
        };
        Distributions {
            crowd_fractions: ds.crowd.iter().map(|r| r.fraction).collect(),
            crowd_yes_votes: by_votes(|r| r.votes.yes),
            crowd_no_votes: by_votes(|r| r.votes.no),
            expert_grades: [
                grade_count(|r| Some(r.grades.0[0])),
                grade_count(|r| Some(r.grades.0[1])),
                grade_count(|r| Some(r.grades.0[2])),
            ],
            majority_grades: grade_count(|r| r.grades.majority()),
            labels: [SourceKind::Expert, SourceKind::Crowd, SourceKind::Both].map(|k| (k, by_kind(k))).into(),
        }
    }
}

impl Dataset {
    /// Up to `n` training images on disk, each with the first caption written for it, drawn
    /// with `seed`: the same dataset and seed give the same sample.
    pub fn captioned_sample(&self, n: usize, seed: u64) -> Vec<(&ImageId, &str)> {
        let mut own: BTreeMap<&ImageId, &str> = BTreeMap::new();
        for r in &self.train {
            own.entry(r.query.source_image()).or_insert(&r.text);
        }
        let mut candidates: Vec<_> = own.into_iter().filter(|(i, _)| self.train_image_files.contains(*i)).collect();
        candidates.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        candidates.truncate(n);
        candidates
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{aggregate, fixtures, LoadOptions};

    /// The tiny fixture written to a temporary directory and loaded, with its labels.
    fn tiny() -> (tempfile::TempDir, Dataset, crate::Labels) {
        let dir = tempfile::tempdir().unwrap();
        let files = fixtures::tiny().files(|i| Ok::<_, std::convert::Infallible>(i.rgb.clone())).unwrap();
        fixtures::write(dir.path(), &files).unwrap();
        let ds = Dataset::load(dir.path(), LoadOptions::default()).unwrap();
        let captions = ds.train_captions();
        let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q)).unwrap();
        (dir, ds, labels)
    }

    #[test]
    fn summary_counts_the_fixture() {
        let (_dir, ds, labels) = tiny();
        let s = Summary::new(&ds, Aggregation::default(), &labels.report);
        let figures: BTreeMap<_, _> = s.figures().into_iter().collect();
        assert_eq!(figures.len(), 13);
        assert_eq!(figures["train rows (train_dataset.csv)"], 9);
        assert_eq!(figures["train images"], 5);
        assert_eq!(figures["query ids (captions) in train"], 5);
        assert_eq!((figures["crowd rows"], figures["expert rows"]), (8, 6));
        assert_eq!(figures["labelled pairs"], 9);
        assert_eq!(figures["labelled by experts only"], 2);
        assert_eq!(figures["labelled by the crowd only"], 4);
        assert_eq!(figures["labelled by both"], 3);
        assert_eq!(figures["pairs whose caption text is unknown (left out)"], 1);
        assert_eq!(s.skipped_rows["train_dataset.csv"]["image missing on disk"], 1);
        assert!(s.skipped_rows["test_images.csv"].is_empty());
        assert_eq!((s.unreferenced_train_images, s.unreferenced_test_images), (1, 0));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["labelled_pairs_by_source"]["both"], 3, "{json}");
        assert_eq!(json["aggregation"]["strategy"], "blend");
    }

    #[test]
    fn file_rows_are_the_kept_rows_as_text() {
        let (_dir, ds, _) = tiny();
        let files = file_rows(&ds);
        let names: Vec<_> = files.iter().map(|f| f.file).collect();
        assert_eq!(names, files::ANNOTATIONS);
        let crowd = &files[1];
        assert_eq!(crowd.columns.len(), 5);
        assert_eq!(crowd.rows.len(), 8);
        assert_eq!(crowd.rows[4], ["1002_child.jpg", "1002_child.jpg#2", "0.8333333333333334", "5", "1"]);
        assert_eq!(files[3].rows[1][2], "A sign that says \"Keep off the grass\" .");
        assert!(files.iter().all(|f| f.rows.iter().all(|r| r.len() == f.columns.len())));
    }

    #[test]
    fn distributions_count_votes_grades_and_labels() {
        let (_dir, ds, labels) = tiny();
        let d = Distributions::new(&ds, &labels.pairs);
        assert_eq!(d.crowd_fractions.len(), 8);
        // Most votes either way: 5 "yes" (1002_child) or 4 "no".
        assert_eq!(d.crowd_yes_votes, [2, 1, 1, 2, 1, 1]);
        assert_eq!(d.crowd_no_votes, [2, 3, 0, 2, 1, 0]);
        assert_eq!(d.expert_grades, [[3, 1, 0, 2], [2, 2, 1, 1], [2, 1, 3, 0]]);
        assert_eq!(d.majority_grades, [2, 1, 1, 1]);
        let sizes: Vec<usize> = d.labels.values().map(Vec::len).collect();
        assert_eq!(sizes, [2, 4, 3]);
        assert!(d.labels.values().flatten().all(|l| (0.0..=1.0).contains(l)));
    }

    #[test]
    fn captioned_sample_is_seeded_and_only_images_on_disk() {
        let (_dir, ds, _) = tiny();
        let all = ds.captioned_sample(10, 0);
        // Five captions were written for an image; 1004_snow.jpg's caption row names gone.jpg,
        // but its own image is on disk.
        let mut images: Vec<&str> = all.iter().map(|(i, _)| i.as_str()).collect();
        images.sort();
        assert_eq!(images, ["1000_dog.jpg", "1001_beach.jpg", "1002_child.jpg", "1003_bike.jpg", "1004_snow.jpg"]);
        assert!(all.iter().any(|(i, t)| i.as_str() == "1000_dog.jpg" && *t == "A brown dog runs across the grass ."));
        assert_eq!(ds.captioned_sample(10, 0), all);
        assert_eq!(ds.captioned_sample(2, 0), all[..2]);
        let orders: BTreeSet<Vec<&ImageId>> =
            (0..8).map(|seed| ds.captioned_sample(5, seed).into_iter().map(|(i, _)| i).collect()).collect();
        assert!(orders.len() > 1, "the seed changes the order");
    }
}
