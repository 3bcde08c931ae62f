//! Image preprocessing: decode, convert to RGB, resize, crop and normalise into the
//! `(batch, 3, size, size)` f32 tensors the encoders take, plus extra views for test-time
//! augmentation.
//!
//! The resize reproduces Pillow's bilinear `Image.resize` (antialiased: the filter widens when
//! shrinking; 8-bit fixed-point, horizontal pass first) bit for bit, and [`resize_shorter`] and
//! [`center_crop`] follow torchvision's `Resize(int)` and `CenterCrop` rounding, so a PNG gives
//! exactly the tensor `T.Compose([Resize(256), CenterCrop(224), ToTensor(), Normalize(..)])`
//! gives in PyTorch. JPEG decoders differ slightly (zune-jpeg here, libjpeg-turbo in Pillow).

use std::fs::File;
use std::io::{self, BufRead, Cursor, Read, Seek};
use std::path::Path;

use candle::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How images become network input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// The shorter side is resized to this many pixels (keeping the aspect ratio).
    pub resize: u32,
    /// Side of the square centre crop taken after the resize: the network input size.
    pub crop: u32,
    /// Per-channel (R, G, B) mean subtracted from values scaled to 0..1.
    pub mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation the centred values are divided by.
    pub std: [f32; 3],
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        Self::imagenet()
    }
}

impl PreprocessConfig {
    /// torchvision's ImageNet evaluation: resize 256, crop 224, ImageNet mean and std
    /// (MobileNetV2).
    pub fn imagenet() -> Self {
        Self { resize: 256, crop: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }

    /// EfficientNet-Lite at input size `crop` (224 for Lite0, 260 for Lite2): inputs scaled to
    /// about [-1, 1] (mean 0.498, std 0.502), resize `crop + 32` rounded as TensorFlow's
    /// evaluation crop does (256 for 224, 292 for 260).
    pub fn efficientnet_lite(crop: u32) -> Self {
        Self { resize: crop + 32, crop, mean: [0.498; 3], std: [0.502; 3] }
    }

    /// Checks that the sizes are positive, the crop fits the resize and the std is positive.
    pub fn validate(&self) -> Result<()> {
        if self.crop == 0 || self.resize < self.crop {
            return Err(Error::Config(format!(
                "crop {} must be positive and at most resize {}",
                self.crop, self.resize
            )));
        }
        if self.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return Err(Error::Config(format!("std {:?} must be positive", self.std)));
        }
        Ok(())
    }

    /// Values per image in the output tensor: `3 * crop * crop`.
    pub fn image_len(&self) -> usize {
        3 * self.crop as usize * self.crop as usize
    }

    /// One view of an image, `crop x crop` RGB.
    pub fn view(&self, img: &RgbImage, view: View) -> RgbImage {
        self.view_cached(img, view, &mut Vec::new())
    }

    /// [`view`](Self::view), reusing the copies of `img` already resized to a shorter side in
    /// `resized` (size, image) and adding the ones it makes: the views of one image, and the
    /// configs of several encoders with the same resize (MobileNetV2 and EfficientNet-Lite0 both
    /// resize to 256), then resize it once.
    pub fn view_cached(&self, img: &RgbImage, view: View, resized: &mut Vec<(u32, RgbImage)>) -> RgbImage {
        let mut shorter = |size: u32| -> usize {
            match resized.iter().position(|(s, _)| *s == size) {
                Some(i) => i,
                None => {
                    resized.push((size, resize_shorter(img, size)));
                    resized.len() - 1
                }
            }
        };
        let out = match view {
            View::Center | View::CenterFlipped => {
                let i = shorter(self.resize);
                center_crop(&resized[i].1, self.crop)
            }
            View::Squashed | View::SquashedFlipped => resize(img, self.crop, self.crop),
            View::TopLeft | View::TopRight | View::BottomLeft | View::BottomRight => {
                let i = shorter(self.resize);
                corner_crop(&resized[i].1, self.crop, view)
            }
            View::ZoomCenter => {
                let i = shorter(2 * self.crop);
                center_crop(&resized[i].1, self.crop)
            }
            View::ZoomTopLeft | View::ZoomTopRight | View::ZoomBottomLeft | View::ZoomBottomRight => {
                let i = shorter(2 * self.crop);
                corner_crop(&resized[i].1, self.crop, view)
            }
        };
        match view {
            View::CenterFlipped | View::SquashedFlipped => image::imageops::flip_horizontal(&out),
            _ => out,
        }
    }

    /// Writes the `views` of `img` as normalised CHW values into `out` (length
    /// `views.len() *` [`image_len`](Self::image_len)), one view after the other, sharing the
    /// resized copies in `resized` (see [`view_cached`](Self::view_cached)).
    pub fn views_into(
        &self,
        img: &RgbImage,
        views: &[View],
        out: &mut [f32],
        resized: &mut Vec<(u32, RgbImage)>,
    ) -> Result<()> {
        let n = self.image_len();
        if out.len() != n * views.len() {
            return Err(Error::Config(format!(
                "expected {} values for {} views, got {}",
                n * views.len(),
                views.len(),
                out.len()
            )));
        }
        for (view, out) in views.iter().zip(out.chunks_mut(n.max(1))) {
            self.normalize_into(&self.view_cached(img, *view, resized), out)?;
        }
        Ok(())
    }

