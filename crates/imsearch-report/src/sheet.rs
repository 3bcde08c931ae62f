//! Contact sheets: rows of square tiles drawn into one RGB PNG. A tile is an image scaled to
//! fit (aspect ratio kept) or a grey disclaimer tile with wrapped text; it may be outlined in a
//! colour (the correct result) and carry a wrapped caption below. Each row may have a heading
//! line above it (the query text).

use std::path::Path;

use image::imageops::{self, FilterType};
use image::{ImageReader, Rgb, RgbImage};

use crate::fonts::{wrap_lines, TextFont};
use crate::{fsutil, Error, Result};

/// The text of a disclaimer tile shown in place of a blocked image.
pub const DISCLAIMER: &str = "This image is unavailable in your country in compliance with local laws";

/// Outline colour for the correct image of a row.
pub const CORRECT: Rgb<u8> = Rgb([0, 158, 115]);
/// Outline colour for a highlighted wrong image.
pub const WRONG: Rgb<u8> = Rgb([213, 94, 0]);

/// What a tile shows.
#[derive(Clone)]
pub enum TileContent {
    /// A decoded image, scaled to fit the tile.
    Image(RgbImage),
    /// A grey tile with this text wrapped inside it (e.g. [`DISCLAIMER`]).
    Disclaimer(String),
}

/// Shows an image's size rather than its pixels.
impl std::fmt::Debug for TileContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TileContent::Image(img) => write!(f, "Image({}x{})", img.width(), img.height()),
            TileContent::Disclaimer(text) => f.debug_tuple("Disclaimer").field(text).finish(),
        }
    }
}

/// One cell of a sheet.
#[derive(Debug, Clone)]
pub struct Tile {
    pub content: TileContent,
    /// Wrapped under the tile, up to [`SheetOptions::caption_lines`] lines.
    pub caption: Option<String>,
    /// Colour of a frame drawn around the tile.
    pub outline: Option<Rgb<u8>>,
}

impl Tile {
    /// A tile showing `image`.
    pub fn image(image: RgbImage) -> Self {
        Tile { content: TileContent::Image(image), caption: None, outline: None }
    }

    /// A tile showing the image file at `path`; see [`load_image`].
    pub fn load(path: &Path) -> Result<Self> {
        load_image(path).map(Tile::image)
    }

    /// A grey tile with the standard [`DISCLAIMER`] text.
    pub fn disclaimer() -> Self {
        Tile::disclaimer_with(DISCLAIMER)
    }

    /// A grey tile with custom text.
    pub fn disclaimer_with(text: impl Into<String>) -> Self {
        Tile { content: TileContent::Disclaimer(text.into()), caption: None, outline: None }
    }

    /// Sets the caption drawn under the tile.
    pub fn with_caption(mut self, caption: impl Into<String>) -> Self {
        self.caption = Some(caption.into());
        self
    }

    /// Sets the outline colour, e.g. [`CORRECT`].
    pub fn with_outline(mut self, color: Rgb<u8>) -> Self {
        self.outline = Some(color);
        self
    }
}

/// One row of a sheet: an optional heading above a line of tiles.
#[derive(Debug, Clone, Default)]
pub struct SheetRow {
    pub heading: Option<String>,
    pub tiles: Vec<Tile>,
}

impl SheetRow {
    pub fn new(heading: Option<String>, tiles: Vec<Tile>) -> Self {
        SheetRow { heading, tiles }
    }
}

/// Layout and colours of a sheet. All sizes are in pixels.
#[derive(Debug, Clone)]
pub struct SheetOptions {
    /// Side of the square each tile's picture is fitted into.
    pub tile_size: u32,
    /// Space around and between tiles (at least `outline_width + 2` is used).
    pub padding: u32,
    /// Width of the outline frame, drawn outside the tile.
    pub outline_width: u32,
    /// Caption lines kept under a tile; longer captions end with `…`.
    pub caption_lines: usize,
    /// Heading lines kept above a row.
    pub heading_lines: usize,
    pub caption_font_size: f64,
    pub heading_font_size: f64,
    pub background: Rgb<u8>,
    pub text_color: Rgb<u8>,
    pub disclaimer_background: Rgb<u8>,
    pub disclaimer_text_color: Rgb<u8>,
}

