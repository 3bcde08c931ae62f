//! Renders one sample of every output kind into a directory, to look at them:
//! `cargo run -p imsearch-report --example gallery -- /tmp/imsearch-report-gallery`.

use std::path::PathBuf;

use image::{Rgb, RgbImage};
use imsearch_report::describe::Table;
use imsearch_report::html::Page;
use imsearch_report::plot::{self, Series};
use imsearch_report::sheet::{self, SheetOptions, SheetRow, Tile, CORRECT};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "gallery".to_owned()));
    std::fs::create_dir_all(&dir)?;

    // Deterministic, roughly bell-shaped values.
    let values: Vec<f64> = (0..2000u64)
        .map(|i| {
            let u = |k: u64| ((i * 2_654_435_761 + k * 40_503) % 1000) as f64 / 1000.0;
            (u(1) + u(2) + u(3) + u(4)) * 5.0
        })
        .collect();
    plot::histogram(&dir.join("histogram.png"), "Caption length", "words per caption", &values, 25, (0.0, 20.0))?;
    plot::histogram(&dir.join("histogram-empty.png"), "Caption length", "words", &[], 10, (0.0, 1.0))?;

    let bars: Vec<(String, f64)> = ["dog", "man", "woman", "two", "people", "white", "black", "water"]
        .iter()
        .zip([812.0, 640.0, 402.0, 350.0, 333.0, 290.0, 281.0, 197.5])
        .map(|(w, n)| ((*w).to_owned(), n))
        .collect();
    plot::bar_chart(&dir.join("bars.png"), "Most frequent words", "word", "count", &bars)?;
    let long: Vec<(String, f64)> =
        (0..30).map(|i| (format!("a fairly long caption number {i} of the dataset"), (30 - i) as f64 * 1.5)).collect();
    plot::bar_chart(&dir.join("bars-horizontal.png"), "Longest captions", "caption", "words", &long)?;
    let cats: Vec<String> = (0..6).map(|i| i.to_string()).collect();
    let series = [
        Series::new("confirmed", vec![120.0, 340.0, 210.0, 96.0, 40.0, 12.0]),
        Series::new("rejected", vec![400.0, 180.0, 60.0, 20.0, 6.0, 1.0]),
    ];
    plot::grouped_bar_chart(&dir.join("grouped.png"), "Expert votes per pair", "votes", "pairs", &cats, &series)?;
    let deltas: Vec<(String, f64)> = [("R@1", 0.042), ("R@5", -0.013), ("R@10", 0.0), ("MRR", 0.021)]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), *v))
        .collect();
    plot::bar_chart(&dir.join("bars-negative.png"), "Change against baseline", "metric", "delta", &deltas)?;
    plot::bar_chart(&dir.join("bars-empty.png"), "Nothing here", "x", "y", &[])?;

    let photo = |seed: u32, w: u32, h: u32| {
        RgbImage::from_fn(w, h, |x, y| {
            Rgb([((x * 255) / w) as u8, ((y * 255) / h) as u8, ((seed * 70 + (x ^ y)) % 256) as u8])
        })
    };
    let rows = vec![
        SheetRow::new(
            Some("A black dog and a spotted dog are fighting".to_owned()),
            vec![
                Tile::image(photo(1, 500, 375)).with_caption("#1 0.312").with_outline(CORRECT),
                Tile::disclaimer().with_caption("#2 0.298"),
                Tile::image(photo(2, 375, 500)).with_caption("#3 0.287 a caption long enough that it has to be wrapped and then cut with an ellipsis"),
                Tile::image(photo(3, 300, 300)).with_caption("#4 0.250"),
            ],
        ),
        SheetRow::new(
            Some("A little girl covered in paint sits in front of a painted rainbow with her hands in a bowl, a very long query that wraps onto a second line".to_owned()),
            vec![
                Tile::disclaimer().with_caption("#1 0.401").with_outline(CORRECT),
                Tile::image(photo(4, 640, 200)).with_caption("#2 0.390"),
            ],
        ),
    ];
    sheet::image_grid(&dir.join("sheet.png"), &rows, &SheetOptions::default())?;

    let mut table = Table::new("captions", vec!["image".into(), "caption".into(), "votes".into()]);
    for (i, c) in ["a dog <runs>", "two people & a cat", "a dog <runs>"].iter().enumerate() {
        table.rows.push(vec![Some(format!("{i}.jpg")), Some((*c).to_owned()), (i != 1).then(|| i.to_string())]);
    }
    let mut page = Page::new("Gallery");
    page.heading(2, "Describe")
        .data_table(&table.describe())
        .preformatted(&table.head_table(5).to_text(40))
        .paragraph(&format!("{} duplicate rows", table.duplicate_rows()))
        .heading(2, "Plots")
        .image("histogram.png", "histogram")
        .image("bars.png", "bar chart")
        .image("grouped.png", "grouped bar chart")
        .image("sheet.png", "contact sheet");
    page.write(&dir.join("index.html"))?;
    println!("wrote {}", dir.display());
    Ok(())
}