    /// Writes a `crop x crop` image as normalised CHW values into `out` (length
    /// [`image_len`](Self::image_len)), exactly as torchvision's `ToTensor` then `Normalize`
    /// compute them in f32.
    pub fn normalize_into(&self, img: &RgbImage, out: &mut [f32]) -> Result<()> {
        let side = self.crop;
        if img.dimensions() != (side, side) || out.len() != self.image_len() {
            return Err(Error::Config(format!(
                "expected a {side}x{side} image and {} values, got {:?} and {}",
                self.image_len(),
                img.dimensions(),
                out.len()
            )));
        }
        let plane = (side * side) as usize;
        let (r, rest) = out.split_at_mut(plane);
        let (g, b) = rest.split_at_mut(plane);
        for (i, px) in img.pixels().enumerate() {
            for (c, dst) in [&mut r[i], &mut g[i], &mut b[i]].into_iter().enumerate() {
                *dst = (px.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Ok(())
    }

    /// `(images.len(), 3, crop, crop)` from images that are already `crop x crop`.
    pub fn to_tensor(&self, images: &[RgbImage], device: &Device) -> Result<Tensor> {
        let n = self.image_len();
        let mut data = vec![0f32; images.len() * n];
        data.par_chunks_mut(n).zip(images.par_iter()).try_for_each(|(out, img)| self.normalize_into(img, out))?;
        let side = self.crop as usize;
        Ok(Tensor::from_vec(data, (images.len(), 3, side, side), device)?)
    }

    /// Decodes the files in parallel and returns `(paths.len() * views.len(), 3, crop, crop)`:
    /// the views of the first image, then those of the second, and so on. A file that cannot
    /// be read or decoded is an error naming it.
    pub fn load_batch<P: AsRef<Path> + Sync>(&self, paths: &[P], views: &[View], device: &Device) -> Result<Tensor> {
        self.validate()?;
        let n = self.image_len();
        let per_image = n * views.len();
        let mut data = vec![0f32; paths.len() * per_image];
        if per_image > 0 {
            data.par_chunks_mut(per_image).zip(paths.par_iter()).try_for_each(|(out, path)| -> Result<()> {
                let img = open_rgb(path.as_ref())?;
                self.views_into(&img, views, out, &mut Vec::new())
            })?;
        }
        let side = self.crop as usize;
        Ok(Tensor::from_vec(data, (paths.len() * views.len(), 3, side, side), device)?)
    }
}

/// A way to look at an image; averaging features over several views helps retrieval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum View {
    /// Resize the shorter side, then take the centre square (the standard evaluation view).
    Center,
    /// [`View::Center`] mirrored left to right.
    CenterFlipped,
    /// The whole image squashed to a square, ignoring the aspect ratio.
    Squashed,
    /// [`View::Squashed`] mirrored left to right.
    SquashedFlipped,
    /// Resize the shorter side as for [`View::Center`], then take the top-left square (a person
    /// near a corner is not averaged away with the rest of the picture).
    TopLeft,
    /// As [`View::TopLeft`], the top-right square.
    TopRight,
    /// As [`View::TopLeft`], the bottom-left square.
    BottomLeft,
    /// As [`View::TopLeft`], the bottom-right square.
    BottomRight,
    /// Resize the shorter side to twice the crop, then take the top-left crop-sized square: a
    /// quarter of the picture at double scale, so a small person fills more of the network's
    /// input (with the other three `Zoom` corners, a 2x2 grid over the picture).
    ZoomTopLeft,
    /// As [`View::ZoomTopLeft`], the top-right square.
    ZoomTopRight,
    /// As [`View::ZoomTopLeft`], the bottom-left square.
    ZoomBottomLeft,
    /// As [`View::ZoomTopLeft`], the bottom-right square.
    ZoomBottomRight,
    /// As [`View::ZoomTopLeft`], the centre square.
    ZoomCenter,
}

impl View {
    /// Every view, the standard one first.
    pub const ALL: [View; 13] = [
        View::Center,
        View::CenterFlipped,
        View::Squashed,
        View::SquashedFlipped,
        View::TopLeft,
        View::TopRight,
        View::BottomLeft,
        View::BottomRight,
        View::ZoomTopLeft,
        View::ZoomTopRight,
        View::ZoomBottomLeft,
        View::ZoomBottomRight,
        View::ZoomCenter,
    ];

    /// The view's name, as serialised: `center`, `center-flipped`, `squashed`,
    /// `squashed-flipped`, `top-left`, `top-right`, `bottom-left`, `bottom-right`, `zoom-top-left`,
    /// `zoom-top-right`, `zoom-bottom-left`, `zoom-bottom-right`, `zoom-center`.
    pub fn name(self) -> &'static str {
        match self {
            View::Center => "center",
            View::CenterFlipped => "center-flipped",
            View::Squashed => "squashed",
            View::SquashedFlipped => "squashed-flipped",
            View::TopLeft => "top-left",
            View::TopRight => "top-right",
            View::BottomLeft => "bottom-left",
            View::BottomRight => "bottom-right",
            View::ZoomTopLeft => "zoom-top-left",
            View::ZoomTopRight => "zoom-top-right",
            View::ZoomBottomLeft => "zoom-bottom-left",
            View::ZoomBottomRight => "zoom-bottom-right",
            View::ZoomCenter => "zoom-center",
        }
    }
}

impl std::fmt::Display for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for View {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        View::ALL.into_iter().find(|v| v.name() == s).ok_or_else(|| {
            let known: Vec<&str> = View::ALL.iter().map(|v| v.name()).collect();
            Error::Config(format!("unknown view {s:?} (known: {})", known.join(", ")))
        })
    }
}

