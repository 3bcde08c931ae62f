//! PNG charts drawn with plotters' bitmap backend and the embedded font: histograms, bar
//! charts and grouped (side-by-side) bar charts. Empty input gives a chart saying "no data".

use std::path::Path;

use image::{Rgb, RgbImage};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::describe::format_number;
use crate::fonts::{self, ellipsize, plot_font as font, TextFont};
use crate::{fsutil, Error, Result};

/// Width of every chart in pixels.
pub const PLOT_WIDTH: u32 = 960;
/// Height of a chart in pixels (horizontal bar charts with many bars grow taller).
pub const PLOT_HEIGHT: u32 = 560;

/// Bar colours, in series order (colour-blind friendly enough for two or three series).
const PALETTE: [RGBColor; 6] = [
    RGBColor(76, 114, 176),
    RGBColor(221, 132, 82),
    RGBColor(85, 168, 104),
    RGBColor(196, 78, 82),
    RGBColor(129, 114, 179),
    RGBColor(147, 120, 96),
];
const GRID: RGBColor = RGBColor(225, 225, 225);
const AXIS: RGBColor = RGBColor(90, 90, 90);
const MUTED: RGBColor = RGBColor(110, 110, 110);

const TITLE_SIZE: f64 = 24.0;
const DESC_SIZE: f64 = 17.0;
const LABEL_SIZE: f64 = 14.0;
const VALUE_SIZE: f64 = 12.0;

/// One named series of a grouped bar chart: one value per category.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub values: Vec<f64>,
}

impl Series {
    pub fn new(name: impl Into<String>, values: Vec<f64>) -> Self {
        Series { name: name.into(), values }
    }
}

type Root<'a> = DrawingArea<BitMapBackend<'a>, Shift>;
type DrawResult = std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Renders a `width` x `height` white canvas with `draw` and writes it to `path` as PNG.
fn render(path: &Path, (width, height): (u32, u32), draw: impl FnOnce(&Root<'_>) -> DrawResult) -> Result<()> {
    fonts::ensure_registered()?;
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    {
        let draw_err = |source| Error::Draw { path: path.to_owned(), source };
        // An `RgbImage` buffer is exactly `width * height * 3` bytes of RGB.
        let root = BitMapBackend::with_buffer(img.as_mut(), (width, height)).into_drawing_area();
        draw(&root).map_err(draw_err)?;
        root.present().map_err(|e| draw_err(Box::new(e)))?;
    }
    fsutil::write_png(path, &img)
}

fn invalid(path: &Path, reason: String) -> Error {
    Error::InvalidInput { path: path.to_owned(), reason }
}

/// Counts finite `values` into `bins` equal bins over `range`; the last bin includes its
/// right edge (like numpy). Returns the counts and how many values were left out (outside
/// the range or not finite).
fn bin_counts(values: &[f64], bins: usize, (lo, hi): (f64, f64)) -> (Vec<u64>, usize) {
    let mut counts = vec![0u64; bins];
    let mut skipped = 0;
    for &v in values {
        if !v.is_finite() || v < lo || v > hi {
            skipped += 1;
            continue;
        }
        let i = ((v - lo) / (hi - lo) * bins as f64) as usize;
        counts[i.min(bins - 1)] += 1;
    }
    (counts, skipped)
}

/// A histogram of `values` in `bins` equal bins over `range` (inclusive), y axis "count".
/// Values outside the range or not finite are left out and counted in a note on the chart.
/// Errors on `bins == 0` or a range that is not finite and increasing.
pub fn histogram(
    path: &Path,
    title: &str,
    x_label: &str,
    values: &[f64],
    bins: usize,
    range: (f64, f64),
) -> Result<()> {
    let (lo, hi) = range;
    if bins == 0 {
        return Err(invalid(path, "histogram needs at least one bin".to_owned()));
    }
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(invalid(path, format!("histogram range {lo}..{hi} is not finite and increasing")));
    }
    let (counts, skipped) = bin_counts(values, bins, range);
    let shown = values.len() - skipped;
    let max = counts.iter().copied().max().unwrap_or(0);
    let y_max = (max as f64 * 1.08).ceil().max(1.0) as u64;
    let bin_width = (hi - lo) / bins as f64;
    render(path, (PLOT_WIDTH, PLOT_HEIGHT), |root| {
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(TITLE_SIZE, true))
            .margin(18)
            .x_label_area_size(56)
            .y_label_area_size(76)
            .build_cartesian_2d(lo..hi, 0u64..y_max)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .bold_line_style(GRID)
            .light_line_style(TRANSPARENT)
            .axis_style(AXIS)
            .x_desc(x_label)
            .y_desc("count")
            .axis_desc_style(font(DESC_SIZE, false))
            .label_style(font(LABEL_SIZE, false))
            .x_label_formatter(&|v| format_number(*v))
            .draw()?;
        chart.draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x0 = lo + i as f64 * bin_width;
            Rectangle::new([(x0, 0), (x0 + bin_width, c)], PALETTE[0].filled())
        }))?;
        chart.draw_series(counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(i, &c)| {
            let x0 = lo + i as f64 * bin_width;
            Rectangle::new([(x0, 0), (x0 + bin_width, c)], WHITE.stroke_width(1))
        }))?;
        let area = chart.plotting_area();
        let (px, py) = area.get_pixel_range();
        if shown == 0 {
            draw_no_data(root, ((px.start + px.end) / 2, (py.start + py.end) / 2))?;
        }
        let mut note = format!("n = {shown}");
        if skipped > 0 {
            note.push_str(&format!(" ({skipped} outside range or not finite, not shown)"));
        }
        root.draw(&Text::new(
            note,
            (px.end - 6, py.start + 6),
            font(LABEL_SIZE, false).color(&MUTED).pos(Pos::new(HPos::Right, VPos::Top)),
        ))?;
        Ok(())
    })
}

