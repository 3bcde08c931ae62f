//! `cargo xtask eda`: the dataset explained as a person wants to see it: tables per file, the
//! label aggregation counts, plots, one HTML page, and `summary.json` for scripts. The figures
//! come from imsearch-data's `summary`, the plots and the page from imsearch-report's `dataset`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use imsearch_data::{aggregate, file_rows, Aggregation, Dataset, Distributions, LoadOptions, OnBadRow, Summary};
use imsearch_report::{
    dataset::{self, DatasetPage, DatasetPlots, FileTable},
    describe::Table,
};
use imsearch_types::SourceKind;

use crate::paths;

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The dataset directory (default: ../shared/data/dsplus_integrated_project_4 next to the checkout).
    #[arg(long, value_name = "DIR", env = imsearch_data::DATA_ENV, value_parser = crate::paths::dir_arg)]
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

pub(crate) fn run(args: &Args) -> Result<()> {
    let data = paths::data_dir(args.data.as_deref())?;
    let on_bad_row = if args.skip_bad_rows { OnBadRow::Skip } else { OnBadRow::Error };
    let ds = Dataset::load(&data, LoadOptions { on_bad_row })
        .with_context(|| format!("failed to load the dataset at {}", data.display()))?;
    let strategy = Aggregation::Blend { expert_weight: args.expert_weight, crowd_weight: args.crowd_weight };
    let captions = ds.train_captions();
    let labels = aggregate(&ds.expert, &ds.crowd, strategy, |q| captions.contains_key(q))?;
    let summary = Summary::new(&ds, strategy, &labels.report);

    std::fs::create_dir_all(&args.out).with_context(|| format!("failed to create {}", args.out.display()))?;
    let out = args.out.canonicalize().with_context(|| format!("failed to resolve {}", args.out.display()))?;
    let files: Vec<FileTable> = file_rows(&ds)
        .into_iter()
        .map(|f| FileTable {
            rows_read: ds.report.file(f.file).map_or(0, |r| r.rows_read),
            table: Table::from_cells(f.file, f.columns, f.rows),
        })
        .collect();
    let d = Distributions::new(&ds, &labels.pairs);
    let samples: Vec<(PathBuf, &str)> =
        ds.captioned_sample(8, args.seed).into_iter().map(|(image, text)| (ds.train_image_path(image), text)).collect();
    let plots = dataset::draw_plots(
        &out,
        &DatasetPlots {
            crowd_fractions: &d.crowd_fractions,
            crowd_yes_votes: &d.crowd_yes_votes,
            crowd_no_votes: &d.crowd_no_votes,
            expert_grades: &d.expert_grades,
            majority_grades: &d.majority_grades,
            labels: [SourceKind::Expert, SourceKind::Crowd, SourceKind::Both].map(|k| &d.labels[&k][..]),
            samples: &samples,
        },
    )?;

    let json = serde_json::to_string_pretty(&summary)?;
    paths::write_atomic(&out.join("summary.json"), json.as_bytes())?;
    let page = DatasetPage {
        data_dir: &data,
        figures: &summary.figures(),
        aggregation: &format!("{strategy:?}"),
        skipped: &ds.report.skipped(),
        unreferenced: (summary.unreferenced_train_images, summary.unreferenced_test_images),
        plots: &plots,
        files: &files,
    };
    page.to_page().write(&out.join("index.html"))?;

    print_summary(&summary, &ds, &files);
    println!("\nwrote {}", out.join("index.html").display());
    println!("wrote {}", out.join("summary.json").display());
    for (file, _) in &plots {
        println!("wrote {}", out.join(file).display());
    }
    Ok(())
}

fn print_summary(s: &Summary, ds: &Dataset, files: &[FileTable]) {
    for FileTable { table: t, .. } in files {
        println!("\n== {} ({} rows, {} duplicate rows)", t.name, t.rows.len(), t.duplicate_rows());
        print!("{}", t.head_table(3).to_text(40));
        print!("{}", t.describe().to_text(40));
    }
    println!("\n== labels");
    println!("{}", serde_json::to_string_pretty(&s.labels).unwrap_or_default());
    let skipped = ds.report.total_skipped();
    if skipped > 0 {
        println!("\n{skipped} rows skipped:");
        for (file, reason, n) in ds.report.skipped() {
            println!("  {file}: {n} x {reason}");
        }
        // Missing images by name: a person fixes these, so each is worth a line (up to 20).
        let missing: Vec<String> = ds
            .report
            .files
            .iter()
            .flat_map(|f| f.skips.iter().map(move |s| (f, s)))
            .filter_map(|(f, s)| match &s.reason {
                imsearch_data::SkipReason::MissingImage { image } => {
                    Some(format!("  {}:{}: {image} is missing on disk", f.file, s.line))
                }
                _ => None,
            })
            .collect();
        for line in missing.iter().take(20) {
            println!("{line}");
        }
        if missing.len() > 20 {
            println!("  ... and {} more rows naming a missing image", missing.len() - 20);
        }
    }
}