/// Reads and decodes an image file and converts it to 8-bit RGB (gray is replicated, alpha
/// dropped, as Pillow's `convert("RGB")` does), turned upright as its EXIF orientation says.
///
/// The format is recognised from the file's bytes, never its name: JPEG, PNG, WebP, GIF (the
/// first frame), BMP or TIFF. Every failure is an error naming the file: it cannot be read
/// ([`Error::Read`]); it is empty, of another format, corrupt, or a JPEG cut short before its
/// end-of-image marker ([`Error::Decode`]; the JPEG decoder would otherwise fill the missing
/// part with grey and return a partial picture); it declares more than 20,000 pixels a side or
/// more than 512 MiB of decoded pixels ([`Error::TooLarge`], checked before anything is
/// allocated).
pub fn open_rgb(path: &Path) -> Result<RgbImage> {
    decode_rgb(&read_image_file(path)?, path)
}

/// Reads an image file's bytes, for [`decode_rgb`]: an error naming the file when it cannot be
/// read, or when it is larger than any image [`open_rgb`] decodes could be (more bytes than
/// the 512 MiB of pixels it allows), before reading it.
pub fn read_image_file(path: &Path) -> Result<Vec<u8>> {
    let read = |source| Error::Read { path: path.to_owned(), source };
    let mut file = File::open(path).map_err(read)?;
    let len = file.metadata().map_err(read)?.len();
    if len > MAX_DECODED_BYTES {
        return Err(Error::Decode {
            path: path.to_owned(),
            source: ImageError::IoError(io::Error::other(format!(
                "the file is {len} bytes, more than the {MAX_DECODED_BYTES} bytes of pixels an image may decode to"
            ))),
        });
    }
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(read)?;
    Ok(bytes)
}

/// Decodes an image file's bytes (read by [`read_image_file`]) as [`open_rgb`] does; `path`
/// names the file in errors.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    let read = |source| Error::Read { path: path.to_owned(), source };
    let decode = |source| Error::Decode { path: path.to_owned(), source };
    if bytes.is_empty() {
        return Err(decode(ImageError::IoError(io::Error::new(io::ErrorKind::UnexpectedEof, "the file is empty"))));
    }
    let reader = ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(read)?;
    // The JPEG decoder would fill a missing end with grey and return a partial picture.
    if reader.format() == Some(ImageFormat::Jpeg) && jpeg_is_truncated(bytes) {
        return Err(decode(ImageError::IoError(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the JPEG ends before its end-of-image marker (truncated file)",
        ))));
    }
    Ok(decode_upright(reader, path)?.to_rgb8())
}

/// Largest width or height [`open_rgb`] decodes: more than any camera takes (a 200-megapixel
/// sensor is about 16,000 x 12,000).
const MAX_IMAGE_SIDE: u32 = 20_000;

/// Most bytes of decoded pixels [`open_rgb`] lets a decoder allocate (512 MiB, the image
/// crate's default allocation limit).
const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

/// Decodes with [`MAX_IMAGE_SIDE`] and [`MAX_DECODED_BYTES`] checked on the declared size
/// before the pixels are allocated, then applies the EXIF orientation.
fn decode_upright<R: BufRead + Seek>(mut reader: ImageReader<R>, path: &Path) -> Result<DynamicImage> {
    let decode = |source| Error::Decode { path: path.to_owned(), source };
    let mut limits = Limits::default();
    // Bounds what decoders allocate while reading headers (PNG text and ICC chunks, TIFF tags);
    // the size limits come after the check below, which reports the declared size.
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits.clone());
    let mut decoder = reader.into_decoder().map_err(decode)?;
    let (width, height) = decoder.dimensions();
    let bytes = decoder.total_bytes();
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || bytes > MAX_DECODED_BYTES {
        return Err(Error::TooLarge {
            path: path.to_owned(),
            width,
            height,
            bytes,
            max_side: MAX_IMAGE_SIDE,
            max_bytes: MAX_DECODED_BYTES,
        });
    }
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    decoder.set_limits(limits).map_err(decode)?;
    let orientation = decoder.orientation().map_err(decode)?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Whether a JPEG stream (starting with its start-of-image marker) runs out before its
