//! Ranked results of labelled queries (each written for one image, its "correct" image) as a
//! person looks at them: a contact sheet with one row per query, one PNG per row, and an HTML
//! page with each row, a table of its results and a metrics table; the same rows as text.
//!
//! The caller ranks and applies its policies; this module only shows what it is given. A query
//! its policy blocks shows the disclaimer and no images; a result it blocks is a disclaimer tile
//! that keeps its rank and score. A blocked result ([`Shown::Blocked`]) carries no path, so its
//! file cannot be opened here.

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
};

use crate::{
    html::Page,
    sheet::{self, SheetOptions, SheetRow, Tile, CORRECT},
    Error, Result,
};

/// What a result shows.
#[derive(Debug, Clone, PartialEq)]
pub enum Shown {
    /// The image `id`, drawn from the file at `path`.
    Image { id: String, path: PathBuf },
    /// Blocked by a policy: the disclaimer in its place.
    Blocked,
}

/// One ranked result.
#[derive(Debug, Clone, PartialEq)]
pub struct RankedImage {
    /// 1-based rank among every candidate image.
    pub rank: usize,
    pub score: f32,
    pub shown: Shown,
    /// The image the query was written for.
    pub correct: bool,
}

/// What a query got.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The query was blocked (`reason` says why): the disclaimer, no images.
    Blocked { reason: String },
    Ranked {
        /// The top results, best first.
        top: Vec<RankedImage>,
        /// The correct image when it ranked below `top`, shown after it.
        correct_below: Option<RankedImage>,
        /// The correct image's rank; `None` when it was not among the candidates.
        correct_rank: Option<usize>,
    },
}

/// One query and what it got.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResults {
    /// The query's id, e.g. `2000_park.jpg#1`.
    pub id: String,
    pub text: String,
    pub outcome: Outcome,
}

impl QueryResults {
    /// The line above the query's row: `n`, the text, and why it was blocked or where the
    /// correct image ranked and how many of the row's images a policy hides (so that a grey row
    /// explains itself).
    pub fn heading(&self, n: usize) -> String {
        let text = self.text.trim();
        match &self.outcome {
            Outcome::Blocked { reason } => format!("{n}. \u{201c}{text}\u{201d}  (blocked: {reason})"),
            Outcome::Ranked { correct_rank, .. } => {
                let rank = correct_rank.map_or("has no embedding".to_owned(), |r| format!("rank {r}"));
                let (shown, hidden) =
                    self.shown().fold((0, 0), |(n, h), r| (n + 1, h + usize::from(r.shown == Shown::Blocked)));
                let hidden =
                    if hidden > 0 { format!("; {hidden} of {shown} images unavailable") } else { String::new() };
                format!("{n}. \u{201c}{text}\u{201d}  (correct image: {rank}{hidden})")
            }
        }
    }

    /// The results drawn in the query's row: the top ones, then the correct one below them.
    pub fn shown(&self) -> impl Iterator<Item = &RankedImage> {
        let (top, below): (&[RankedImage], _) = match &self.outcome {
            Outcome::Blocked { .. } => (&[], None),
            Outcome::Ranked { top, correct_below, .. } => (top, correct_below.as_ref()),
        };
        top.iter().chain(below)
    }

    /// The heading, the id and one line per shown result (the disclaimer for a blocked one),
    /// each line ending in a newline.
    pub fn to_text(&self, n: usize, disclaimer: &str) -> String {
        let mut out = format!("{}  [{}]\n", self.heading(n), self.id);
        if let Outcome::Blocked { .. } = self.outcome {
            let _ = writeln!(out, "     {disclaimer}");
        }
        for r in self.shown() {
            let mark = if r.correct { "  <- correct" } else { "" };
            let _ = writeln!(out, "    #{:<3} {:.3}  {}{mark}", r.rank, r.score, label(r, disclaimer));
        }
        out
    }