impl Default for SheetOptions {
    fn default() -> Self {
        SheetOptions {
            tile_size: 224,
            padding: 14,
            outline_width: 5,
            caption_lines: 2,
            heading_lines: 2,
            caption_font_size: 15.0,
            heading_font_size: 19.0,
            background: Rgb([255, 255, 255]),
            text_color: Rgb([30, 30, 30]),
            disclaimer_background: Rgb([112, 112, 112]),
            disclaimer_text_color: Rgb([255, 255, 255]),
        }
    }
}

/// Decodes the image file at `path` (JPEG or PNG, format guessed from the content) into RGB.
/// A missing or unreadable file is [`Error::Read`], a corrupt one [`Error::Decode`]; both name
/// the path.
pub fn load_image(path: &Path) -> Result<RgbImage> {
    let read_err = |source| Error::Read { path: path.to_owned(), source };
    let decode_err = |source| Error::Decode { path: path.to_owned(), source };
    let reader = ImageReader::open(path).map_err(read_err)?.with_guessed_format().map_err(read_err)?;
    Ok(reader.decode().map_err(decode_err)?.to_rgb8())
}

/// Draws `rows` as a sheet and writes it to `path` as an RGB PNG; see [`render_grid`].
pub fn image_grid(path: &Path, rows: &[SheetRow], options: &SheetOptions) -> Result<()> {
    let img = render_grid(rows, options)?;
    fsutil::write_png(path, &img)
}

/// Line height for text of `size` pixels.
fn line_height(size: f64) -> u32 {
    (size * 1.3).ceil() as u32
}

/// Draws `rows` as a sheet in memory. The sheet is as wide as the longest row; shorter rows
/// leave the rest blank. No rows (or only empty rows) still give a valid image, one tile wide.
pub fn render_grid(rows: &[SheetRow], options: &SheetOptions) -> Result<RgbImage> {
    let o = options;
    let tile = o.tile_size.max(16);
    let gap = o.padding.max(o.outline_width + 2);
    let columns = rows.iter().map(|r| r.tiles.len()).max().unwrap_or(0).max(1) as u32;
    let width = gap + columns * (tile + gap);
    let inner = width - 2 * gap;

    let heading_font = TextFont::new(o.heading_font_size, true)?;
    let caption_font = TextFont::new(o.caption_font_size, false)?;
    let heading_lh = line_height(o.heading_font_size);
    let caption_lh = line_height(o.caption_font_size);

    // Layout first (heights depend on wrapped headings and captions), then draw.
    struct RowLayout {
        heading: Vec<String>,
        captions: Vec<Vec<String>>,
        caption_height: u32,
    }
    let layouts: Vec<RowLayout> = rows
        .iter()
        .map(|row| {
            let heading = row
                .heading
                .as_deref()
                .map(|h| wrap_lines(h, &heading_font, inner, o.heading_lines))
                .unwrap_or_default();
            let captions: Vec<Vec<String>> = row
                .tiles
                .iter()
                .map(|t| {
                    t.caption
                        .as_deref()
                        .map(|c| wrap_lines(c, &caption_font, tile, o.caption_lines))
                        .unwrap_or_default()
                })
                .collect();
            let lines = captions.iter().map(Vec::len).max().unwrap_or(0) as u32;
            RowLayout { heading, captions, caption_height: lines * caption_lh }
        })
        .collect();

    let heading_height = |l: &RowLayout| {
        if l.heading.is_empty() {
            0
        } else {
            l.heading.len() as u32 * heading_lh + 6 + o.outline_width
        }
    };
    let row_height = |l: &RowLayout| {
        let captions = if l.caption_height > 0 { l.caption_height + 4 } else { 0 };
        heading_height(l) + tile + o.outline_width + captions + gap
    };
    let height = if rows.is_empty() { tile + 2 * gap } else { gap + layouts.iter().map(row_height).sum::<u32>() };

    let mut img = RgbImage::from_pixel(width, height, o.background);
    // Centres a line horizontally on `cx`, with `font`'s line box centred in its line height.
    let centred = |img: &mut RgbImage, font: &TextFont, text: &str, cx: u32, top: u32, lh: u32| {
        let x = cx as f32 - font.width(text) as f32 / 2.0;
        let y = top as f32 + (lh as f32 - font.height()) / 2.0;
        font.draw(img, text, x, y, o.text_color);
    };
    if rows.is_empty() {
        let top = height / 2 - caption_lh / 2;
        centred(&mut img, &caption_font, "no data", width / 2, top, caption_lh);
    }

    let mut y = gap;
    for (row, layout) in rows.iter().zip(&layouts) {
        for (i, line) in layout.heading.iter().enumerate() {
            let top = (y + i as u32 * heading_lh) as f32;
            let dy = (heading_lh as f32 - heading_font.height()) / 2.0;
            heading_font.draw(&mut img, line, gap as f32, top + dy, o.text_color);
        }
        let top = y + heading_height(layout);
        for (j, (t, caption)) in row.tiles.iter().zip(&layout.captions).enumerate() {
            let left = gap + j as u32 * (tile + gap);
            if let Some(color) = t.outline {
                let ow = o.outline_width;
                fill_rect(&mut img, left - ow, top - ow, tile + 2 * ow, tile + 2 * ow, color);
                fill_rect(&mut img, left, top, tile, tile, o.background);
            }
            match &t.content {
                TileContent::Image(src) => draw_fitted(&mut img, src, left, top, tile),
                TileContent::Disclaimer(text) => {
                    fill_rect(&mut img, left, top, tile, tile, o.disclaimer_background);
                    draw_disclaimer(&mut img, text, left, top, tile, o)?;
                }
            }
            let cap_top = top + tile + o.outline_width + 4;
            for (k, line) in caption.iter().enumerate() {
                let line_top = cap_top + k as u32 * caption_lh;
                centred(&mut img, &caption_font, line, left + tile / 2, line_top, caption_lh);
            }
        }
        y += row_height(layout);
    }
    Ok(img)
}

