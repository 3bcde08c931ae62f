//! `cargo xtask eda`: the dataset explained as a person wants to see it: tables per file, the
//! label aggregation counts, plots, one HTML page, and `summary.json` for scripts.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use imsearch_data::{aggregate, Aggregation, Dataset, LabelReport, LoadOptions, LoadReport, OnBadRow};
use imsearch_report::{
    describe::Table,
    html::Page,
    plot::{self, Series},
    sheet::{self, SheetOptions, SheetRow, Tile},
};
use imsearch_types::SourceKind;
use rand::{seq::SliceRandom, SeedableRng};
use serde::Serialize;

use crate::paths;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The dataset directory (default: $IMSEARCH_DATA, else ../shared/data/dsplus_integrated_project_4).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the page, the plots and summary.json go.
    #[arg(long, value_name = "DIR", default_value = "target/eda")]
    out: PathBuf,
    /// Skip and count malformed rows instead of stopping at the first one.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Weight of the expert grade in the blended label.
    #[arg(long, default_value_t = 0.7)]
    expert_weight: f32,
    /// Weight of the crowd's share of "yes" votes in the blended label.
    #[arg(long, default_value_t = 0.3)]
    crowd_weight: f32,
    /// Seed for picking the sample images.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// The figures `summary.json` holds.
#[derive(Debug, Serialize)]
pub(crate) struct Summary {
    pub(crate) train_rows: usize,
    pub(crate) train_images: usize,
    pub(crate) query_ids: usize,
    pub(crate) crowd_rows: usize,
    pub(crate) expert_rows: usize,
    pub(crate) expert_no_majority: usize,
    pub(crate) labelled_pairs: usize,
    pub(crate) labelled_pairs_by_source: BTreeMap<SourceKind, usize>,
    pub(crate) test_queries: usize,
    pub(crate) test_images: usize,
    pub(crate) aggregation: Aggregation,
    pub(crate) labels: LabelReport,
    pub(crate) skipped_rows: BTreeMap<String, BTreeMap<&'static str, usize>>,
    pub(crate) unreferenced_train_images: usize,
    pub(crate) unreferenced_test_images: usize,
}

pub(crate) fn run(args: &Args) -> Result<()> {
    let data = paths::data_dir(args.data.as_deref())?;
    let on_bad_row = if args.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Error };
    let ds = Dataset::load(&data, LoadOptions { on_bad_row })
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let strategy = Aggregation::Blend { expert_weight: args.expert_weight, crowd_weight: args.crowd_weight };
    let captions = ds.train_captions();
    let labels = aggregate(&ds.expert, &ds.crowd, strategy, |q| captions.contains_key(q))?;
    let summary = summarise(&ds, strategy, &labels.report);

    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    let out = args.out.canonicalize().with_context(|| format!("failed to resolve {}", args.out.display()))?;
    let tables = tables(&ds);
    let plots = plots(&ds, &labels.pairs, &out, args.seed)?;

    let json = serde_json::to_string_pretty(&summary)?;
    paths::write_atomic(&out.join("summary.json"), json.as_bytes())?;
    let page = page(&data, &summary, &ds.report, &tables, &plots);
    page.write(&out.join("index.html"))?;

    print_summary(&summary, &ds.report, &tables);
    println!("\nwrote {}", out.join("index.html").display());
    println!("wrote {}", out.join("summary.json").display());
    for (file, _) in &plots {
        println!("wrote {}", out.join(file).display());
    }
    Ok(())
}