    /// The tiles of the query's row; images are decoded here, blocked results never opened.
    fn tiles(&self, disclaimer: &str, on_tile: &mut dyn FnMut()) -> Vec<Tile> {
        let Outcome::Ranked { top, correct_below, .. } = &self.outcome else {
            return vec![Tile::disclaimer_with(disclaimer).with_caption("query blocked: no results")];
        };
        let below = correct_below.iter().map(|r| (r, true));
        let mut tiles = Vec::new();
        for (r, is_below) in top.iter().map(|r| (r, false)).chain(below) {
            let tile = match &r.shown {
                Shown::Blocked => Tile::disclaimer_with(disclaimer),
                Shown::Image { path, .. } => Tile::load(path)
                    .unwrap_or_else(|e| Tile::disclaimer_with(format!("could not read this image: {e}"))),
            };
            on_tile();
            let caption = match (r.correct, is_below) {
                (true, false) => format!("#{} \u{b7} {:.3} \u{b7} correct", r.rank, r.score),
                (true, true) => format!("correct: #{} \u{b7} {:.3}", r.rank, r.score),
                (false, _) => format!("#{} \u{b7} {:.3}", r.rank, r.score),
            };
            let tile = tile.with_caption(caption);
            tiles.push(if r.correct { tile.with_outline(CORRECT) } else { tile });
        }
        tiles
    }
}

/// The image id, or the disclaimer for a blocked result.
fn label<'a>(r: &'a RankedImage, disclaimer: &'a str) -> &'a str {
    match &r.shown {
        Shown::Image { id, .. } => id,
        Shown::Blocked => disclaimer,
    }
}

/// One line about `queries`: how many were blocked, how many found their correct image in the
/// top `top`, how many results were replaced by the disclaimer.
pub fn summary(queries: &[QueryResults], top: usize) -> String {
    let blocked_queries = queries.iter().filter(|q| matches!(q.outcome, Outcome::Blocked { .. })).count();
    let (mut hit, mut tiles_blocked, mut ranked) = (0, 0, 0);
    for q in queries {
        if let Outcome::Ranked { top, .. } = &q.outcome {
            ranked += 1;
            hit += usize::from(top.iter().any(|r| r.correct));
            tiles_blocked += q.shown().filter(|r| r.shown == Shown::Blocked).count();
        }
    }
    format!(
        "{} drawn: {blocked_queries} blocked by the text policy; correct image in the top {top} for {hit} of {ranked}; \
         {tiles_blocked} images replaced by the disclaimer",
        queries.len()
    )
}

/// A table of figures: a header and rows of text cells, the first column naming the row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsTable {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl MetricsTable {
    /// The table as indented text: the first column left-aligned, the others right-aligned in
    /// 11 characters; every line ends in a newline.
    pub fn to_text(&self) -> String {
        let first = |r: &[String]| r.first().cloned().unwrap_or_default();
        let width = self.rows.iter().map(|r| first(r).len()).max().unwrap_or(5).max(5);
        let mut out = String::new();
        for r in std::iter::once(&self.header).chain(&self.rows) {
            let cells: Vec<String> = r.iter().skip(1).map(|c| format!("{c:>11}")).collect();
            let _ = writeln!(out, "  {:<width$} {}", first(r), cells.join(" "));
        }
        out
    }
}

/// What [`render_sheet_and_page`] draws.
#[derive(Debug, Clone)]
pub struct ResultsPage<'a> {
    /// The page's title and first heading.
    pub title: String,
    /// The paragraph under the title: what the rows show.
    pub intro: String,
    /// Shown for a blocked query and in place of every blocked result.
    pub disclaimer: &'a str,
    pub queries: &'a [QueryResults],
    /// The paragraph under the "Metrics" heading (where the figures come from, or why there are none).
    pub metrics_note: String,
    pub metrics: Option<MetricsTable>,
}

