//! PNG encoding shared by the plot and sheet modules; the file is written atomically by
//! imsearch-fsio, like every file of this crate.

use std::io::Cursor;
use std::path::Path;

use image::{ImageFormat, RgbImage};

use crate::{Error, Result};

/// Encodes `img` as PNG and writes it atomically to `path`. The parent directory must exist.
pub(crate) fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Cursor::new(Vec::new());
    img.write_to(&mut bytes, ImageFormat::Png).map_err(|source| Error::Encode { path: path.to_owned(), source })?;
    Ok(imsearch_fsio::write_bytes_atomic(path, bytes.get_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_replaces_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.png");
        write_png(&path, &RgbImage::new(2, 1)).unwrap();
        write_png(&path, &RgbImage::new(3, 1)).unwrap();
        assert_eq!(image::open(&path).unwrap().width(), 3);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.png")]);
    }

    #[test]
    fn write_into_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("a.png");
        let err = write_png(&path, &RgbImage::new(1, 1)).unwrap_err();
        assert!(matches!(&err, Error::Write { path: p, .. } if p == &path), "{err:?}");
        assert!(err.to_string().contains("a.png"), "{err}");
    }
}
