//! Row readers for the dataset's five annotation files, with per-row validation.
//!
//! Each reader streams its file through the `csv` crate, checks every row (column count,
//! types, ranges, id formats) and returns typed rows that remember their line number.

use std::{fs::File, path::Path};

use imsearch_types::{CrowdVotes, ExpertGrades, ImageId, QueryId};

use crate::{files, Error, Result};

/// How far the crowd's stated fraction may be from `yes / (yes + no)`.
pub const FRACTION_TOLERANCE: f64 = 1e-6;

/// A row of `train_dataset.csv`: an image paired with a caption written for (usually) another image.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainRow {
    pub line: u64,
    pub image: ImageId,
    pub query: QueryId,
    pub text: String,
}

/// A row of `CrowdAnnotations.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CrowdRow {
    pub line: u64,
    pub image: ImageId,
    pub query: QueryId,
    pub fraction: f64,
    pub votes: CrowdVotes,
}

/// A row of `ExpertAnnotations.tsv`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpertRow {
    pub line: u64,
    pub image: ImageId,
    pub query: QueryId,
    pub grades: ExpertGrades,
}

/// A row of `test_queries.csv`: a caption and the image it was written for.
#[derive(Debug, Clone, PartialEq)]
pub struct TestQuery {
    pub line: u64,
    pub index: u64,
    pub query: QueryId,
    pub text: String,
    pub image: ImageId,
}

/// A row of `test_images.csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestImageRow {
    pub line: u64,
    pub image: ImageId,
}

/// What to do with a row that fails validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBadRow {
    /// Stop with an error naming the file, line and field (the default).
    #[default]
    Error,
    /// Skip the row and count it, with its error, in the report.
    Skip,
}

/// One file's layout: delimiter, header, column names.
struct Layout {
    delimiter: u8,
    /// The header row when the file has one; the column names are used in messages either way.
    header: Option<&'static [&'static str]>,
    columns: &'static [&'static str],
    quoting: bool,
}

const TRAIN: Layout = Layout {
    delimiter: b',',
    header: Some(&["image", "query_id", "query_text"]),
    columns: &["image", "query_id", "query_text"],
    quoting: true,
};
const CROWD: Layout =
    Layout { delimiter: b'\t', header: None, columns: &["image", "query_id", "fraction", "yes", "no"], quoting: false };
const EXPERT: Layout = Layout {
    delimiter: b'\t',
    header: None,
    columns: &["image", "query_id", "expert_1", "expert_2", "expert_3"],
    quoting: false,
};
const TEST_QUERIES: Layout = Layout {
    delimiter: b'|',
    header: Some(&["", "query_id", "query_text", "image"]),
    columns: &["index", "query_id", "query_text", "image"],
    quoting: true,
};
const TEST_IMAGES: Layout = Layout { delimiter: b',', header: Some(&["image"]), columns: &["image"], quoting: true };

/// A bad row that was skipped under [`OnBadRow::Skip`].
pub(crate) type Rejected = Vec<(u64, Error)>;

/// Reads every record of `path`, validating the header and column count, and hands each row's
/// fields to `parse`. Bad rows are errors or, under [`OnBadRow::Skip`], collected in `rejected`.
fn read_rows<T>(
    path: &Path,
    layout: &Layout,
    on_bad: OnBadRow,
    rejected: &mut Rejected,
    mut parse: impl FnMut(&Fields<'_>) -> Result<T>,
) -> Result<Vec<T>> {
    let file = File::open(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(layout.delimiter)
        .has_headers(false)
        .flexible(true)
        .quoting(layout.quoting)
        .double_quote(true)
        .from_reader(std::io::BufReader::new(file));
    let mut out = Vec::new();
    let mut record = csv::StringRecord::new();
    let mut first = true;
    loop {
        let more = match reader.read_record(&mut record) {
            Ok(more) => more,
            Err(err) => {
                let line = err.position().map_or(0, |p| p.line());
                let error = csv_error(path, line, err);
                // An I/O error ends the file; a malformed row can be skipped.
                if on_bad == OnBadRow::Skip && !matches!(error, Error::Read { .. }) {
                    rejected.push((line, error));
                    continue;
                }
                return Err(error);
            }
        };
        if !more {
            break;
        }
        let line = record.position().map_or(0, |p| p.line());
        if std::mem::take(&mut first) {
            if let Some(header) = layout.header {
                let found: Vec<&str> = record.iter().map(|f| f.trim_start_matches('\u{feff}')).collect();
                if found != header {
                    return Err(Error::Header {
                        path: path.to_owned(),
                        expected: header.to_vec(),
                        found: found.iter().map(|s| s.to_string()).collect(),
                    });
                }
                continue;
            }
        }
        let result = if record.len() != layout.columns.len() {
            Err(Error::Columns { path: path.to_owned(), line, expected: layout.columns.len(), found: record.len() })
        } else {
            parse(&Fields { path, line, record: &record, names: layout.columns })
        };
        match result {
            Ok(row) => out.push(row),
            Err(error) if on_bad == OnBadRow::Skip => rejected.push((line, error)),
            Err(error) => return Err(error),
        }
    }
    Ok(out)
}

fn csv_error(path: &Path, line: u64, err: csv::Error) -> Error {
    match err.into_kind() {
        csv::ErrorKind::Io(source) => Error::Read { path: path.to_owned(), source },
        csv::ErrorKind::Utf8 { err, .. } => {
            Error::Csv { path: path.to_owned(), line, message: format!("invalid UTF-8 in field {}", err.field() + 1) }
        }
        other => Error::Csv { path: path.to_owned(), line, message: format!("{other:?}") },
    }
}

/// The fields of one record, with what is needed to report a bad one.
struct Fields<'a> {
    path: &'a Path,
    line: u64,
    record: &'a csv::StringRecord,
    names: &'static [&'static str],
}