/// Progress of [`render_sheet_and_page`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// One more result tile was drawn (there are `shown().count()` per query).
    TileDrawn,
    /// Every tile is drawn; the files are being written.
    Writing,
}

/// The files [`render_sheet_and_page`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// `demo.png`: every query's row with its heading.
    pub sheet: PathBuf,
    /// `index.html`, which shows `rows/query-NN.png`.
    pub page: PathBuf,
}

/// Writes into the folder `out` (which must exist) the contact sheet `demo.png`, one PNG per
/// query `rows/query-NN.png` (removing the `query-*.png` an earlier run left there) and the page
/// `index.html`, which shows each query's heading, its id, its row and a table of its results
/// (rank, score, image or disclaimer, correct mark), then the metrics.
pub fn render_sheet_and_page(
    out: &Path,
    page: &ResultsPage<'_>,
    on_progress: &mut dyn FnMut(Progress),
) -> Result<Rendered> {
    let rows: Vec<Vec<Tile>> =
        page.queries.iter().map(|q| q.tiles(page.disclaimer, &mut || on_progress(Progress::TileDrawn))).collect();
    on_progress(Progress::Writing);

    let options = SheetOptions::default();
    let sheet_rows: Vec<SheetRow> = page
        .queries
        .iter()
        .zip(&rows)
        .enumerate()
        .map(|(i, (q, tiles))| SheetRow::new(Some(q.heading(i + 1)), tiles.clone()))
        .collect();
    let sheet_path = out.join("demo.png");
    sheet::image_grid(&sheet_path, &sheet_rows, &options)?;

    let row_dir = out.join("rows");
    fs::create_dir_all(&row_dir).map_err(|source| Error::CreateDir { path: row_dir.clone(), source })?;
    remove_stale_rows(&row_dir)?;

    let mut html = Page::new(&page.title);
    html.paragraph(&page.intro);
    for (i, (q, tiles)) in page.queries.iter().zip(rows).enumerate() {
        let file = format!("query-{:02}.png", i + 1);
        sheet::image_grid(&row_dir.join(&file), &[SheetRow::new(None, tiles)], &options)?;
        html.heading(3, &q.heading(i + 1));
        html.paragraph(&format!("test query {}", q.id));
        html.image(&format!("rows/{file}"), &format!("results for query {}", i + 1));
        match &q.outcome {
            Outcome::Blocked { .. } => {
                html.paragraph(page.disclaimer);
            }
            Outcome::Ranked { .. } => {
                let table: Vec<[String; 4]> = q
                    .shown()
                    .map(|r| {
                        let correct = if r.correct { "correct" } else { "" };
                        [
                            r.rank.to_string(),
                            format!("{:.3}", r.score),
                            label(r, page.disclaimer).into(),
                            correct.into(),
                        ]
                    })
                    .collect();
                let table: Vec<Vec<String>> = table.into_iter().map(Vec::from).collect();
                html.table(&["rank", "score", "image", "correct image?"], &table);
            }
        }
    }
    html.heading(2, "Metrics");
    html.paragraph(&page.metrics_note);
    if let Some(m) = &page.metrics {
        html.table(&m.header, &m.rows);
    }
    let page_path = out.join("index.html");
    html.write(&page_path)?;
    Ok(Rendered { sheet: sheet_path, page: page_path })
}