/// Draws `text` wrapped and centred in the tile at `(left, top)`.
fn draw_disclaimer(img: &mut RgbImage, text: &str, left: u32, top: u32, tile: u32, o: &SheetOptions) -> Result<()> {
    let size = (f64::from(tile) / 12.0).clamp(9.0, 26.0);
    let font = TextFont::new(size, false)?;
    let lh = line_height(size);
    let margin = tile / 10;
    let max_lines = ((tile - 2 * margin) / lh).max(1) as usize;
    let lines = wrap_lines(text, &font, tile - 2 * margin, max_lines);
    let block = lines.len() as u32 * lh;
    let y0 = top + tile.saturating_sub(block) / 2;
    for (k, line) in lines.iter().enumerate() {
        let x = (left + tile / 2) as f32 - font.width(line) as f32 / 2.0;
        let y = (y0 + k as u32 * lh) as f32 + (lh as f32 - font.height()) / 2.0;
        font.draw(img, line, x, y, o.disclaimer_text_color);
    }
    Ok(())
}

/// Fills a rectangle, clipped to the image.
fn fill_rect(img: &mut RgbImage, x: u32, y: u32, w: u32, h: u32, color: Rgb<u8>) {
    let (iw, ih) = img.dimensions();
    for yy in y..(y + h).min(ih) {
        for xx in x..(x + w).min(iw) {
            img.put_pixel(xx, yy, color);
        }
    }
}

