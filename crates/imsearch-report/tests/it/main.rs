//! Integration tests of imsearch-report: every output kind is written to a temporary
//! directory and read back as a file a person would open.

use std::collections::HashSet;
use std::path::Path;

use image::{Rgb, RgbImage};
use imsearch_report::html::Page;
use imsearch_report::plot::{self, Series, PLOT_HEIGHT, PLOT_WIDTH};
use imsearch_report::sheet::{self, SheetOptions, SheetRow, Tile, CORRECT};

/// Decodes the PNG at `path`, checks its size and that it is not one flat colour.
#[track_caller]
fn check_png(path: &Path, width: u32, height: Option<u32>) -> RgbImage {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.width(), width, "{}", path.display());
    if let Some(h) = height {
        assert_eq!(img.height(), h, "{}", path.display());
    }
    let colours: HashSet<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    assert!(colours.len() > 10, "{} has {} colours", path.display(), colours.len());
    img
}

fn labels(n: usize, prefix: &str) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[test]
fn histogram_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hist.png");
    let values: Vec<f64> = (0..500).map(|i| ((i * 37) % 100) as f64 / 10.0).collect();
    plot::histogram(&path, "Caption length", "words", &values, 20, (0.0, 10.0)).unwrap();
    check_png(&path, PLOT_WIDTH, Some(PLOT_HEIGHT));
}

#[test]
fn empty_histogram_says_no_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    plot::histogram(&path, "Nothing", "x", &[], 10, (0.0, 1.0)).unwrap();
    check_png(&path, PLOT_WIDTH, Some(PLOT_HEIGHT));
}

#[test]
fn bar_charts_write_pngs_upright_and_horizontal() {
    let dir = tempfile::tempdir().unwrap();
    let few: Vec<(String, f64)> = labels(6, "c").into_iter().zip([3.0, 1.0, 4.0, 1.0, 5.0, 9.0]).collect();
    let path = dir.path().join("bars.png");
    plot::bar_chart(&path, "Few bars", "category", "count", &few).unwrap();
    check_png(&path, PLOT_WIDTH, Some(PLOT_HEIGHT));

    // Long labels do not fit under the bars: the chart lies down and grows taller.
    let many: Vec<(String, f64)> =
        labels(40, "a rather long label number ").into_iter().enumerate().map(|(i, l)| (l, (40 - i) as f64)).collect();
    let path = dir.path().join("hbars.png");
    plot::bar_chart(&path, "Many bars", "label", "count", &many).unwrap();
    let img = check_png(&path, PLOT_WIDTH, None);
    assert!(img.height() > PLOT_HEIGHT, "{}", img.height());

    let path = dir.path().join("no-bars.png");
    plot::bar_chart(&path, "No bars", "x", "y", &[]).unwrap();
    check_png(&path, PLOT_WIDTH, Some(PLOT_HEIGHT));
}

#[test]
fn grouped_bar_chart_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grouped.png");
    let series =
        [Series::new("confirmed", vec![10.0, 25.0, 12.0, 4.0]), Series::new("rejected", vec![30.0, 8.0, 2.0, 0.0])];
    plot::grouped_bar_chart(&path, "Votes", "votes", "pairs", &labels(4, ""), &series).unwrap();
    check_png(&path, PLOT_WIDTH, Some(PLOT_HEIGHT));
}

#[test]
fn sheet_writes_a_png_and_reports_bad_files() {
    let dir = tempfile::tempdir().unwrap();
    let photo = dir.path().join("photo.png");
    RgbImage::from_fn(64, 48, |x, y| Rgb([(x * 4) as u8, (y * 5) as u8, 128])).save(&photo).unwrap();
    let broken = dir.path().join("broken.jpg");
    std::fs::write(&broken, b"not an image").unwrap();
    assert!(Tile::load(&broken).unwrap_err().to_string().contains("broken.jpg"));

    let tile = |caption: &str| Tile::load(&photo).unwrap().with_caption(caption);
    let rows = vec![
        SheetRow::new(
            Some("a dog runs through the snow".to_owned()),
            vec![tile("0.91").with_outline(CORRECT), Tile::disclaimer().with_caption("0.88"), tile("0.52")],
        ),
        SheetRow::new(Some("two people".to_owned()), vec![tile("0.70")]),
    ];
    let options = SheetOptions { tile_size: 120, ..SheetOptions::default() };
    let path = dir.path().join("sheet.png");
    sheet::image_grid(&path, &rows, &options).unwrap();
    let gap = options.padding;
    check_png(&path, gap + 3 * (120 + gap), None);
}

#[test]
fn page_links_relative_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.html");
    let mut page = Page::new("EDA <test>");
    page.image("plots/hist.png", "histogram").paragraph("a & b");
    page.write(&path).unwrap();
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.contains("<img src=\"plots/hist.png\" alt=\"histogram\">"));
    assert!(html.contains("EDA &lt;test&gt;"));
}
