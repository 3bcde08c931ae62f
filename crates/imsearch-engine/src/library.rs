//! A synthetic photo library for scale benchmarks: the given source photos re-encoded at other
//! sizes, JPEG qualities and rotations, some as PNG, some with upper-case extensions, in nested
//! year/month folders, as a phone's or a camera's library looks. Deterministic: photo `i` is
//! always the same file.

use std::path::{Path, PathBuf};

use image::{codecs::jpeg::JpegEncoder, imageops, DynamicImage, RgbImage};
use serde::Serialize;

use crate::{Error, Result};

/// Scale factors of the source's size, by round.
const SCALES: [f32; 6] = [1.0, 0.6, 1.5, 0.8, 1.25, 0.5];
/// JPEG qualities, by round.
const QUALITIES: [u8; 4] = [92, 75, 60, 85];
/// The longest side a generated photo may have.
const MAX_SIDE: u32 = 2000;

/// What [`make_library`] wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LibrarySummary {
    pub dir: PathBuf,
    pub photos: usize,
    /// Photos already there from an earlier run (same name and so same content), not written.
    pub kept: usize,
    pub bytes: u64,
}

/// Photo `i`'s path relative to the library: `<year>/<month>/IMG_<i>.<ext>`.
pub fn library_path(i: usize, sources: usize) -> String {
    let round = i / sources.max(1);
    let ext = if i % 7 == 3 {
        "png"
    } else if i.is_multiple_of(5) {
        "JPG"
    } else {
        "jpg"
    };
    format!("{}/{:02}/IMG_{i:05}.{ext}", 2015 + round % 8, i % 12 + 1)
}

/// Writes photos `0..n` of the library made from `sources` into `dir` (photo `i` is source
/// `i % sources.len()` in variant `i / sources.len()`); photos already present are kept.
/// `progress(done)` reports.
pub fn make_library(sources: &[PathBuf], dir: &Path, n: usize, progress: &dyn Fn(usize)) -> Result<LibrarySummary> {
    if sources.is_empty() {
        return Err(Error::Invalid("no source photos to build a library from".into()));
    }
    let mut summary = LibrarySummary { dir: dir.to_owned(), ..Default::default() };
    for (s, source) in sources.iter().enumerate() {
        let mut decoded: Option<RgbImage> = None;
        for i in (s..n).step_by(sources.len()) {
            let path = dir.join(library_path(i, sources.len()));
            if let Ok(meta) = std::fs::metadata(&path) {
                summary.kept += 1;
                summary.photos += 1;
                summary.bytes += meta.len();
                continue;
            }
            let img = match &decoded {
                Some(img) => img,
                None => decoded
                    .insert(imsearch_vision::preprocess::open_rgb(source).map_err(|e| Error::Invalid(e.to_string()))?),
            };
            let bytes = variant(img, i / sources.len(), &path)?;
            summary.photos += 1;
            summary.bytes += bytes;
        }
        progress(summary.photos);
    }
    Ok(summary)
}

/// Writes `img` in variant `round` to `path` (its extension picks the format); returns its size.
fn variant(img: &RgbImage, round: usize, path: &Path) -> Result<u64> {
    let scale = SCALES[round % SCALES.len()];
    let (w, h) = img.dimensions();
    let fit = (MAX_SIDE as f32 / w.max(h) as f32).min(scale);
    let (w, h) = (((w as f32 * fit) as u32).max(16), ((h as f32 * fit) as u32).max(16));
    let resized = imageops::resize(img, w, h, imageops::FilterType::Triangle);
    let out = match round % 4 {
        1 => imageops::rotate90(&resized),
        2 => imageops::rotate180(&resized),
        3 => imageops::rotate270(&resized),
        _ => resized,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| Error::Write { path: path.to_owned(), source })?;
    }
    let mut bytes = Vec::new();
    let is_png = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let encoded = if is_png {
        DynamicImage::ImageRgb8(out).write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
    } else {
        JpegEncoder::new_with_quality(&mut bytes, QUALITIES[round % QUALITIES.len()]).encode_image(&out)
    };
    encoded.map_err(|e| Error::Invalid(format!("failed to encode {}: {e}", path.display())))?;
    // Atomic: a run killed part-way leaves no half-written photo for the next run to keep.
    imsearch_fsio::write_bytes_atomic(path, &bytes)
        .map_err(|e| Error::Invalid(format!("failed to write {}: {e}", path.display())))?;
    Ok(bytes.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_is_nested_varied_and_made_once() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.png");
        RgbImage::from_fn(60, 40, |x, y| image::Rgb([x as u8 * 4, y as u8 * 6, 9])).save(&src).unwrap();
        let out = dir.path().join("library");
        let made = make_library(std::slice::from_ref(&src), &out, 8, &|_| {}).unwrap();
        assert_eq!((made.photos, made.kept), (8, 0));
        let (files, _) = crate::list_images(&out).unwrap();
        assert_eq!(files.len(), 8, "every photo is found by the indexer");
        assert!(files.iter().any(|(k, _)| k.ends_with(".JPG")) && files.iter().any(|(k, _)| k.ends_with(".png")));
        assert!(files.iter().all(|(k, _)| k.matches('/').count() == 2), "nested year/month folders");
        // Round 1 is rotated a quarter turn and scaled by 0.6: 24 x 36.
        let one = image::open(out.join(library_path(1, 1))).unwrap();
        assert_eq!((one.width(), one.height()), (24, 36));
        let again = make_library(&[src], &out, 8, &|_| {}).unwrap();
        assert_eq!((again.photos, again.kept, again.bytes), (8, 8, made.bytes));
    }
}