/// A bar chart, one bar per `(label, value)` in order. Bars stand upright when their labels
/// fit under them and lie horizontally (labels on the left, first bar on top) otherwise.
/// Errors if a value is not finite.
pub fn bar_chart(path: &Path, title: &str, x_label: &str, y_label: &str, bars: &[(String, f64)]) -> Result<()> {
    let categories: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
    let series = [Series::new("", bars.iter().map(|(_, v)| *v).collect())];
    grouped_bar_chart(path, title, x_label, y_label, &categories, &series)
}

/// Side-by-side bars: for each category, one bar per series in series order, with a legend
/// when there is more than one series (e.g. "confirmed" and "rejected" votes per count).
/// Errors if a series does not have one value per category or a value is not finite.
pub fn grouped_bar_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    categories: &[String],
    series: &[Series],
) -> Result<()> {
    for s in series {
        if s.values.len() != categories.len() {
            return Err(invalid(
                path,
                format!("series {:?} has {} values for {} categories", s.name, s.values.len(), categories.len()),
            ));
        }
        if let Some(i) = s.values.iter().position(|v| !v.is_finite()) {
            return Err(invalid(
                path,
                format!("series {:?} has value {} for category {:?}", s.name, s.values[i], categories[i]),
            ));
        }
    }
    fonts::ensure_registered()?;
    let n = categories.len();
    if n == 0 || series.is_empty() {
        return render(path, (PLOT_WIDTH, PLOT_HEIGHT), |root| {
            root.fill(&WHITE)?;
            let body = root.margin(18, 18, 18, 18).titled(title, font(TITLE_SIZE, true))?;
            let (w, h) = body.dim_in_pixel();
            draw_no_data(&body, (w as i32 / 2, h as i32 / 2))
        });
    }

    let values = series.iter().flat_map(|s| s.values.iter().copied());
    let (vmin, vmax) = values.fold((0.0f64, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    // vmin <= 0 <= vmax, so this is "all values are zero".
    // Room beyond the longest bars for their value labels.
    let pad = 0.08 * (vmax - vmin);
    let (vmin, vmax) = if vmax <= vmin {
        (0.0, 1.0)
    } else {
        (if vmin < 0.0 { vmin - pad } else { 0.0 }, if vmax > 0.0 { vmax + pad } else { 0.0 })
    };

    let label_font = font(LABEL_SIZE, false);
    let label_measure = TextFont::new(LABEL_SIZE, false)?;
    let value_measure = TextFont::new(VALUE_SIZE, false)?;
    let widest = categories.iter().map(|c| label_measure.width(c)).max().unwrap_or(0);
    let slot = (PLOT_WIDTH - 130) / n as u32;
    let upright = widest + 8 <= slot;
    let k = series.len();
    let height = if upright { PLOT_HEIGHT } else { PLOT_HEIGHT.max(130 + n as u32 * (14 * k as u32).max(22)) };
    let label_room = (widest + 14).min(PLOT_WIDTH * 2 / 5);

    render(path, (PLOT_WIDTH, height), |root| {
        root.fill(&WHITE)?;
        let cats = (-0.5, n as f64 - 0.5);
        let mut builder = ChartBuilder::on(root);
        builder.caption(title, font(TITLE_SIZE, true)).margin(18);
        // Positions are in category units: category i spans i - 0.5 .. i + 0.5, bars take the
        // middle 80 %. Horizontal charts flip i so the first category is on top.
        let sub = 0.8 / k as f64;
        let bar = |i: usize, s: usize, v: f64| {
            let c0 = i as f64 - 0.4 + s as f64 * sub;
            (c0, c0 + sub, v)
        };
        let legend = k > 1;
        if upright {
            let mut chart =
                builder.x_label_area_size(62).y_label_area_size(80).build_cartesian_2d(cats.0..cats.1, vmin..vmax)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .bold_line_style(GRID)
                .light_line_style(TRANSPARENT)
                .axis_style(AXIS)
                .x_desc(x_label)
                .y_desc(y_label)
                .axis_desc_style(font(DESC_SIZE, false))
                .label_style(font(LABEL_SIZE, false))
                .y_label_formatter(&|v| format_number(*v))
                .draw()?;
            for (s, ser) in series.iter().enumerate() {
                let color = PALETTE[s % PALETTE.len()];
                let drawn = chart.draw_series(ser.values.iter().enumerate().map(|(i, &v)| {
                    let (c0, c1, v) = bar(i, s, v);
                    Rectangle::new([(c0, 0.0), (c1, v)], color.filled())
                }))?;
                if legend {
                    drawn
                        .label(ser.name.as_str())
                        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
                }
            }
            for (i, c) in categories.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(i as f64, vmin));
                root.draw(&Text::new(
                    c.as_str(),
                    (x, y + 8),
                    label_font.color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
                ))?;
            }
            // Value labels over bars wide enough to hold them.
            let (x0, _) = chart.backend_coord(&(0.0, 0.0));
            let (x1, _) = chart.backend_coord(&(sub, 0.0));
            let bar_px = (x1 - x0).unsigned_abs();
            let value_font = font(VALUE_SIZE, false);
            for (s, ser) in series.iter().enumerate() {
                for (i, &v) in ser.values.iter().enumerate() {
                    let text = format_number(v);
                    if value_measure.width(&text) + 2 > bar_px {
                        continue;
                    }
                    let (c0, c1, v) = bar(i, s, v);
                    let (x, y) = chart.backend_coord(&((c0 + c1) / 2.0, v));
                    let (vpos, dy) = if v >= 0.0 { (VPos::Bottom, -3) } else { (VPos::Top, 3) };
                    root.draw(&Text::new(
                        text,
                        (x, y + dy),
                        value_font.color(&MUTED).pos(Pos::new(HPos::Center, vpos)),
                    ))?;
                }
            }
            if legend {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::UpperRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(AXIS)
                    .label_font(font(LABEL_SIZE, false))
                    .draw()?;
            }
        } else {
            let mut chart = builder
                .x_label_area_size(56)
                .y_label_area_size(label_room + 34)
                .build_cartesian_2d(vmin..vmax, cats.0..cats.1)?;
            chart
                .configure_mesh()
                .disable_y_mesh()
                .y_labels(0)
                .bold_line_style(GRID)
                .light_line_style(TRANSPARENT)
                .axis_style(AXIS)
                .x_desc(y_label)
                .y_desc(x_label)
                .axis_desc_style(font(DESC_SIZE, false))
                .label_style(font(LABEL_SIZE, false))
                .x_label_formatter(&|v| format_number(*v))
                .draw()?;
            let flip = |i: usize| n - 1 - i;
            for (s, ser) in series.iter().enumerate() {
                let color = PALETTE[s % PALETTE.len()];
                // Within a category the first series is on top too.
                let drawn = chart.draw_series(ser.values.iter().enumerate().map(|(i, &v)| {
                    let (c0, c1, v) = bar(flip(i), k - 1 - s, v);
                    Rectangle::new([(0.0, c0), (v, c1)], color.filled())
                }))?;
                if legend {
                    drawn
                        .label(ser.name.as_str())
                        .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
                }
            }
            for (i, c) in categories.iter().enumerate() {
                let (x, y) = chart.backend_coord(&(vmin, flip(i) as f64));
                root.draw(&Text::new(
                    ellipsize(c, &label_measure, label_room - 14),
                    (x - 8, y),
                    label_font.color(&BLACK).pos(Pos::new(HPos::Right, VPos::Center)),
                ))?;
            }
            if legend {
                chart
                    .configure_series_labels()
                    .position(SeriesLabelPosition::LowerRight)
                    .background_style(WHITE.mix(0.85))
                    .border_style(AXIS)
                    .label_font(font(LABEL_SIZE, false))
                    .draw()?;
            }
        }
        Ok(())
    })
}