fn summarise(ds: &Dataset, aggregation: Aggregation, labels: &LabelReport) -> Summary {
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

/// Each annotation file as a table of its parsed rows, with the columns named as this project
/// names them (the TSVs have no header).
fn tables(ds: &Dataset) -> Vec<Table> {
    fn table<T>(name: &str, rows: &[T], cells: impl Fn(&T) -> Vec<String>) -> Table {
        let columns = imsearch_data::column_names(name).expect("a known file").iter().map(|c| c.to_string()).collect();
        let mut t = Table::new(name, columns);
        t.rows = rows.iter().map(|r| cells(r).into_iter().map(Some).collect()).collect();
        t
    }
    use imsearch_data::files;
    vec![
        table(files::TRAIN_DATASET, &ds.train, |r| vec![r.image.to_string(), r.query.to_string(), r.text.clone()]),
        table(files::CROWD, &ds.crowd, |r| {
            vec![
                r.image.to_string(),
                r.query.to_string(),
                r.fraction.to_string(),
                r.votes.yes.to_string(),
                r.votes.no.to_string(),
            ]
        }),
        table(files::EXPERT, &ds.expert, |r| {
            let [a, b, c] = r.grades.0;
            vec![r.image.to_string(), r.query.to_string(), a.to_string(), b.to_string(), c.to_string()]
        }),
        table(files::TEST_QUERIES, &ds.test_queries, |r| {
            vec![r.index.to_string(), r.query.to_string(), r.text.clone(), r.image.to_string()]
        }),
        table(files::TEST_IMAGES, &ds.test_images, |r| vec![r.image.to_string()]),
    ]
}

/// Draws every plot into `out`; returns (file name, caption) pairs.
fn plots(ds: &Dataset, pairs: &[imsearch_types::GradedPair], out: &Path, seed: u64) -> Result<Vec<(String, String)>> {
    let mut made = Vec::new();
    let mut add = |file: &str, caption: &str| {
        made.push((file.to_owned(), caption.to_owned()));
        out.join(file)
    };

    let fractions: Vec<f64> = ds.crowd.iter().map(|r| r.fraction).collect();
    let path = add("crowd_fraction.png", "Crowd: share of annotators who confirmed the caption, per pair");
    plot::histogram(&path, "Crowd fraction of 'yes' votes", "fraction", &fractions, 20, (0.0, 1.0))?;

    let max_votes = ds.crowd.iter().map(|r| r.votes.yes.max(r.votes.no)).max().unwrap_or(0);
    let categories: Vec<String> = (0..=max_votes).map(|v| v.to_string()).collect();
    let count_of = |get: &dyn Fn(&imsearch_data::CrowdRow) -> u32| -> Vec<f64> {
        (0..=max_votes).map(|v| ds.crowd.iter().filter(|r| get(r) == v).count() as f64).collect()
    };
    let path = add("crowd_votes.png", "Crowd: how many annotators confirmed and rejected each pair");
    plot::grouped_bar_chart(
        &path,
        "Confirmed and rejected votes per pair",
        "number of votes",
        "pairs",
        &categories,
        &[Series::new("confirmed", count_of(&|r| r.votes.yes)), Series::new("rejected", count_of(&|r| r.votes.no))],
    )?;

    let grades: Vec<String> = (1..=4).map(|g| g.to_string()).collect();
    let mut series: Vec<Series> = (0..3)
        .map(|e| {
            let values = (1..=4u8).map(|g| ds.expert.iter().filter(|r| r.grades.0[e] == g).count() as f64).collect();
            Series::new(format!("expert {}", e + 1), values)
        })
        .collect();
    series.push(Series::new(
        "majority",
        (1..=4u8).map(|g| ds.expert.iter().filter(|r| r.grades.majority() == Some(g)).count() as f64).collect(),
    ));
    let path = add("expert_grades.png", "Experts: grades 1 (no match) to 4 (exact match), and the majority grade");
    plot::grouped_bar_chart(&path, "Expert grades", "grade", "pairs", &grades, &series)?;

    let path = add("labels.png", "Final labels after aggregation, by source");
    let by_kind = |kind: SourceKind| -> Vec<f64> {
        pairs.iter().filter(|p| p.sources.kind() == Some(kind)).map(|p| f64::from(p.label.get())).collect()
    };
    let bins = 12;
    let counts = |values: &[f64]| -> Vec<f64> {
        let mut c = vec![0.0; bins];
        for v in values {
            c[((v * bins as f64) as usize).min(bins - 1)] += 1.0;
        }
        c
    };
    let edges: Vec<String> = (0..bins).map(|i| format!("{:.2}", (i as f64 + 0.5) / bins as f64)).collect();
    plot::grouped_bar_chart(
        &path,
        "Aggregated label distribution",
        "label (bin centre)",
        "pairs",
        &edges,
        &[
            Series::new("expert only", counts(&by_kind(SourceKind::Expert))),
            Series::new("crowd only", counts(&by_kind(SourceKind::Crowd))),
            Series::new("both", counts(&by_kind(SourceKind::Both))),
        ],
    )?;

    let path = add("samples.png", "Eight training images with a caption written for each");
    let mut own: BTreeMap<&imsearch_types::ImageId, &str> = BTreeMap::new();
    for r in &ds.train {
        own.entry(r.query.source_image()).or_insert(&r.text);
    }
    let mut candidates: Vec<_> = own.into_iter().filter(|(i, _)| ds.train_image_files.contains(*i)).collect();
    candidates.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let tiles = candidates
        .iter()
        .take(8)
        .map(|(image, text)| Ok(Tile::load(&ds.train_image_path(image))?.with_caption(*text)))
        .collect::<Result<Vec<_>>>()?;
    let rows: Vec<SheetRow> = tiles.chunks(4).map(|c| SheetRow::new(None, c.to_vec())).collect();
    sheet::image_grid(&path, &rows, &SheetOptions { caption_lines: 3, ..SheetOptions::default() })?;
    Ok(made)
}

fn page(data: &Path, s: &Summary, report: &LoadReport, tables: &[Table], plots: &[(String, String)]) -> Page {
    let mut page = Page::new("imsearch: the dataset");
    page.paragraph(&format!("Dataset directory: {}", data.display()));
    page.heading(2, "Summary");
    let by = &s.labelled_pairs_by_source;
    let rows: Vec<Vec<String>> = [
        ("train rows (train_dataset.csv)", s.train_rows),
        ("train images", s.train_images),
        ("query ids (captions) in train", s.query_ids),
        ("crowd rows", s.crowd_rows),
        ("expert rows", s.expert_rows),
        ("expert pairs with no majority (dropped)", s.expert_no_majority),
        ("labelled pairs", s.labelled_pairs),
        ("labelled by experts only", by[&SourceKind::Expert]),
        ("labelled by the crowd only", by[&SourceKind::Crowd]),
        ("labelled by both", by[&SourceKind::Both]),
        ("pairs whose caption text is unknown (left out)", s.labels.unknown_text),
        ("test queries", s.test_queries),
        ("test images", s.test_images),
    ]
    .iter()
    .map(|(k, v)| vec![k.to_string(), v.to_string()])
    .collect();
    page.table(&["figure", "value"], &rows);
    page.paragraph(&format!(
        "Labels: the experts' majority grade g (given by at least 2 of 3) becomes (g-1)/3 and is blended with the \
         crowd's share of 'yes' votes as {:?}; a pair graded by one source only keeps that source's label \
         (a full outer join).",
        s.aggregation
    ));

    page.heading(2, "What was skipped or noticed");
    let mut skips: Vec<Vec<String>> = Vec::new();
    for f in &report.files {
        for (reason, n) in f.skip_counts() {
            skips.push(vec![f.file.clone(), reason.to_owned(), n.to_string()]);
        }
    }
    if skips.is_empty() {
        page.paragraph("No row was skipped.");
    } else {
        page.table(&["file", "reason", "rows"], &skips);
    }
    page.paragraph(&format!(
        "Images on disk that no file references: {} in train_images/, {} in test_images/.",
        report.unreferenced_train_images.len(),
        report.unreferenced_test_images.len()
    ));

    page.heading(2, "Plots");
    for (file, caption) in plots {
        page.heading(3, caption);
        page.image(file, caption);
    }

    page.heading(2, "Files");
    for t in tables {
        page.heading(3, &t.name);
        let f = report.file(&t.name);
        page.paragraph(&format!(
            "{} rows read, {} kept; {} duplicate rows; missing values per column: {}.",
            f.map_or(0, |f| f.rows_read),
            t.rows.len(),
            t.duplicate_rows(),
            t.summaries().iter().map(|c| format!("{} {}", c.name, c.missing)).collect::<Vec<_>>().join(", ")
        ));
        page.heading(4, "First rows");
        page.data_table(&t.head_table(5));
        page.heading(4, "Columns");
        page.data_table(&t.describe());
    }
    page
}

fn print_summary(s: &Summary, report: &LoadReport, tables: &[Table]) {
    for t in tables {
        println!("\n== {} ({} rows, {} duplicate rows)", t.name, t.rows.len(), t.duplicate_rows());
        print!("{}", t.head_table(3).to_text(40));
        print!("{}", t.describe().to_text(40));
    }
    println!("\n== labels");
    println!("{}", serde_json::to_string_pretty(&s.labels).unwrap_or_default());
    let skipped = report.total_skipped();
    if skipped > 0 {
        println!("\n{skipped} rows skipped:");
        for f in &report.files {
            for (reason, n) in f.skip_counts() {
                println!("  {}: {n} x {reason}", f.file);
            }
        }
    }
}
