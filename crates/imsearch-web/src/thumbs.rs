//! Thumbnails for the result grid: a JPEG at most [`THUMB_SIDE`] pixels on its longest side,
//! made from an image's bytes with its EXIF orientation applied, and a disk cache keyed by a hash
//! of those bytes.
//!
//! Nothing here decides whether an image may be shown: a thumbnail is only ever made from (or
//! looked up by the hash of) the bytes [`crate::Backend::image`] returned as found, on every
//! request, so a blocked image has no thumbnail to serve and a cached one is never served for an
//! image the backend does not show at that moment.

use std::{
    io::{self, Cursor},
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use image::{codecs::jpeg::JpegEncoder, DynamicImage, ImageDecoder, ImageReader, ImageResult, RgbImage};

/// The longest side of a thumbnail, in pixels.
pub const THUMB_SIDE: u32 = 320;

/// JPEG quality of a thumbnail.
const QUALITY: u8 = 82;

/// Part of every cache file's name: change it when the size, quality or method changes, so
/// thumbnails of the old kind are never served.
const FORMAT: &str = "v1-320-q82";

/// The cache file name of the thumbnail of `bytes`: their sha256, so the same bytes find the same
/// thumbnail in every process and build, and other bytes never do.
pub(crate) fn cache_name(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{FORMAT}-{hex}.jpg")
}

/// The cached thumbnail `name` in `dir`, if there is one (any error reading it is a miss).
pub(crate) fn cached(dir: &Path, name: &str) -> Option<Vec<u8>> {
    std::fs::read(dir.join(name)).ok().filter(|b| !b.is_empty())
}

/// Saves `jpeg` as `name` in `dir` (created when missing) through a temporary file and a rename,
/// so a reader never sees half a thumbnail, even when two requests make the same one at once.
pub(crate) fn store(dir: &Path, name: &str, jpeg: &[u8]) -> io::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.{}-{}.tmp", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, jpeg).and_then(|()| std::fs::rename(&tmp, dir.join(name))).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A JPEG of the image in `bytes` (any format the `image` crate reads here, told by its content),
/// turned upright by its EXIF orientation, scaled down to at most [`THUMB_SIDE`] pixels on its
/// longest side (never up), transparency flattened onto white. Bytes that are not a readable
/// image are an error.
pub(crate) fn make(bytes: &[u8]) -> ImageResult<Vec<u8>> {
    let mut decoder = ImageReader::new(Cursor::new(bytes)).with_guessed_format()?.into_decoder()?;
    let orientation = decoder.orientation()?;
    let image = DynamicImage::from_decoder(decoder)?;
    let mut small =
        if image.width().max(image.height()) > THUMB_SIDE { image.thumbnail(THUMB_SIDE, THUMB_SIDE) } else { image };
    small.apply_orientation(orientation);
    let rgb = if small.color().has_alpha() { on_white(&small) } else { small.to_rgb8() };
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, QUALITY).encode_image(&rgb)?;
    Ok(out)
}

/// `image` composited onto a white background.
fn on_white(image: &DynamicImage) -> RgbImage {
    let rgba = image.to_rgba8();
    RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [r, g, b, a] = rgba.get_pixel(x, y).0;
        let blend = |c: u8| ((u16::from(c) * u16::from(a) + 255 * (255 - u16::from(a)) + 127) / 255) as u8;
        image::Rgb([blend(r), blend(g), blend(b)])
    })
}

#[cfg(test)]
mod tests {
    use image::{GenericImageView, ImageFormat, Rgba, RgbaImage};

    use super::*;