/// end-of-image marker `FF D9`. The walk skips each segment by its length, so an `FF D9` inside
/// an EXIF thumbnail or a comment does not count, and scans the entropy-coded data after each
/// start-of-scan for the next marker. Bytes after the end-of-image marker (padding, the video a
/// phone's motion photo appends) are allowed. A stream that does not start like a JPEG, or whose
/// segments are malformed, is left to the decoder to judge (`false`).
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            // Stray bytes between segments: decoders skip them to the next marker.
            i += 1;
            continue;
        }
        match bytes[i + 1] {
            0xD9 => return false,
            // A fill byte before a marker.
            0xFF => i += 1,
            // Markers without a length: TEM, restart markers, and a stuffed zero out of place.
            0x00 | 0x01 | 0xD0..=0xD7 => i += 2,
            marker => {
                let Some(&[hi, lo]) = bytes.get(i + 2..i + 4) else {
                    return true;
                };
                let length = usize::from(u16::from_be_bytes([hi, lo]));
                if length < 2 {
                    return false;
                }
                i += 2 + length;
                if marker == 0xDA {
                    // Entropy-coded data up to the next marker (not a stuffed zero, a restart
                    // marker or a fill byte).
                    while i + 1 < bytes.len() {
                        if bytes[i] == 0xFF && !matches!(bytes[i + 1], 0x00 | 0xD0..=0xD7 | 0xFF) {
                            break;
                        }
                        i += 1;
                    }
                }
            }
        }
    }
    true
}

/// Resizes so that the shorter side is `size`, like torchvision's `Resize(size)` on a PIL
/// image: the longer side becomes `floor(size * long / short)`.
pub fn resize_shorter(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (short, long) = if w <= h { (w, h) } else { (h, w) };
    if short == 0 {
        return img.clone();
    }
    let new_long = (size as f64 * long as f64 / short as f64) as u32;
    let (nw, nh) = if w <= h { (size, new_long) } else { (new_long, size) };
    resize(img, nw, nh)
}

/// The centre `size x size` square, like torchvision's `CenterCrop(size)`: offsets round half
/// to even (Python's `round`), and an image smaller than the crop is first padded with black.
pub fn center_crop(img: &RgbImage, size: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if w < size || h < size {
        let (pl, pt) = (size.saturating_sub(w) / 2, size.saturating_sub(h) / 2);
        let mut padded = RgbImage::new(w.max(size), h.max(size));
        image::imageops::replace(&mut padded, img, pl.into(), pt.into());
        return center_crop(&padded, size);
    }
    let top = ((h - size) as f64 / 2.0).round_ties_even() as u32;
    let left = ((w - size) as f64 / 2.0).round_ties_even() as u32;
    image::imageops::crop_imm(img, left, top, size, size).to_image()
}

/// The `size` square at one corner of `img` (padded as [`center_crop`] pads a small image).
fn corner_crop(img: &RgbImage, size: u32, corner: View) -> RgbImage {
    let (w, h) = img.dimensions();
    if w < size || h < size {
        return center_crop(img, size);
    }
    let (left, top) = match corner {
        View::TopRight | View::ZoomTopRight => (w - size, 0),
        View::BottomLeft | View::ZoomBottomLeft => (0, h - size),
        View::BottomRight | View::ZoomBottomRight => (w - size, h - size),
        _ => (0, 0),
    };
    image::imageops::crop_imm(img, left, top, size, size).to_image()
}

/// Bits of fixed-point precision of the filter weights (Pillow's `PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Which input pixels, with which weights, make each output pixel along one axis.
struct Filter {
    /// Per output pixel: first input pixel and number of taps.
    bounds: Vec<(usize, usize)>,
    /// `ksize` fixed-point weights per output pixel.
    weights: Vec<i32>,
    ksize: usize,
}

impl Filter {
    /// Pillow's `precompute_coeffs` with the bilinear (triangle) filter, then
    /// `normalize_coeffs_8bpc`.
    fn bilinear(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle's support is 1
        let ksize = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * ksize];
        let mut k = vec![0f64; ksize];
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's `(int)` truncates toward zero, as `as i64` does.
            let xmin = ((center - support + 0.5) as i64).max(0);
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) - xmin;
            let (xmin, xmax) = (xmin as usize, xmax.max(0) as usize);
            let mut ww = 0.0;
            for (x, kx) in k.iter_mut().enumerate().take(xmax) {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                let w = (1.0 - t.abs()).max(0.0);
                *kx = w;
                ww += w;
            }
            for (x, kx) in k.iter().enumerate().take(xmax) {
                let v = if ww != 0.0 { kx / ww } else { *kx };
                let v = v * (1u32 << PRECISION_BITS) as f64;
                weights[xx * ksize + x] = if v < 0.0 { (v - 0.5) as i32 } else { (v + 0.5) as i32 };
            }
            bounds.push((xmin, xmax));
        }
        Self { bounds, weights, ksize }
    }

    fn taps(&self, out: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[out];
        (start, &self.weights[out * self.ksize..out * self.ksize + n])
    }
}

