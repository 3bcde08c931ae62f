//! The embedded font (DejaVu Sans from the `dejavu` crate): its registration with plotters for
//! charts, and the text helpers the sheets use (measuring, word wrapping, ellipsis truncation,
//! drawing onto an `RgbImage` with `ab_glyph`).
//!
//! DejaVu Sans is under the Bitstream Vera / DejaVu licence (free to use, embed and
//! redistribute); the `dejavu` crate that ships it is MIT OR Apache-2.0.

use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use image::{Rgb, RgbImage};
use plotters::prelude::*;
use plotters::style::FontStyle;

use crate::{Error, Result};

/// The family every plotters text style in this crate uses; plotters' defaults ask for it too.
pub(crate) const FAMILY: &str = "sans-serif";

const ELLIPSIS: char = '…';

/// Registers DejaVu Sans (regular and bold) with plotters under [`FAMILY`], once per process.
/// Must run before any `FontDesc` is built: plotters resolves the font at construction.
pub(crate) fn ensure_registered() -> Result<()> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FAMILY, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(Error::Font)
    }
}

/// A plotters font description of the embedded font at `size` pixels. Call
/// [`ensure_registered`] first.
pub(crate) fn plot_font(size: f64, bold: bool) -> FontDesc<'static> {
    let style = if bold { FontStyle::Bold } else { FontStyle::Normal };
    FontDesc::new(FontFamily::Name(FAMILY), size, style)
}

/// The embedded font at one size, for measuring and for drawing straight onto an image.
/// Glyphs are placed at sub-pixel positions, so small text keeps even spacing.
#[derive(Clone, Copy)]
pub(crate) struct TextFont {
    face: &'static FontRef<'static>,
    scale: PxScale,
}

impl TextFont {
    /// DejaVu Sans (bold or regular) at `size` pixels (the same size unit plotters uses).
    pub(crate) fn new(size: f64, bold: bool) -> Result<Self> {
        static FACES: OnceLock<Option<[FontRef<'static>; 2]>> = OnceLock::new();
        let faces = FACES.get_or_init(|| {
            let regular = FontRef::try_from_slice(dejavu::sans::regular()).ok()?;
            let bold = FontRef::try_from_slice(dejavu::sans::bold()).ok()?;
            Some([regular, bold])
        });
        let faces = faces.as_ref().ok_or(Error::Font)?;
        Ok(TextFont { face: &faces[usize::from(bold)], scale: PxScale::from(size as f32) })
    }

    /// Width of `text` in pixels (advances plus kerning), rounded up.
    pub(crate) fn width(&self, text: &str) -> u32 {
        let font = self.face.as_scaled(self.scale);
        let mut x = 0.0f32;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                x += font.kern(p, id);
            }
            x += font.h_advance(id);
            prev = Some(id);
        }
        x.ceil().max(0.0) as u32
    }

    /// Height of a line of text from ascent to descent, in pixels.
    pub(crate) fn height(&self) -> f32 {
        let font = self.face.as_scaled(self.scale);
        font.ascent() - font.descent()
    }

    /// Draws `text` with its top-left corner at `(x, y)`, blending `color` over `img` by glyph
    /// coverage; pixels outside the image are skipped.
    pub(crate) fn draw(&self, img: &mut RgbImage, text: &str, x: f32, y: f32, color: Rgb<u8>) {
        let font = self.face.as_scaled(self.scale);
        let baseline = y + font.ascent();
        let (w, h) = img.dimensions();
        let mut caret = x;
        let mut prev = None;
        for c in text.chars() {
            let id = font.glyph_id(c);
            if let Some(p) = prev {
                caret += font.kern(p, id);
            }
            prev = Some(id);
            let glyph = id.with_scale_and_position(self.scale, point(caret, baseline));
            caret += font.h_advance(id);
            let Some(outline) = self.face.outline_glyph(glyph) else {
                continue; // whitespace has no outline
            };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let px = bounds.min.x as i64 + i64::from(gx);
                let py = bounds.min.y as i64 + i64::from(gy);
                if px < 0 || py < 0 || px >= i64::from(w) || py >= i64::from(h) {
                    return;
                }
                let a = coverage.clamp(0.0, 1.0);
                let pixel = img.get_pixel_mut(px as u32, py as u32);
                for (dst, src) in pixel.0.iter_mut().zip(color.0) {
                    *dst = (f32::from(*dst) * (1.0 - a) + f32::from(src) * a).round() as u8;
                }
            });
        }
    }
}