/// Removes the `query-*.png` files in `dir`: rows of an earlier run with more queries.
fn remove_stale_rows(dir: &Path) -> Result<()> {
    let read_err = |source| Error::Read { path: dir.to_owned(), source };
    for entry in fs::read_dir(dir).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with("query-") && name.ends_with(".png") {
            fs::remove_file(&path).map_err(|source| Error::Remove { path: path.clone(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use image::{Rgb, RgbImage};

    use super::*;

    const DISCLAIMER: &str = "Not shown here";
    const RED: [u8; 3] = [250, 0, 0];
    const GREY: [u8; 3] = [112, 112, 112];

    fn ranked(rank: usize, shown: Shown, correct: bool) -> RankedImage {
        RankedImage { rank, score: 1.0 / rank as f32, shown, correct }
    }

    fn image(id: &str, path: &Path) -> Shown {
        Shown::Image { id: id.to_owned(), path: path.to_owned() }
    }

    /// Three queries: one blocked, one with its correct image first and a blocked second result,
    /// one whose correct image ranked 9th and is shown after a blocked top result.
    fn queries(red: &Path) -> Vec<QueryResults> {
        vec![
            QueryResults {
                id: "a.jpg#0".into(),
                text: "  a child & a <dog> ".into(),
                outcome: Outcome::Blocked { reason: "names a child".into() },
            },
            QueryResults {
                id: "b.jpg#1".into(),
                text: "a red square".into(),
                outcome: Outcome::Ranked {
                    top: vec![ranked(1, image("b.jpg", red), true), ranked(2, Shown::Blocked, false)],
                    correct_below: None,
                    correct_rank: Some(1),
                },
            },
            QueryResults {
                id: "c.jpg#2".into(),
                text: "grey".into(),
                outcome: Outcome::Ranked {
                    top: vec![ranked(1, Shown::Blocked, false)],
                    correct_below: Some(ranked(9, Shown::Blocked, true)),
                    correct_rank: Some(9),
                },
            },
        ]
    }

    fn colours(path: &Path) -> HashSet<[u8; 3]> {
        image::open(path).unwrap().to_rgb8().pixels().map(|p| p.0).collect()
    }

    #[test]
    fn headings_text_and_summary() {
        let q = queries(Path::new("red.png"));
        assert_eq!(q[0].heading(1), "1. \u{201c}a child & a <dog>\u{201d}  (blocked: names a child)");
        assert_eq!(q[2].heading(3), "3. \u{201c}grey\u{201d}  (correct image: rank 9; 2 of 2 images unavailable)");
        assert_eq!(
            q[1].heading(2),
            "2. \u{201c}a red square\u{201d}  (correct image: rank 1; 1 of 2 images unavailable)"
        );
        let none = QueryResults {
            outcome: Outcome::Ranked { top: vec![], correct_below: None, correct_rank: None },
            ..q[2].clone()
        };
        assert_eq!(none.heading(4), "4. \u{201c}grey\u{201d}  (correct image: has no embedding)");
        assert_eq!(q[0].to_text(1, DISCLAIMER), format!("{}  [a.jpg#0]\n     {DISCLAIMER}\n", q[0].heading(1)));
        assert_eq!(
            q[1].to_text(2, DISCLAIMER),
            format!(
                "{}  [b.jpg#1]\n    #1   1.000  b.jpg  <- correct\n    #2   0.500  {DISCLAIMER}\n",
                q[1].heading(2)
            )
        );
        assert_eq!(q[2].shown().map(|r| r.rank).collect::<Vec<_>>(), [1, 9]);
        assert_eq!(
            summary(&q, 5),
            "3 drawn: 1 blocked by the text policy; correct image in the top 5 for 1 of 2; \
             3 images replaced by the disclaimer"
        );
    }

    #[test]
    fn metrics_table_as_text() {
        let table = MetricsTable {
            header: vec!["model".into(), "val MRR".into()],
            rows: vec![vec!["fusion-long".into(), "0.500".into()], vec!["x".into(), "-".into()]],
        };
        assert_eq!(
            table.to_text(),
            "  model           val MRR\n  fusion-long       0.500\n  x                     -\n"
        );
    }

    #[test]
    fn sheet_rows_and_page_show_blocked_results_as_the_disclaimer() {
        let dir = tempfile::tempdir().unwrap();
        let red = dir.path().join("red.png");
        RgbImage::from_pixel(40, 30, Rgb(RED)).save(&red).unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(out.join("rows")).unwrap();
        fs::write(out.join("rows/query-09.png"), "stale").unwrap();
        fs::write(out.join("rows/notes.txt"), "kept").unwrap();

        let queries = queries(&red);
        let page = ResultsPage {
            title: "Results <3>".into(),
            intro: "What the rows show.".into(),
            disclaimer: DISCLAIMER,
            queries: &queries,
            metrics_note: "From metrics.json.".into(),
            metrics: Some(MetricsTable { header: vec!["model".into()], rows: vec![vec!["fusion".into()]] }),
        };
        let mut events = Vec::new();
        let rendered = render_sheet_and_page(&out, &page, &mut |e| events.push(e)).unwrap();
        assert_eq!(rendered, Rendered { sheet: out.join("demo.png"), page: out.join("index.html") });
        // Four result tiles (the blocked query has none), then the writing.
        assert_eq!(events, [[Progress::TileDrawn; 4].as_slice(), &[Progress::Writing]].concat());

        let mut rows: Vec<String> =
            fs::read_dir(out.join("rows")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        rows.sort();
        assert_eq!(rows, ["notes.txt", "query-01.png", "query-02.png", "query-03.png"]);
        // The allowed image is drawn; rows of blocked results show the grey disclaimer only.
        assert!(colours(&out.join("rows/query-02.png")).contains(&RED));
        for row in ["rows/query-01.png", "rows/query-03.png", "demo.png"] {
            let c = colours(&out.join(row));
            assert!(c.contains(&GREY), "{row}");
            assert_eq!(c.contains(&RED), row == "demo.png", "{row}");
        }

        let html = fs::read_to_string(&rendered.page).unwrap();
        assert!(html.contains("<title>Results &lt;3&gt;</title>"));
        for (i, q) in queries.iter().enumerate() {
            let heading = format!("<h3>{}</h3>", crate::html::escape(&q.heading(i + 1)));
            assert!(html.contains(&heading), "{heading}");
            assert!(html.contains(&format!("<img src=\"rows/query-0{}.png\"", i + 1)));
        }
        assert!(html.contains(&format!("<p>{DISCLAIMER}</p>")), "the blocked query's disclaimer");
        assert!(html.contains(&format!("<tr><td>2</td><td>0.500</td><td>{DISCLAIMER}</td><td></td></tr>")));
        assert!(html.contains(&format!("<tr><td>9</td><td>0.111</td><td>{DISCLAIMER}</td><td>correct</td></tr>")));
        assert!(html.contains("<tr><td>1</td><td>1.000</td><td>b.jpg</td><td>correct</td></tr>"));
        assert!(!html.contains("red.png"), "no image file is linked from the page");
        assert_eq!(html.matches("<img ").count(), 3);
        assert!(html.contains("<h2>Metrics</h2>\n<p>From metrics.json.</p>\n<table>"));
    }

    #[test]
    fn an_unreadable_image_becomes_a_disclaimer_tile() {
        let dir = tempfile::tempdir().unwrap();
        let queries = [QueryResults {
            id: "x#0".into(),
            text: "x".into(),
            outcome: Outcome::Ranked {
                top: vec![ranked(1, image("x.jpg", &dir.path().join("missing.jpg")), false)],
                correct_below: None,
                correct_rank: None,
            },
        }];
        let page = ResultsPage {
            title: "t".into(),
            intro: String::new(),
            disclaimer: DISCLAIMER,
            queries: &queries,
            metrics_note: "none".into(),
            metrics: None,
        };
        let rendered = render_sheet_and_page(dir.path(), &page, &mut |_| {}).unwrap();
        assert!(colours(&dir.path().join("rows/query-01.png")).contains(&GREY));
        let html = fs::read_to_string(rendered.page).unwrap();
        assert!(html.contains("<td>x.jpg</td>") && !html.contains("<table>\n<thead><tr><th>model"));
    }
}
