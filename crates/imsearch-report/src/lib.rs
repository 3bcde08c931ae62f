//! Turns plain data into things a person looks at: describe-style tables, PNG plots, image
//! sheets (grids of captioned tiles) and small HTML pages; and two reports made of them:
//! [`results`] (ranked results of labelled queries: a contact sheet, a PNG per query and a page,
//! blocked queries and results shown as the disclaimer the caller passes) and [`dataset`] (the
//! plots and the page that explain a graded dataset).
//!
//! Architecture invariant: this crate sits at the edge of the pipeline, next to the binaries
//! (`cargo xtask eda`, the search demo). It takes plain Rust data (slices, strings, paths,
//! `image::RgbImage`) and must never depend on another imsearch crate but imsearch-fsio, nor on
//! candle, so that rendering a report never pulls in a model. `cargo tree -p imsearch-report -e
//! normal` must show no `imsearch-*` package other than `imsearch-fsio` and no `candle-*`.
//!
//! Text in PNGs is drawn with DejaVu Sans embedded in the binary (the `dejavu` crate), so no
//! system font is needed at run time. Every file is written atomically by imsearch-fsio: to a
//! temporary name in the destination directory, then renamed.

pub mod dataset;
pub mod describe;
pub mod html;
pub mod plot;
pub mod results;
pub mod sheet;

mod error;
mod fonts;
mod fsutil;

pub use error::{Error, Result};