/// Writes "no data" centred at `center` (pixels in `area`).
fn draw_no_data(area: &Root<'_>, center: (i32, i32)) -> DrawResult {
    area.draw(&Text::new(
        "no data",
        center,
        font(28.0, false).color(&MUTED).pos(Pos::new(HPos::Center, VPos::Center)),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_include_both_ends_and_skip_outside_values() {
        let values = [0.0, 0.5, 0.99, 1.0, 2.0, 3.999, 4.0, -0.1, 4.1, f64::NAN];
        let (counts, skipped) = bin_counts(&values, 4, (0.0, 4.0));
        assert_eq!(counts, vec![3, 1, 1, 2]);
        assert_eq!(skipped, 3);
        assert_eq!(bin_counts(&[], 3, (0.0, 1.0)), (vec![0, 0, 0], 0));
    }

    #[test]
    fn invalid_histogram_arguments_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.png");
        for (bins, range) in [(0, (0.0, 1.0)), (3, (1.0, 1.0)), (3, (0.0, f64::NAN))] {
            let err = histogram(&path, "t", "x", &[0.5], bins, range).unwrap_err();
            assert!(matches!(err, Error::InvalidInput { .. }), "{err}");
        }
        assert!(!path.exists());
    }

    #[test]
    fn invalid_bar_arguments_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.png");
        let err = bar_chart(&path, "t", "x", "y", &[("a".to_owned(), f64::NAN)]).unwrap_err();
        assert!(err.to_string().contains("NaN"), "{err}");
        let cats = vec!["a".to_owned(), "b".to_owned()];
        let err = grouped_bar_chart(&path, "t", "x", "y", &cats, &[Series::new("s", vec![1.0])]).unwrap_err();
        assert!(err.to_string().contains("1 values for 2 categories"), "{err}");
    }
}