    /// `image` encoded as `format`.
    fn encode(image: &DynamicImage, format: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, format).unwrap();
        out.into_inner()
    }

    /// A JPEG `width` x `height`, red on its left half and blue on its right, with an EXIF
    /// orientation tag (1 to 8) when `orientation` is given.
    fn jpeg(width: u32, height: u32, orientation: Option<u16>) -> Vec<u8> {
        let image = RgbImage::from_fn(width, height, |x, _| {
            if x < width / 2 {
                image::Rgb([220, 20, 20])
            } else {
                image::Rgb([20, 20, 220])
            }
        });
        let jpeg = encode(&DynamicImage::ImageRgb8(image), ImageFormat::Jpeg);
        match orientation {
            None => jpeg,
            Some(o) => with_orientation(&jpeg, o),
        }
    }

    /// `jpeg` with an APP1 EXIF segment holding only an orientation tag, after its SOI marker.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        // TIFF header (big-endian), one IFD with one entry: tag 0x0112, SHORT, count 1.
        let mut tiff = b"MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01".to_vec();
        tiff.extend_from_slice(&orientation.to_be_bytes());
        tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    fn decode(jpeg: &[u8]) -> DynamicImage {
        assert!(jpeg.starts_with(&[0xFF, 0xD8]), "not a JPEG");
        image::load_from_memory_with_format(jpeg, ImageFormat::Jpeg).unwrap()
    }

    #[test]
    fn a_thumbnail_is_a_jpeg_at_most_320_px_keeping_the_aspect() {
        let thumb = decode(&make(&jpeg(1000, 600, None)).unwrap());
        assert_eq!(thumb.dimensions(), (320, 192));
        let thumb = decode(&make(&jpeg(300, 900, None)).unwrap());
        assert_eq!(thumb.dimensions(), (107, 320));
        // A small image is not scaled up.
        let thumb = decode(&make(&jpeg(200, 100, None)).unwrap());
        assert_eq!(thumb.dimensions(), (200, 100));
    }

    #[test]
    fn a_thumbnail_is_upright() {
        // Orientation 6: the camera was turned; the picture is shown turned 90 degrees clockwise,
        // so the left (red) half ends up on top.
        let thumb = decode(&make(&jpeg(640, 480, Some(6))).unwrap()).to_rgb8();
        assert_eq!(thumb.dimensions(), (240, 320));
        let (top, bottom) = (thumb.get_pixel(120, 40).0, thumb.get_pixel(120, 280).0);
        assert!(top[0] > 150 && top[2] < 100, "top {top:?} is not red");
        assert!(bottom[2] > 150 && bottom[0] < 100, "bottom {bottom:?} is not blue");
        // Orientation 1 (or none) leaves it as it is.
        for o in [Some(1), None] {
            assert_eq!(decode(&make(&jpeg(640, 480, o)).unwrap()).dimensions(), (320, 240));
        }
    }

    #[test]
    fn transparency_becomes_white_and_other_formats_are_read() {
        let clear = DynamicImage::ImageRgba8(RgbaImage::from_pixel(40, 30, Rgba([0, 0, 0, 0])));
        let thumb = decode(&make(&encode(&clear, ImageFormat::Png)).unwrap()).to_rgb8();
        assert_eq!(thumb.dimensions(), (40, 30));
        assert!(thumb.pixels().all(|p| p.0.iter().all(|&c| c > 240)), "{:?}", thumb.get_pixel(0, 0));
    }

    #[test]
    fn bytes_that_are_not_an_image_are_an_error() {
        assert!(make(b"not an image at all").is_err());
        assert!(make(&[]).is_err());
        let mut cut = jpeg(640, 480, None);
        cut.truncate(200);
        assert!(make(&cut).is_err());
    }

    #[test]
    fn the_cache_name_follows_the_bytes() {
        let (a, b) = (jpeg(64, 48, None), jpeg(64, 48, Some(6)));
        assert_eq!(cache_name(&a), cache_name(&a.clone()));
        assert_ne!(cache_name(&a), cache_name(&b));
        let name = cache_name(&a);
        assert!(name.starts_with("v1-320-q82-") && name.len() == "v1-320-q82-".len() + 64 + ".jpg".len(), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{name}");
    }

    #[test]
    fn the_cache_stores_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("thumbs");
        assert_eq!(cached(&nested, "x.jpg"), None);
        store(&nested, "x.jpg", b"jpeg bytes").unwrap();
        assert_eq!(cached(&nested, "x.jpg").as_deref(), Some(&b"jpeg bytes"[..]));
        store(&nested, "x.jpg", b"again").unwrap();
        assert_eq!(cached(&nested, "x.jpg").as_deref(), Some(&b"again"[..]));
        let left: Vec<_> = std::fs::read_dir(&nested).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["x.jpg"], "no temporary file is left behind");
    }
}