/// Pillow's `clip8`: drop the fraction and clamp to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes to exactly `width x height` with Pillow's antialiased bilinear filter, bit for bit
/// (`Image.resize((width, height), Image.BILINEAR)` on an RGB image).
pub fn resize(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w, h) == (width, height) || w == 0 || h == 0 || width == 0 || height == 0 {
        return if (w, h) == (width, height) { img.clone() } else { RgbImage::new(width, height) };
    }
    let (w, h, ow, oh) = (w as usize, h as usize, width as usize, height as usize);
    let vert = Filter::bilinear(h, oh);
    // Only the input rows the vertical pass reads go through the horizontal pass.
    let first = vert.bounds[0].0;
    let last = vert.bounds[oh - 1].0 + vert.bounds[oh - 1].1;
    let src = img.as_raw();
    let round = 1i32 << (PRECISION_BITS - 1);

    let (tmp, tmp_w, row0) = if ow != w {
        let horiz = Filter::bilinear(w, ow);
        let mut tmp = vec![0u8; (last - first) * ow * 3];
        tmp.par_chunks_mut(ow * 3).enumerate().for_each(|(y, out)| {
            let row = &src[(y + first) * w * 3..(y + first + 1) * w * 3];
            for (xx, px) in out.chunks_exact_mut(3).enumerate() {
                let (start, k) = horiz.taps(xx);
                let mut acc = [round; 3];
                for (i, &kw) in k.iter().enumerate() {
                    let p = &row[(start + i) * 3..(start + i) * 3 + 3];
                    for c in 0..3 {
                        acc[c] += p[c] as i32 * kw;
                    }
                }
                for c in 0..3 {
                    px[c] = clip8(acc[c]);
                }
            }
        });
        (tmp, ow, first)
    } else {
        (src.to_vec(), w, 0)
    };

    if oh == h {
        // Only the width changed: the horizontal pass ran on every row.
        return RgbImage::from_raw(width, height, tmp).unwrap_or_else(|| RgbImage::new(width, height));
    }
    let stride = tmp_w * 3;
    let mut out = vec![0u8; oh * stride];
    out.par_chunks_mut(stride).enumerate().for_each(|(yy, orow)| {
        let (start, k) = vert.taps(yy);
        let mut acc = vec![round; stride];
        for (i, &kw) in k.iter().enumerate() {
            let r = start + i - row0;
            let irow = &tmp[r * stride..(r + 1) * stride];
            for (a, &p) in acc.iter_mut().zip(irow) {
                *a += p as i32 * kw;
            }
        }
        for (o, a) in orow.iter_mut().zip(&acc) {
            *o = clip8(*a);
        }
    });
    RgbImage::from_raw(width, height, out).unwrap_or_else(|| RgbImage::new(width, height))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorter_side_and_rounding_follow_torchvision() {
        let img = RgbImage::new(400, 300);
        assert_eq!(resize_shorter(&img, 256).dimensions(), (341, 256));
        let img = RgbImage::new(48, 64);
        assert_eq!(resize_shorter(&img, 256).dimensions(), (256, 341));
        let img = RgbImage::new(333, 500);
        assert_eq!(resize_shorter(&img, 256).dimensions(), (256, 384));
        // (341 - 224) / 2 = 58.5 rounds to 58, as Python's round does.
        let mut img = RgbImage::new(341, 256);
        img.put_pixel(58, 16, image::Rgb([9, 9, 9]));
        assert_eq!(center_crop(&img, 224).get_pixel(0, 0).0, [9, 9, 9]);
    }

    #[test]
    fn small_images_are_padded_before_the_crop() {
        let img = RgbImage::from_pixel(3, 5, image::Rgb([200, 100, 50]));
        let c = center_crop(&img, 6);
        assert_eq!(c.dimensions(), (6, 6));
        assert_eq!(c.get_pixel(0, 0).0, [0, 0, 0]);
        assert_eq!(c.get_pixel(2, 2).0, [200, 100, 50]);
    }

    #[test]
    fn constant_images_stay_constant() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([17, 128, 250]));
        for (w, h) in [(10, 10), (100, 61), (37, 5), (3, 23)] {
            let out = resize(&img, w, h);
            assert_eq!(out.dimensions(), (w, h));
            assert!(out.pixels().all(|p| p.0 == [17, 128, 250]), "{w}x{h}");
        }
    }

    #[test]
    fn normalisation_is_chw() {
        let cfg = PreprocessConfig { resize: 2, crop: 2, mean: [0.5, 0.5, 0.5], std: [0.5, 0.25, 1.0] };
        let mut img = RgbImage::new(2, 2);
        img.put_pixel(1, 0, image::Rgb([255, 0, 255]));
        let mut out = vec![0f32; cfg.image_len()];
        cfg.normalize_into(&img, &mut out).unwrap();
        let want = [-1., 1., -1., -1., -2., -2., -2., -2., -0.5, 0.5, -0.5, -0.5];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn view_names_round_trip() {
        for v in View::ALL {
            assert_eq!(v.name().parse::<View>().unwrap(), v);
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{v}\""));
        }
        assert!("centre".parse::<View>().is_err());
    }

    #[test]
    fn corner_views_are_the_corners_of_the_resized_image() {
        // 300 x 200 with a distinct colour in each corner quadrant.
        let img = RgbImage::from_fn(300, 200, |x, y| {
            image::Rgb([if x < 150 { 0 } else { 255 }, if y < 100 { 0 } else { 255 }, 7])
        });
        let cfg = PreprocessConfig::imagenet();
        // Shorter side 200 -> 256: 384 x 256; each corner square is 224 wide.
        for (view, want) in [
            (View::TopLeft, [0, 0]),
            (View::TopRight, [255, 0]),
            (View::BottomLeft, [0, 255]),
            (View::BottomRight, [255, 255]),
        ] {
            let v = cfg.view(&img, view);
            assert_eq!(v.dimensions(), (224, 224));
            let corner = v.get_pixel(if want[0] == 0 { 0 } else { 223 }, if want[1] == 0 { 0 } else { 223 });
            assert_eq!([corner[0], corner[1]], want, "{view}");
        }
    }

    #[test]
    fn zoom_views_are_a_grid_at_double_scale() {
        // 300 x 200 with a distinct colour in each quadrant.
        let img = RgbImage::from_fn(300, 200, |x, y| {
            image::Rgb([if x < 150 { 0 } else { 255 }, if y < 100 { 0 } else { 255 }, 7])
        });
        let cfg = PreprocessConfig::imagenet();
        // Shorter side 200 -> 448: 672 x 448; each zoomed corner square (224) lies inside one
        // quadrant (336 x 224), unlike the corner views, whose squares cross the middle.
        for (view, want) in [
            (View::ZoomTopLeft, [0, 0]),
            (View::ZoomTopRight, [255, 0]),
            (View::ZoomBottomLeft, [0, 255]),
            (View::ZoomBottomRight, [255, 255]),
        ] {
            let v = cfg.view(&img, view);
            assert_eq!(v.dimensions(), (224, 224));
            // A few pixels in from the square's edges: where two quadrants meet, resampling blends.
            for (x, y) in [(3, 3), (220, 3), (3, 220), (220, 220), (112, 112)] {
                let p = v.get_pixel(x, y);
                assert_eq!([p[0], p[1]], want, "{view} at ({x}, {y})");
            }
        }
        // The zoomed centre square straddles all four quadrants.
        let v = cfg.view(&img, View::ZoomCenter);
        assert_eq!(v.dimensions(), (224, 224));
        for ((x, y), want) in [((0, 0), [0, 0]), ((223, 0), [255, 0]), ((0, 223), [0, 255]), ((223, 223), [255, 255])] {
            let p = v.get_pixel(x, y);
            assert_eq!([p[0], p[1]], want, "zoom-center at ({x}, {y})");
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mut cfg = PreprocessConfig::imagenet();
        cfg.crop = 300;
        assert!(cfg.validate().is_err());
        let mut cfg = PreprocessConfig::imagenet();
        cfg.std[1] = 0.0;
        assert!(cfg.validate().is_err());
    }

    // ---- open_rgb: formats, orientation, truncation, bad files, decompression bombs ----

    use image::{codecs, ExtendedColorType, ImageEncoder};

    /// Writes `bytes` to `dir/name` and returns the path.
    fn file(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A `w x h` image with a different colour at every pixel.
    fn distinct(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(40 * x) as u8, (100 * y) as u8, 200]))
    }

    /// A minimal EXIF block (a TIFF header and one IFD) holding only the orientation tag, as an
    /// encoder puts it after `Exif\0\0` in a JPEG's APP1 segment or in a PNG's eXIf chunk.
    fn exif_orientation(orientation: u16) -> Vec<u8> {
        let mut b = b"II*\0".to_vec(); // little-endian TIFF header
        b.extend(8u32.to_le_bytes()); // the IFD starts right after it
        b.extend(1u16.to_le_bytes()); // one entry:
        b.extend(0x0112u16.to_le_bytes()); //   tag Orientation
        b.extend(3u16.to_le_bytes()); //   type SHORT
        b.extend(1u32.to_le_bytes()); //   one value
        b.extend([orientation.to_le_bytes(), [0, 0]].concat()); //   the value, padded to 4 bytes
        b.extend(0u32.to_le_bytes()); // no next IFD
        b
    }

    fn png(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = codecs::png::PngEncoder::new(&mut out);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8).unwrap();
        out
    }

    fn jpeg(img: &RgbImage, exif: Option<Vec<u8>>) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95);
        if let Some(exif) = exif {
            enc.set_exif_metadata(exif).unwrap();
        }
        enc.write_image(img.as_raw(), img.width(), img.height(), ExtendedColorType::Rgb8).unwrap();
        out
    }

    /// `open_rgb` on a PNG of `img` tagged with `orientation` gives exactly `want`.
    #[track_caller]
    fn check_orientation(orientation: u16, img: &RgbImage, want: &RgbImage) {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "tagged.png", &png(img, Some(exif_orientation(orientation))));
        let got = open_rgb(&path).unwrap();
        assert_eq!(got.dimensions(), want.dimensions(), "orientation {orientation}");
        assert_eq!(got.as_raw(), want.as_raw(), "orientation {orientation}");
    }

    #[test]
    fn exif_orientation_turns_the_picture_upright() {
        let img = distinct(4, 2);
        let (w, h) = img.dimensions();
        // 6: the camera was turned a quarter clockwise; the picture is rotated 90 degrees
        // clockwise: 4x2 becomes 2x4, the top-left pixel goes to the top-right corner.
        let want = RgbImage::from_fn(h, w, |x, y| *img.get_pixel(y, h - 1 - x));
        assert_eq!(want.get_pixel(1, 0), img.get_pixel(0, 0));
        assert_eq!(want.get_pixel(1, 3), img.get_pixel(3, 0));
        check_orientation(6, &img, &want);
        // 3: rotated 180 degrees; 8: 90 degrees anticlockwise; 2: mirrored; 1: as stored.
        check_orientation(3, &img, &RgbImage::from_fn(w, h, |x, y| *img.get_pixel(w - 1 - x, h - 1 - y)));
        check_orientation(8, &img, &RgbImage::from_fn(h, w, |x, y| *img.get_pixel(w - 1 - y, x)));
        check_orientation(2, &img, &RgbImage::from_fn(w, h, |x, y| *img.get_pixel(w - 1 - x, y)));
        check_orientation(1, &img, &img);

        // The same in a JPEG (EXIF in its APP1 segment): left half red, right half blue, in
        // 8-pixel blocks so that compression keeps the colours; rotated, red is on top.
        let img = RgbImage::from_fn(32, 16, |x, _| image::Rgb(if x < 16 { [255, 0, 0] } else { [0, 0, 255] }));
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "tagged.jpg", &jpeg(&img, Some(exif_orientation(6))));
        let got = open_rgb(&path).unwrap();
        assert_eq!(got.dimensions(), (16, 32));
        let near = |p: &image::Rgb<u8>, want: [u8; 3]| p.0.iter().zip(want).all(|(a, b)| a.abs_diff(b) < 40);
        assert!(near(got.get_pixel(8, 4), [255, 0, 0]), "{:?}", got.get_pixel(8, 4));
        assert!(near(got.get_pixel(8, 28), [0, 0, 255]), "{:?}", got.get_pixel(8, 28));
        // Untagged, it stays as stored.
        let path = file(dir.path(), "plain.jpg", &jpeg(&img, None));
        assert_eq!(open_rgb(&path).unwrap().dimensions(), (32, 16));
    }

    #[test]
    fn every_enabled_format_decodes() {
        let dir = tempfile::tempdir().unwrap();
        let img = distinct(5, 3);
        for (name, format) in [
            ("a.png", ImageFormat::Png),
            ("a.webp", ImageFormat::WebP),
            ("a.gif", ImageFormat::Gif),
            ("a.bmp", ImageFormat::Bmp),
            ("a.tiff", ImageFormat::Tiff),
        ] {
            let mut bytes = Cursor::new(Vec::new());
            DynamicImage::ImageRgb8(img.clone()).write_to(&mut bytes, format).unwrap();
            let path = file(dir.path(), name, bytes.get_ref());
            // Lossless (the GIF palette holds all 15 colours): exactly the pixels written.
            assert_eq!(open_rgb(&path).unwrap(), img, "{name}");
        }
        // The format comes from the bytes, not the name.
        let path = file(dir.path(), "really-a-png.jpg", &png(&img, None));
        assert_eq!(open_rgb(&path).unwrap(), img);
        // An animated GIF gives its first frame.
        let mut gif = Vec::new();
        let frames = [image::Rgba([255, 0, 0, 255]), image::Rgba([0, 255, 0, 255])]
            .map(|px| image::Frame::new(image::RgbaImage::from_pixel(4, 4, px)));
        codecs::gif::GifEncoder::new(&mut gif).encode_frames(frames).unwrap();
        let path = file(dir.path(), "animated.gif", &gif);
        assert_eq!(open_rgb(&path).unwrap(), RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0])));
    }

    /// A JPEG with detail (so its scan is long) and a comment segment holding an end-of-image
    /// marker, as an EXIF thumbnail does: a check that looked for `FF D9` anywhere would pass a
    /// truncated file.
    fn detailed_jpeg() -> Vec<u8> {
        let img = RgbImage::from_fn(64, 48, |x, y| image::Rgb([(x * 4) as u8, (y * 5) as u8, ((x * y) % 256) as u8]));
        let encoded = jpeg(&img, None);
        // COM segment: FF FE, length 6 (itself and 4 bytes), then the payload.
        let comment = [0xFF, 0xFE, 0x00, 0x06, 0xFF, 0xD9, 0xFF, 0xD9];
        [&encoded[..2], &comment[..], &encoded[2..]].concat()
    }

    #[test]
    fn truncated_jpegs_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let full = detailed_jpeg();
        assert_eq!(full[full.len() - 2..], [0xFF, 0xD9]);
        assert_eq!(open_rgb(&file(dir.path(), "full.jpg", &full)).unwrap().dimensions(), (64, 48));
        for (name, keep) in
            [("no-eoi.jpg", full.len() - 2), ("cut-90.jpg", full.len() * 9 / 10), ("cut-half.jpg", full.len() / 2)]
        {
            let path = file(dir.path(), name, &full[..keep]);
            let err = open_rgb(&path).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{name}: {err:?}");
            let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(msg.contains(name) && msg.contains("truncated"), "{msg}");
        }
        // Bytes after the end-of-image marker are not a truncation: padding, or the video of
        // a phone's motion photo.
        for (name, tail) in
            [("zeros.jpg", &[0u8; 16][..]), ("spaces.jpg", b" \r\n\t"), ("video.jpg", b"\0\0\0\x18ftypmp42")]
        {
            let path = file(dir.path(), name, &[&full[..], tail].concat());
            assert_eq!(open_rgb(&path).unwrap().dimensions(), (64, 48), "{name}");
        }
    }

    #[test]
    fn jpeg_structure_walk() {
        let full = detailed_jpeg();
        assert!(!jpeg_is_truncated(&full));
        assert!(jpeg_is_truncated(&full[..full.len() - 1]));
        // Cut inside the comment, just after its embedded FF D9.
        assert!(jpeg_is_truncated(&full[..8]));
        // Not a JPEG, or malformed: left to the decoder.
        assert!(!jpeg_is_truncated(b"GIF89a"));
        assert!(!jpeg_is_truncated(&[0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x01]));
        // Stuffed zeros, restart markers and fill bytes in the scan are not its end.
        let scan = [0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56, 0xFF, 0xFF, 0xD9];
        assert!(!jpeg_is_truncated(&scan));
        assert!(jpeg_is_truncated(&scan[..12]));
    }

    #[test]
    fn empty_and_non_image_files_are_errors_naming_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes, reason) in [
            ("empty.jpg", &b""[..], "empty"),
            ("notes.png", b"this is not an image", "format could not be determined"),
            ("half-a-header.webp", b"RIFF", "format could not be determined"),
        ] {
            let err = open_rgb(&file(dir.path(), name, bytes)).unwrap_err();
            assert!(matches!(err, Error::Decode { .. }), "{name}: {err:?}");
            let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(msg.contains(name) && msg.contains(reason), "{msg}");
        }
        // A corrupt PNG: right signature, broken header.
        let mut bad = png(&distinct(4, 2), None);
        bad[20] ^= 0xFF;
        let err = open_rgb(&file(dir.path(), "corrupt.png", &bad)).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }) && err.to_string().contains("corrupt.png"), "{err:?}");
        // A folder named like an image, and a missing file: read errors.
        std::fs::create_dir(dir.path().join("folder.jpg")).unwrap();
        for name in ["folder.jpg", "missing.jpg"] {
            let err = open_rgb(&dir.path().join(name)).unwrap_err();
            assert!(matches!(err, Error::Read { .. }) && err.to_string().contains(name), "{err:?}");
        }
    }

    /// Bitwise CRC-32 (IEEE, as PNG chunks use it).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }

    /// A PNG that only declares its size: signature, IHDR (8-bit, colour type 2 = RGB), a
    /// token IDAT and IEND, each chunk with its CRC.
    fn png_header(width: u32, height: u32) -> Vec<u8> {
        let chunk = |kind: &[u8; 4], data: &[u8]| {
            let body = [&kind[..], data].concat();
            [&(data.len() as u32).to_be_bytes()[..], &body, &crc32(&body).to_be_bytes()].concat()
        };
        let ihdr = [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 2, 0, 0, 0]].concat();
        [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &[0x78, 0x9C]), &chunk(b"IEND", &[])]
            .concat()
    }

    #[test]
    fn a_file_larger_than_any_decodable_image_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("huge.jpg");
        // Sparse: no disk space is used, and the file is never read.
        std::fs::File::create(&path).unwrap().set_len(MAX_DECODED_BYTES + 1).unwrap();
        let err = read_image_file(&path).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
        let why = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(why.contains("huge.jpg") && why.contains(&format!("{} bytes", MAX_DECODED_BYTES + 1)), "{why}");
    }

    #[test]
    fn decompression_bombs_are_refused_before_decoding() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        let dir = tempfile::tempdir().unwrap();
        for (name, w, h) in [("bomb.png", 100_000, 100_000), ("wide.png", 20_001, 1), ("big.png", 15_000, 15_000)] {
            let err = open_rgb(&file(dir.path(), name, &png_header(w, h))).unwrap_err();
            assert!(matches!(err, Error::TooLarge { width, height, .. } if (width, height) == (w, h)), "{err:?}");
            let msg = err.to_string();
            assert!(msg.contains(name) && msg.contains(&format!("{w}x{h}")) && msg.contains("too large"), "{msg}");
        }
        // Within the limits, the same header is an ordinary decoding error (no pixel data).
        let err = open_rgb(&file(dir.path(), "small.png", &png_header(64, 64))).unwrap_err();
        assert!(matches!(err, Error::Decode { .. }), "{err:?}");
    }
}
