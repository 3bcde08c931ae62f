//! Malformed copies of the fixture: each bad row is an error naming file, line and field, or,
//! when asked, a counted skip. Never a panic.

use std::path::Path;

use imsearch_data::{Dataset, LoadOptions, OnBadRow};

use crate::{fixture_dir, scratch_copy};

/// Replaces line `line` (1-based) of `file` in a scratch copy with `text`, loads it, and checks
/// that the error mentions every string in `expected`.
#[track_caller]
fn check(file: &str, line: usize, text: &str, expected: &[&str]) {
    let tmp = scratch_copy(&fixture_dir());
    corrupt(tmp.path(), file, line, text);
    let err = Dataset::load(tmp.path(), LoadOptions::default()).expect_err("a malformed row must be an error");
    let msg = err.to_string();
    assert!(msg.contains(&format!("{file}:{line}:")), "{msg}");
    for e in expected {
        assert!(msg.contains(e), "{msg:?} should mention {e:?}");
    }
    // The same file loads with the row skipped and counted.
    let ds = Dataset::load(tmp.path(), LoadOptions { on_bad_row: OnBadRow::Skip }).unwrap();
    let report = ds.report.file(file).unwrap();
    assert_eq!(report.skip_counts().get("malformed row"), Some(&1), "{report:?}");
    assert!(report.skips.iter().any(|s| s.line == line as u64));
}

fn corrupt(dir: &Path, file: &str, line: usize, text: &str) {
    let path = dir.join(file);
    let body = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = body.lines().collect();
    lines[line - 1] = text;
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
}

#[test]
fn column_count() {
    check("train_dataset.csv", 3, "1001_beach.jpg,1000_dog.jpg#0", &["expected 3 columns, found 2"]);
    check("CrowdAnnotations.tsv", 2, "1000_dog.jpg\t1001_beach.jpg#1\t0\t0", &["expected 5 columns, found 4"]);
    check("test_images.csv", 2, "2000_park.jpg,extra", &["expected 1 columns, found 2"]);
}

#[test]
fn expert_grades() {
    check("ExpertAnnotations.tsv", 4, "1003_bike.jpg\t1002_child.jpg#2\t1\t5\t1", &["expert_2", "1..=4"]);
    check("ExpertAnnotations.tsv", 1, "1000_dog.jpg\t1000_dog.jpg#0\tfour\t4\t3", &["expert_1"]);
}

#[test]
fn crowd_fraction_and_counts() {
    check("CrowdAnnotations.tsv", 1, "1000_dog.jpg\t1000_dog.jpg#0\t1.5\t3\t0", &["fraction", "outside 0..=1"]);
    check("CrowdAnnotations.tsv", 3, "1001_beach.jpg\t1000_dog.jpg#0\t0.5\t1\t3", &["fraction", "yes/(yes+no)"]);
    check("CrowdAnnotations.tsv", 3, "1001_beach.jpg\t1000_dog.jpg#0\t0.25\t-1\t3", &["yes", "non-negative"]);
    check("CrowdAnnotations.tsv", 3, "1001_beach.jpg\t1000_dog.jpg#0\t0\t0\t0", &["no votes"]);
}

#[test]
fn query_ids_and_names() {
    check("train_dataset.csv", 2, "1000_dog.jpg,1000_dog.jpg,A dog .", &["query_id", "<image>#<n>"]);
    check("test_queries.csv", 2, "x|2000_park.jpg#0|A dog .|2000_park.jpg", &["index", "non-negative integer"]);
    check("test_queries.csv", 3, "1|2000_park.jpg#1||2000_park.jpg", &["query_text", "empty"]);
    check("train_dataset.csv", 2, "../etc/passwd,1000_dog.jpg#0,A dog .", &["image", "plain file name"]);
}

#[test]
fn broken_quoting_and_encoding() {
    // An unterminated quote swallows the rest of the file into one field: the column count is wrong.
    check("test_queries.csv", 5, "3|2002_kids.jpg#0|\"Two kids|2002_kids.jpg", &["columns"]);
    let tmp = scratch_copy(&fixture_dir());
    let path = tmp.path().join("train_dataset.csv");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.iter().position(|&b| b == b'\n').unwrap() + 5;
    bytes[at] = 0xff;
    std::fs::write(&path, bytes).unwrap();
    let msg = Dataset::load(tmp.path(), LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("train_dataset.csv:2:") && msg.contains("UTF-8"), "{msg}");
}

#[test]
fn headers_and_missing_files() {
    let tmp = scratch_copy(&fixture_dir());
    corrupt(tmp.path(), "train_dataset.csv", 1, "img,query_id,query_text");
    let msg = Dataset::load(tmp.path(), LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("train_dataset.csv:1: expected header"), "{msg}");
    let tmp = scratch_copy(&fixture_dir());
    std::fs::remove_file(tmp.path().join("ExpertAnnotations.tsv")).unwrap();
    let msg = Dataset::load(tmp.path(), LoadOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("failed to read") && msg.contains("ExpertAnnotations.tsv"), "{msg}");
}

#[test]
fn duplicates_are_counted() {
    let tmp = scratch_copy(&fixture_dir());
    corrupt(tmp.path(), "ExpertAnnotations.tsv", 2, "1000_dog.jpg\t1000_dog.jpg#0\t1\t1\t1");
    let ds = Dataset::load(tmp.path(), LoadOptions::default()).unwrap();
    let report = ds.report.file("ExpertAnnotations.tsv").unwrap();
    assert_eq!(report.skip_counts().get("duplicate pair"), Some(&1));
    assert_eq!(report.skips[0].line, 2);
    assert_eq!(ds.expert.len(), 5);
}
