//! The real dataset: the figures the task's data must give, and one malformed line per file.

use imsearch_data::{aggregate, files, Aggregation, Dataset, LoadOptions};
use imsearch_types::SourceKind;

use crate::{real_data_dir, scratch_copy};

#[test]
fn figures() {
    let Some(dir) = real_data_dir() else { return };
    let ds = Dataset::load(&dir, LoadOptions::default()).unwrap();
    assert_eq!(ds.train.len(), 5822);
    assert_eq!(ds.train.iter().map(|r| &r.image).collect::<std::collections::BTreeSet<_>>().len(), 1000);
    assert_eq!(ds.train_captions().len(), 977);
    assert_eq!(ds.crowd.len(), 47_830);
    assert_eq!(ds.expert.len(), 5822);
    assert_eq!(ds.test_queries.len(), 500);
    assert_eq!(ds.test_images.len(), 100);
    assert_eq!(ds.report.total_skipped(), 0, "{:?}", ds.report);
    let captions = ds.train_captions();
    let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q)).unwrap();
    let r = &labels.report;
    assert_eq!(r.expert_no_majority, 126);
    assert_eq!(r.by_source[&SourceKind::Both], 2258);
    assert_eq!(r.by_source[&SourceKind::Expert], 3438);
    assert_eq!(r.labelled + r.unknown_text + r.dropped_no_majority, r.joined_pairs);
}

#[test]
fn one_malformed_line_per_file() {
    let Some(dir) = real_data_dir() else { return };
    let cases = [
        (files::TRAIN_DATASET, 100, "1056338697_4f7d7ce270.jpg,not-a-query,text"),
        (files::CROWD, 1, "1056338697_4f7d7ce270.jpg\t1056338697_4f7d7ce270.jpg#2\t2\t3\t0"),
        (files::EXPERT, 5000, "1056338697_4f7d7ce270.jpg\t2549968784_39bfbe44f9.jpg#2\t1\t1"),
        (files::TEST_QUERIES, 250, "248|x.jpg#1|text"),
        (files::TEST_IMAGES, 50, "a.jpg,b.jpg"),
    ];
    for (file, line, text) in cases {
        let tmp = scratch_copy(&dir);
        let path = tmp.path().join(file);
        let body = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = body.lines().collect();
        lines[line - 1] = text;
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let msg = Dataset::load(tmp.path(), LoadOptions::default()).unwrap_err().to_string();
        assert!(msg.contains(&format!("{file}:{line}:")), "{msg}");
    }
}