/// Scales `src` to fit a `tile` x `tile` square (aspect ratio kept) and pastes it centred in
/// the square at `(left, top)`.
fn draw_fitted(img: &mut RgbImage, src: &RgbImage, left: u32, top: u32, tile: u32) {
    let (sw, sh) = src.dimensions();
    if sw == 0 || sh == 0 {
        return;
    }
    let scale = f64::from(tile) / f64::from(sw.max(sh));
    let w = ((f64::from(sw) * scale).round() as u32).clamp(1, tile);
    let h = ((f64::from(sh) * scale).round() as u32).clamp(1, tile);
    let scaled = if (w, h) == (sw, sh) { src.clone() } else { imageops::resize(src, w, h, FilterType::Triangle) };
    let x = left + (tile - w) / 2;
    let y = top + (tile - h) / 2;
    imageops::replace(img, &scaled, i64::from(x), i64::from(y));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn solid(w: u32, h: u32, c: [u8; 3]) -> RgbImage {
        RgbImage::from_pixel(w, h, Rgb(c))
    }

    fn small() -> SheetOptions {
        SheetOptions { tile_size: 100, padding: 10, outline_width: 4, ..SheetOptions::default() }
    }

    #[test]
    fn fitted_image_keeps_aspect_ratio_and_is_centred() {
        let mut img = solid(120, 120, [255, 255, 255]);
        draw_fitted(&mut img, &solid(200, 100, [255, 0, 0]), 10, 10, 100);
        // 200x100 -> 100x50, centred vertically: rows 35..85.
        assert_eq!(img.get_pixel(60, 34), &Rgb([255, 255, 255]));
        assert_eq!(img.get_pixel(60, 36), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(10, 60), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(109, 84), &Rgb([255, 0, 0]));
        assert_eq!(img.get_pixel(60, 86), &Rgb([255, 255, 255]));
    }

    #[test]
    fn layout_dimensions_follow_the_longest_row() {
        let rows = vec![
            SheetRow::new(Some("a query".to_owned()), vec![Tile::image(solid(10, 10, [0, 0, 255])); 3]),
            SheetRow::new(None, vec![Tile::disclaimer()]),
        ];
        let img = render_grid(&rows, &small()).unwrap();
        let heading = line_height(19.0) + 6 + 4;
        assert_eq!(img.width(), 10 + 3 * 110);
        // gap + (heading + tile + outline + gap) + (tile + outline + gap)
        assert_eq!(img.height(), 10 + (heading + 100 + 4 + 10) + (100 + 4 + 10));
    }

    #[test]
    fn outline_surrounds_the_tile_and_disclaimer_is_grey_with_text() {
        let rows = vec![SheetRow::new(
            None,
            vec![Tile::image(solid(50, 50, [0, 0, 255])).with_outline(CORRECT), Tile::disclaimer()],
        )];
        let o = small();
        let img = render_grid(&rows, &o).unwrap();
        // Outline is in the 4 px band around the first tile at (10, 10).
        assert_eq!(img.get_pixel(7, 50), &CORRECT);
        assert_eq!(img.get_pixel(50, 111), &CORRECT);
        assert_eq!(img.get_pixel(50, 50), &Rgb([0, 0, 255]));
        // The disclaimer tile at (120, 10) is grey with some white text pixels.
        assert_eq!(img.get_pixel(121, 11), &o.disclaimer_background);
        let white = (120..220)
            .flat_map(|x| (10..110).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c > 200))
            .count();
        assert!(white > 100, "{white} text pixels");
    }

    #[test]
    fn empty_sheets_render() {
        let img = render_grid(&[], &small()).unwrap();
        assert_eq!(img.dimensions(), (120, 120));
        let img = render_grid(&[SheetRow::default()], &small()).unwrap();
        assert_eq!(img.width(), 120);
    }

    #[test]
    fn load_image_errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.jpg");
        let err = load_image(&missing).unwrap_err();
        assert!(matches!(&err, Error::Read { path, .. } if path == &missing), "{err}");
        assert!(err.to_string().contains("missing.jpg"));

        let corrupt = dir.path().join("corrupt.jpg");
        std::fs::write(&corrupt, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
        let err = load_image(&corrupt).unwrap_err();
        assert!(matches!(&err, Error::Decode { path, .. } if path == &corrupt), "{err}");
        assert!(err.to_string().contains("corrupt.jpg"));
    }

    #[test]
    fn load_image_reads_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        solid(7, 5, [1, 2, 3]).save(&path).unwrap();
        let tile = Tile::load(&path).unwrap();
        match tile.content {
            TileContent::Image(img) => assert_eq!(img.dimensions(), (7, 5)),
            TileContent::Disclaimer(_) => panic!("expected an image"),
        }
    }
}
