//! A dataset of captioned images graded by a crowd and by three experts, explained as a person
//! wants to see it: the plots of its votes, grades and aggregated labels, a sheet of sample
//! images with their captions ([`draw_plots`]), and one HTML page with its counts, what was
//! skipped, the plots and each file's first rows and column summaries ([`DatasetPage`]).
//! Everything comes in as plain numbers, strings, paths and [`Table`]s.

use std::path::{Path, PathBuf};

use crate::{
    describe::Table,
    html::Page,
    plot::{self, Series},
    sheet::{self, SheetOptions, SheetRow, Tile},
    Result,
};

/// What [`draw_plots`] draws.
#[derive(Debug, Clone, Copy)]
pub struct DatasetPlots<'a> {
    /// Each crowd-graded pair's share of "yes" votes, 0 to 1.
    pub crowd_fractions: &'a [f64],
    /// Crowd-graded pairs by their number of "yes" votes (index: votes).
    pub crowd_yes_votes: &'a [usize],
    /// Crowd-graded pairs by their number of "no" votes, indexed like `crowd_yes_votes`.
    pub crowd_no_votes: &'a [usize],
    /// Expert-graded pairs by grade 1 to 4 (index: grade - 1), per expert.
    pub expert_grades: &'a [[usize; 4]; 3],
    /// Expert-graded pairs by majority grade.
    pub majority_grades: &'a [usize; 4],
    /// The aggregated labels (0 to 1) of the pairs graded by experts only, by the crowd only,
    /// and by both.
    pub labels: [&'a [f64]; 3],
    /// Sample images (path, caption), drawn four to a row.
    pub samples: &'a [(PathBuf, &'a str)],
}

/// Bins of the aggregated label histogram.
const LABEL_BINS: usize = 12;

/// Draws every plot into the folder `out`; returns each (file name, caption), in page order.
/// An unreadable sample image is an error naming it.
pub fn draw_plots(out: &Path, p: &DatasetPlots<'_>) -> Result<Vec<(String, String)>> {
    let mut made = Vec::new();
    let mut add = |file: &str, caption: &str| {
        made.push((file.to_owned(), caption.to_owned()));
        out.join(file)
    };
    let counts = |c: &[usize]| -> Vec<f64> { c.iter().map(|&n| n as f64).collect() };

    let path = add("crowd_fraction.png", "Crowd: share of annotators who confirmed the caption, per pair");
    plot::histogram(&path, "Crowd fraction of 'yes' votes", "fraction", p.crowd_fractions, 20, (0.0, 1.0))?;

    let votes: Vec<String> = (0..p.crowd_yes_votes.len()).map(|v| v.to_string()).collect();
    let path = add("crowd_votes.png", "Crowd: how many annotators confirmed and rejected each pair");
    let series =
        [Series::new("confirmed", counts(p.crowd_yes_votes)), Series::new("rejected", counts(p.crowd_no_votes))];
    plot::grouped_bar_chart(
        &path,
        "Confirmed and rejected votes per pair",
        "number of votes",
        "pairs",
        &votes,
        &series,
    )?;

    let grades: Vec<String> = (1..=4).map(|g| g.to_string()).collect();
    let mut series: Vec<Series> =
        p.expert_grades.iter().enumerate().map(|(e, c)| Series::new(format!("expert {}", e + 1), counts(c))).collect();
    series.push(Series::new("majority", counts(p.majority_grades)));
    let path = add("expert_grades.png", "Experts: grades 1 (no match) to 4 (exact match), and the majority grade");
    plot::grouped_bar_chart(&path, "Expert grades", "grade", "pairs", &grades, &series)?;

    let path = add("labels.png", "Final labels after aggregation, by source");
    let bins = |values: &[f64]| -> Vec<f64> {
        let mut c = vec![0.0; LABEL_BINS];
        for v in values {
            c[((v * LABEL_BINS as f64) as usize).min(LABEL_BINS - 1)] += 1.0;
        }
        c
    };
    let edges: Vec<String> = (0..LABEL_BINS).map(|i| format!("{:.2}", (i as f64 + 0.5) / LABEL_BINS as f64)).collect();
    let [expert, crowd, both] = p.labels;
    let series = [
        Series::new("expert only", bins(expert)),
        Series::new("crowd only", bins(crowd)),
        Series::new("both", bins(both)),
    ];
    plot::grouped_bar_chart(&path, "Aggregated label distribution", "label (bin centre)", "pairs", &edges, &series)?;

    let path = add("samples.png", "Eight training images with a caption written for each");
    let tiles =
        p.samples.iter().map(|(image, text)| Ok(Tile::load(image)?.with_caption(*text))).collect::<Result<Vec<_>>>()?;
    let rows: Vec<SheetRow> = tiles.chunks(4).map(|c| SheetRow::new(None, c.to_vec())).collect();
    sheet::image_grid(&path, &rows, &SheetOptions { caption_lines: 3, ..SheetOptions::default() })?;
    Ok(made)
}

/// One annotation file on the page: its kept rows and how many rows were read.
#[derive(Debug, Clone)]
pub struct FileTable {
    pub table: Table,
    pub rows_read: usize,
}

/// What the dataset page shows.
#[derive(Debug, Clone, Copy)]
pub struct DatasetPage<'a> {
    pub data_dir: &'a Path,
    /// The summary table: (what, how many).
    pub figures: &'a [(&'a str, usize)],
    /// The label aggregation strategy, as it should be named in the text.
    pub aggregation: &'a str,
    /// Skipped rows: (file, reason, rows).
    pub skipped: &'a [(&'a str, &'a str, usize)],
    /// Image files nothing references, in the train and the test image folders.
    pub unreferenced: (usize, usize),
    /// The plots, as [`draw_plots`] returns them (file names relative to the page).
    pub plots: &'a [(String, String)],
    pub files: &'a [FileTable],
}

