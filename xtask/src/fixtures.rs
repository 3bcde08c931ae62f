//! `cargo xtask fixtures`: writes imsearch-data's tiny dataset (`fixtures::tiny`) under
//! `fixtures/tiny`, its images encoded here as JPEG, byte for byte the same on every run;
//! `--check` fails when the committed copy differs.

use std::path::Path;

use anyhow::{ensure, Context, Result};
use image::{codecs::jpeg::JpegEncoder, ExtendedColorType, ImageEncoder};
use imsearch_data::fixtures::{self, FixtureImage};

#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// Compare the committed fixtures with freshly generated ones instead of writing them.
    #[arg(long)]
    pub(crate) check: bool,
}

pub(crate) fn run(root: &Path, args: &Args) -> Result<()> {
    let dir = root.join("fixtures/tiny");
    let files = fixtures::tiny().files(jpeg)?;
    if args.check {
        let stale = fixtures::compare(&dir, &files)?;
        ensure!(stale.is_empty(), "{} is out of date ({stale}); run `cargo xtask fixtures`", dir.display());
        println!("{} is up to date ({} files)", dir.display(), files.len());
    } else {
        fixtures::write(&dir, &files)?;
        println!("wrote {} files to {}", files.len(), dir.display());
    }
    Ok(())
}

/// JPEG at quality 90, the encoding of the committed images.
fn jpeg(image: &FixtureImage) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(&image.rgb, image.width, image.height, ExtendedColorType::Rgb8)
        .with_context(|| format!("failed to encode {}", image.path))?;
    Ok(out)
}
