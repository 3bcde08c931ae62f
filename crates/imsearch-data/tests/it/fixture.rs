//! The fixture dataset: every awkward case read, counted and aggregated as intended.

use imsearch_data::{aggregate, Aggregation, Dataset, LoadOptions, SkipReason};
use imsearch_types::{ImageId, SourceKind};

use crate::fixture_dir;

fn load() -> Dataset {
    Dataset::load(fixture_dir(), LoadOptions::default()).unwrap()
}

#[test]
fn reads_quoted_fields() {
    let ds = load();
    let beach = ds.train.iter().find(|r| r.query.to_string() == "1001_beach.jpg#1").unwrap();
    assert_eq!(beach.text, "People walk on the beach , near the water .");
    let sign = ds.test_queries.iter().find(|q| q.index == 1).unwrap();
    assert_eq!(sign.text, "A sign that says \"Keep off the grass\" .");
    assert_eq!(sign.line, 3);
    assert_eq!(ds.test_queries.len(), 4);
    assert_eq!(ds.test_images.len(), 3);
}

#[test]
fn counts_what_it_skips() {
    let ds = load();
    let train = ds.report.file("train_dataset.csv").unwrap();
    assert_eq!((train.rows_read, train.rows_kept), (10, 9));
    assert_eq!(train.skips[0].line, 11);
    assert_eq!(train.skips[0].reason, SkipReason::MissingImage { image: ImageId::from("gone.jpg") });
    let crowd = ds.report.file("CrowdAnnotations.tsv").unwrap();
    // A header-less file keeps its first row.
    assert_eq!((crowd.rows_read, crowd.rows_kept), (9, 8));
    assert_eq!(ds.crowd[0].line, 1);
    let expert = ds.report.file("ExpertAnnotations.tsv").unwrap();
    assert_eq!((expert.rows_read, expert.rows_kept), (6, 6));
    assert_eq!(ds.report.unreferenced_train_images, vec![ImageId::from("1005_unused.jpg")]);
    assert!(ds.report.unreferenced_test_images.is_empty());
}

#[test]
fn aggregates_with_a_full_outer_join() {
    let ds = load();
    let captions = ds.train_captions();
    let labels = aggregate(&ds.expert, &ds.crowd, Aggregation::default(), |q| captions.contains_key(q)).unwrap();
    let r = &labels.report;
    assert_eq!((r.expert_pairs, r.crowd_pairs, r.joined_pairs), (6, 8, 11));
    assert_eq!((r.expert_no_majority, r.dropped_no_majority, r.unknown_text), (1, 1, 1));
    assert_eq!(r.labelled, 9);
    assert_eq!(r.by_source[&SourceKind::Both], 3);
    assert_eq!(r.by_source[&SourceKind::Expert], 2);
    assert_eq!(r.by_source[&SourceKind::Crowd], 4);
    let dog = labels.pairs.iter().find(|p| p.image.as_str() == "1000_dog.jpg" && p.query.n() == 0).unwrap();
    // Majority 4 -> 1.0, crowd 3/3 -> 1.0.
    assert!((dog.label.get() - 1.0).abs() < 1e-6);
    let beach = labels.pairs.iter().find(|p| p.image.as_str() == "1001_beach.jpg" && p.query.n() == 0).unwrap();
    // Majority 1 -> 0.0, crowd 1/4.
    assert!((beach.label.get() - 0.3 * 0.25).abs() < 1e-6);
}

#[test]
fn generator_makes_the_committed_text_files_and_names_every_committed_image() {
    let fixture = imsearch_data::fixtures::tiny();
    for (name, body) in &fixture.texts {
        let committed = std::fs::read_to_string(fixture_dir().join(name)).unwrap();
        assert_eq!(&committed, body, "{name} differs from the generator's; run `cargo xtask fixtures`");
    }
    let mut committed_images: Vec<String> =
        [imsearch_data::files::TRAIN_IMAGE_DIR, imsearch_data::files::TEST_IMAGE_DIR]
            .iter()
            .flat_map(|dir| {
                std::fs::read_dir(fixture_dir().join(dir))
                    .unwrap()
                    .map(move |e| format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()))
            })
            .collect();
    committed_images.sort();
    let mut generated: Vec<String> = fixture.images.iter().map(|i| i.path.clone()).collect();
    generated.sort();
    assert_eq!(committed_images, generated);
}