impl DatasetPage<'_> {
    /// The page: the summary, what was skipped or noticed, the plots, then per file its counts,
    /// first five rows and column summaries.
    pub fn to_page(&self) -> Page {
        let mut page = Page::new("imsearch: the dataset");
        page.paragraph(&format!("Dataset directory: {}", self.data_dir.display()));
        page.heading(2, "Summary");
        let rows: Vec<Vec<String>> = self.figures.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect();
        page.table(&["figure", "value"], &rows);
        page.paragraph(&format!(
            "Labels: the experts' majority grade g (given by at least 2 of 3) becomes (g-1)/3 and is blended with the \
             crowd's share of 'yes' votes as {}; a pair graded by one source only keeps that source's label \
             (a full outer join).",
            self.aggregation
        ));

        page.heading(2, "What was skipped or noticed");
        let skips: Vec<Vec<String>> = self
            .skipped
            .iter()
            .map(|(file, reason, n)| vec![file.to_string(), reason.to_string(), n.to_string()])
            .collect();
        if skips.is_empty() {
            page.paragraph("No row was skipped.");
        } else {
            page.table(&["file", "reason", "rows"], &skips);
        }
        page.paragraph(&format!(
            "Images on disk that no file references: {} in train_images/, {} in test_images/.",
            self.unreferenced.0, self.unreferenced.1
        ));

        page.heading(2, "Plots");
        for (file, caption) in self.plots {
            page.heading(3, caption);
            page.image(file, caption);
        }

        page.heading(2, "Files");
        for FileTable { table: t, rows_read } in self.files {
            page.heading(3, &t.name);
            let missing: Vec<String> = t.summaries().iter().map(|c| format!("{} {}", c.name, c.missing)).collect();
            page.paragraph(&format!(
                "{rows_read} rows read, {} kept; {} duplicate rows; missing values per column: {}.",
                t.rows.len(),
                t.duplicate_rows(),
                missing.join(", ")
            ));
            page.heading(4, "First rows");
            page.data_table(&t.head_table(5));
            page.heading(4, "Columns");
            page.data_table(&t.describe());
        }
        page
    }
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;

    fn table(name: &str, rows: &[[&str; 2]]) -> FileTable {
        let rows: Vec<Vec<String>> = rows.iter().map(|r| r.map(str::to_owned).to_vec()).collect();
        FileTable { table: Table::from_cells(name, &["image", "votes"], rows), rows_read: 7 }
    }

    #[test]
    fn page_shows_figures_skips_plots_and_files() {
        let files = [table("crowd.tsv", &[["a.jpg", "3"], ["a.jpg", "3"], ["b.jpg", "1"]])];
        let plots = [("labels.png".to_owned(), "Labels & sources".to_owned())];
        let page = DatasetPage {
            data_dir: Path::new("/data/set"),
            figures: &[("train rows", 9), ("test images", 3)],
            aggregation: "Blend { expert_weight: 0.7 }",
            skipped: &[("train.csv", "image missing on disk", 2)],
            unreferenced: (1, 0),
            plots: &plots,
            files: &files,
        };
        let html = page.to_page().to_html();
        for needle in [
            "<p>Dataset directory: /data/set</p>",
            "<tr><td>train rows</td><td>9</td></tr>",
            "as Blend { expert_weight: 0.7 };",
            "<tr><td>train.csv</td><td>image missing on disk</td><td>2</td></tr>",
            "1 in train_images/, 0 in test_images/.",
            "<h3>Labels &amp; sources</h3>\n<img src=\"labels.png\" alt=\"Labels &amp; sources\">",
            "<h3>crowd.tsv</h3>\n<p>7 rows read, 3 kept; 1 duplicate rows; missing values per column: image 0, votes 0.</p>",
        ] {
            assert!(html.contains(needle), "{needle}\n{html}");
        }
        assert!(!html.contains("No row was skipped."));
        let quiet = DatasetPage { skipped: &[], ..page }.to_page().to_html();
        assert!(quiet.contains("<p>No row was skipped.</p>") && !quiet.contains("<th>reason</th>"));
    }

    #[test]
    fn draws_every_plot_and_names_an_unreadable_sample() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.png");
        RgbImage::from_fn(40, 30, |x, y| Rgb([(x * 6) as u8, (y * 8) as u8, 90])).save(&photo).unwrap();
        let samples: Vec<(PathBuf, &str)> = (0..5).map(|_| (photo.clone(), "a caption")).collect();
        let plots = DatasetPlots {
            crowd_fractions: &[0.0, 0.25, 1.0],
            crowd_yes_votes: &[1, 1, 0, 1],
            crowd_no_votes: &[1, 0, 0, 2],
            expert_grades: &[[1, 2, 0, 0], [0, 3, 0, 0], [1, 1, 1, 0]],
            majority_grades: &[1, 2, 0, 0],
            labels: [&[0.0, 1.0], &[0.5], &[]],
            samples: &samples,
        };
        let made = draw_plots(dir.path(), &plots).unwrap();
        let files: Vec<&str> = made.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(files, ["crowd_fraction.png", "crowd_votes.png", "expert_grades.png", "labels.png", "samples.png"]);
        for file in files {
            assert!(image::open(dir.path().join(file)).unwrap().width() > 100, "{file}");
        }

        let missing = [(dir.path().join("gone.jpg"), "lost")];
        let err = draw_plots(dir.path(), &DatasetPlots { samples: &missing, ..plots }).unwrap_err();
        assert!(err.to_string().contains("gone.jpg"), "{err}");
    }
}