impl Fields<'_> {
    fn error(&self, i: usize, message: impl Into<String>) -> Error {
        Error::Field { path: self.path.to_owned(), line: self.line, field: self.names[i], message: message.into() }
    }

    fn raw(&self, i: usize) -> &str {
        &self.record[i]
    }

    /// A non-empty text (surrounding whitespace removed).
    fn text(&self, i: usize) -> Result<String> {
        let s = self.raw(i).trim();
        if s.is_empty() {
            return Err(self.error(i, "is empty"));
        }
        Ok(s.to_owned())
    }

    /// An image file name: non-empty, no directory parts.
    fn image(&self, i: usize) -> Result<ImageId> {
        let s = self.raw(i).trim();
        if s.is_empty() {
            return Err(self.error(i, "is empty"));
        }
        if s.contains(['/', '\\']) || s == "." || s == ".." {
            return Err(self.error(i, format!("{s:?} is not a plain file name")));
        }
        Ok(ImageId(s.to_owned()))
    }

    fn query(&self, i: usize) -> Result<QueryId> {
        QueryId::parse(self.raw(i).trim()).map_err(|e| self.error(i, e.to_string()))
    }

    fn uint(&self, i: usize) -> Result<u64> {
        let s = self.raw(i).trim();
        s.parse().map_err(|_| self.error(i, format!("{s:?} is not a non-negative integer")))
    }

    fn float(&self, i: usize) -> Result<f64> {
        let s = self.raw(i).trim();
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.error(i, format!("{s:?} is not a number"))),
        }
    }

    fn grade(&self, i: usize) -> Result<u8> {
        match self.uint(i) {
            Ok(g @ 1..=4) => Ok(g as u8),
            _ => Err(self.error(i, format!("{:?} is not an expert grade in 1..=4", self.raw(i).trim()))),
        }
    }
}

pub(crate) fn train_dataset(path: &Path, on_bad: OnBadRow, rejected: &mut Rejected) -> Result<Vec<TrainRow>> {
    read_rows(path, &TRAIN, on_bad, rejected, |f| {
        Ok(TrainRow { line: f.line, image: f.image(0)?, query: f.query(1)?, text: f.text(2)? })
    })
}

pub(crate) fn crowd(path: &Path, on_bad: OnBadRow, rejected: &mut Rejected) -> Result<Vec<CrowdRow>> {
    read_rows(path, &CROWD, on_bad, rejected, |f| {
        let (image, query) = (f.image(0)?, f.query(1)?);
        let fraction = f.float(2)?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(f.error(2, format!("{fraction} is outside 0..=1")));
        }
        let (yes, no) = (f.uint(3)?, f.uint(4)?);
        let (Ok(yes), Ok(no)) = (u32::try_from(yes), u32::try_from(no)) else {
            return Err(f.error(3, "vote count too large"));
        };
        let votes = CrowdVotes { yes, no };
        let Some(expected) = votes.fraction() else {
            return Err(f.error(3, "no votes (yes + no = 0)"));
        };
        if (fraction - f64::from(yes) / f64::from(yes + no)).abs() > FRACTION_TOLERANCE {
            return Err(f.error(2, format!("{fraction} differs from yes/(yes+no) = {yes}/{} = {expected}", yes + no)));
        }
        Ok(CrowdRow { line: f.line, image, query, fraction, votes })
    })
}

pub(crate) fn expert(path: &Path, on_bad: OnBadRow, rejected: &mut Rejected) -> Result<Vec<ExpertRow>> {
    read_rows(path, &EXPERT, on_bad, rejected, |f| {
        let (image, query) = (f.image(0)?, f.query(1)?);
        let grades = ExpertGrades([f.grade(2)?, f.grade(3)?, f.grade(4)?]);
        Ok(ExpertRow { line: f.line, image, query, grades })
    })
}

pub(crate) fn test_queries(path: &Path, on_bad: OnBadRow, rejected: &mut Rejected) -> Result<Vec<TestQuery>> {
    read_rows(path, &TEST_QUERIES, on_bad, rejected, |f| {
        Ok(TestQuery { line: f.line, index: f.uint(0)?, query: f.query(1)?, text: f.text(2)?, image: f.image(3)? })
    })
}

pub(crate) fn test_images(path: &Path, on_bad: OnBadRow, rejected: &mut Rejected) -> Result<Vec<TestImageRow>> {
    read_rows(path, &TEST_IMAGES, on_bad, rejected, |f| Ok(TestImageRow { line: f.line, image: f.image(0)? }))
}

/// The column names of each annotation file as this crate names them (the TSVs have no header).
pub fn column_names(file: &str) -> Option<&'static [&'static str]> {
    Some(match file {
        files::TRAIN_DATASET => TRAIN.columns,
        files::CROWD => CROWD.columns,
        files::EXPERT => EXPERT.columns,
        files::TEST_QUERIES => TEST_QUERIES.columns,
        files::TEST_IMAGES => TEST_IMAGES.columns,
        _ => return None,
    })
}