/// Greedy word wrap of `text` into lines no wider than `max_width` pixels. Explicit newlines
/// start a new line; a word wider than the line is broken between characters.
pub(crate) fn wrap(text: &str, font: &TextFont, max_width: u32) -> Vec<String> {
    let mut lines = Vec::new();
    for paragraph in text.lines() {
        let mut line = String::new();
        for word in paragraph.split_whitespace() {
            let candidate = if line.is_empty() { word.to_owned() } else { format!("{line} {word}") };
            if font.width(&candidate) <= max_width {
                line = candidate;
                continue;
            }
            if !line.is_empty() {
                lines.push(std::mem::take(&mut line));
            }
            // `word` alone may still be too wide: break it between characters.
            for c in word.chars() {
                line.push(c);
                if line.chars().count() > 1 && font.width(&line) > max_width {
                    line.pop();
                    lines.push(std::mem::take(&mut line));
                    line.push(c);
                }
            }
        }
        if !line.is_empty() {
            lines.push(line);
        }
    }
    lines
}

/// Shortens `text` with a trailing ellipsis until it fits in `max_width` pixels.
pub(crate) fn ellipsize(text: &str, font: &TextFont, max_width: u32) -> String {
    if font.width(text) <= max_width {
        return text.to_owned();
    }
    let mut chars: Vec<char> = text.chars().collect();
    while !chars.is_empty() {
        chars.pop();
        let mut candidate: String = chars.iter().collect::<String>().trim_end().to_owned();
        candidate.push(ELLIPSIS);
        if font.width(&candidate) <= max_width {
            return candidate;
        }
    }
    ELLIPSIS.to_string()
}

/// Wraps `text` and keeps at most `max_lines` lines, ellipsizing the last kept line when text
/// was dropped.
pub(crate) fn wrap_lines(text: &str, font: &TextFont, max_width: u32, max_lines: usize) -> Vec<String> {
    let mut lines = wrap(text, font, max_width);
    if lines.len() > max_lines {
        lines.truncate(max_lines);
        if let Some(last) = lines.last_mut() {
            *last = ellipsize(&format!("{last}{ELLIPSIS}"), font, max_width);
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn font14() -> TextFont {
        TextFont::new(14.0, false).unwrap()
    }

    #[test]
    fn embedded_font_measures_text() {
        let f = font14();
        let short = f.width("ab");
        let long = f.width("abcdefgh");
        assert!(short > 5 && long > 3 * short, "{short} {long}");
    }

    #[test]
    fn wrap_keeps_lines_within_width_and_words_intact() {
        let f = font14();
        let text = "This image is unavailable in your country in compliance with local laws";
        let lines = wrap(text, &f, 120);
        assert!(lines.len() >= 3, "{lines:?}");
        for line in &lines {
            assert!(f.width(line) <= 120, "{line}");
        }
        assert_eq!(lines.join(" "), text);
    }

    #[test]
    fn wrap_breaks_overlong_words_and_keeps_newlines() {
        let f = font14();
        let lines = wrap("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\nb", &f, 60);
        assert!(lines.len() >= 3, "{lines:?}");
        assert_eq!(lines.last().map(String::as_str), Some("b"));
        assert_eq!(lines.concat().len(), 41);
        assert!(wrap("", &f, 60).is_empty());
        assert!(wrap("   ", &f, 60).is_empty());
    }

    #[test]
    fn wrap_lines_ellipsizes_dropped_text() {
        let f = font14();
        let lines = wrap_lines("one two three four five six seven eight", &f, 60, 2);
        assert_eq!(lines.len(), 2);
        assert!(lines[1].ends_with(ELLIPSIS), "{lines:?}");
        assert!(f.width(&lines[1]) <= 60);
    }

    #[test]
    fn ellipsize_fits_or_returns_input() {
        let f = font14();
        assert_eq!(ellipsize("short", &f, 500), "short");
        let cut = ellipsize("a rather long label that will not fit", &f, 80);
        assert!(cut.ends_with(ELLIPSIS) && f.width(&cut) <= 80, "{cut}");
    }

    #[test]
    fn draw_puts_ink_inside_the_text_box_only() {
        let f = TextFont::new(20.0, true).unwrap();
        let mut img = RgbImage::from_pixel(200, 60, Rgb([255, 255, 255]));
        f.draw(&mut img, "Hello", 10.0, 10.0, Rgb([0, 0, 0]));
        let (w, h) = (f.width("Hello"), f.height().ceil() as u32);
        let mut inside = 0;
        for (x, y, p) in img.enumerate_pixels() {
            if p.0[0] < 128 {
                assert!((9..=11 + w).contains(&x) && (9..=11 + h).contains(&y), "{x},{y}");
                inside += 1;
            }
        }
        assert!(inside > 50, "{inside} dark pixels");
        // Drawing off the image is clipped, not a panic.
        f.draw(&mut img, "Hello", -30.0, 50.0, Rgb([0, 0, 0]));
        f.draw(&mut img, "Hello", 190.0, -10.0, Rgb([0, 0, 0]));
    }
}
