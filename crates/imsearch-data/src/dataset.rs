//! A whole dataset directory loaded and cross-checked: duplicate pairs, images missing on disk,
//! images on disk that nothing references, captions with conflicting texts.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use imsearch_types::{ImageId, QueryId};
use serde::Serialize;

use crate::{
    files,
    read::{self, CrowdRow, ExpertRow, OnBadRow, TestImageRow, TestQuery, TrainRow},
    Error, Result,
};

/// Options for [`Dataset::load`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    pub on_bad_row: OnBadRow,
}

/// Why a row was left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SkipReason {
    /// The row failed validation (only under [`OnBadRow::Skip`]).
    Malformed { message: String },
    /// The same (image, query) pair already appeared on an earlier line.
    DuplicatePair { first_line: u64 },
    /// The row names an image that is not in the image folder.
    MissingImage { image: ImageId },
    /// The caption's text differs from the text it was given on an earlier line.
    ConflictingText { first_line: u64 },
}

impl SkipReason {
    /// A short, stable name for counting.
    pub fn kind(&self) -> &'static str {
        match self {
            SkipReason::Malformed { .. } => "malformed row",
            SkipReason::DuplicatePair { .. } => "duplicate pair",
            SkipReason::MissingImage { .. } => "image missing on disk",
            SkipReason::ConflictingText { .. } => "conflicting caption text",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Malformed { message } => write!(f, "malformed row: {message}"),
            SkipReason::DuplicatePair { first_line } => write!(f, "duplicate pair (first on line {first_line})"),
            SkipReason::MissingImage { image } => write!(f, "image {image} missing on disk"),
            SkipReason::ConflictingText { first_line } => {
                write!(f, "caption text differs from line {first_line}")
            }
        }
    }
}

/// A row left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skip {
    pub line: u64,
    pub reason: SkipReason,
}

/// What happened to one file's rows.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileReport {
    pub file: String,
    /// Data rows in the file (the header excluded).
    pub rows_read: usize,
    pub rows_kept: usize,
    pub skips: Vec<Skip>,
}

impl FileReport {
    fn new(file: &str) -> Self {
        FileReport { file: file.to_owned(), ..Default::default() }
    }

    /// Skipped rows counted by reason.
    pub fn skip_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for skip in &self.skips {
            *counts.entry(skip.reason.kind()).or_default() += 1;
        }
        counts
    }
}

/// Everything [`Dataset::load`] left out or noticed, per file.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub files: Vec<FileReport>,
    /// Images in `train_images/` that no annotation file names.
    pub unreferenced_train_images: Vec<ImageId>,
    /// Images in `test_images/` that neither test file names.
    pub unreferenced_test_images: Vec<ImageId>,
    /// Entries of the image folders that are not image files (other extensions, folders).
    pub ignored_entries: Vec<PathBuf>,
}

impl LoadReport {
    pub fn file(&self, name: &str) -> Option<&FileReport> {
        self.files.iter().find(|f| f.file == name)
    }

    pub fn total_skipped(&self) -> usize {
        self.files.iter().map(|f| f.skips.len()).sum()
    }

    /// Skipped rows counted as (file, reason, rows), files in reading order, reasons sorted.
    pub fn skipped(&self) -> Vec<(&str, &'static str, usize)> {
        let per_file = self.files.iter().map(|f| f.skip_counts().into_iter().map(|(r, n)| (f.file.as_str(), r, n)));
        per_file.flatten().collect()
    }
}

/// A dataset directory in its published layout, validated.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub root: PathBuf,
    pub train: Vec<TrainRow>,
    pub crowd: Vec<CrowdRow>,
    pub expert: Vec<ExpertRow>,
    pub test_queries: Vec<TestQuery>,
    pub test_images: Vec<TestImageRow>,
    /// The image files found in `train_images/`.
    pub train_image_files: BTreeSet<ImageId>,
    /// The image files found in `test_images/`.
    pub test_image_files: BTreeSet<ImageId>,
    pub report: LoadReport,
}

const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png"];

impl Dataset {
    /// Reads and validates every file of the dataset at `root`.
    ///
    /// A malformed row is an error naming the file, line and field, unless `options` say to skip
    /// it. Rows that are well-formed but unusable (duplicates, missing images, conflicting
    /// caption texts) are always skipped and counted in [`Dataset::report`].
    pub fn load(root: impl AsRef<Path>, options: LoadOptions) -> Result<Dataset> {
        let root = root.as_ref();
        let on_bad = options.on_bad_row;
        let mut report = LoadReport::default();
        let train_image_files = list_images(&root.join(files::TRAIN_IMAGE_DIR), &mut report.ignored_entries)?;
        let test_image_files = list_images(&root.join(files::TEST_IMAGE_DIR), &mut report.ignored_entries)?;

        let mut rejected = Vec::new();
        let mut train_report = FileReport::new(files::TRAIN_DATASET);
        let train = read::train_dataset(&root.join(files::TRAIN_DATASET), on_bad, &mut rejected)?;
        finish_rejected(&mut train_report, train.len(), &mut rejected);
        let mut crowd_report = FileReport::new(files::CROWD);
        let crowd = read::crowd(&root.join(files::CROWD), on_bad, &mut rejected)?;
        finish_rejected(&mut crowd_report, crowd.len(), &mut rejected);
        let mut expert_report = FileReport::new(files::EXPERT);
        let expert = read::expert(&root.join(files::EXPERT), on_bad, &mut rejected)?;
        finish_rejected(&mut expert_report, expert.len(), &mut rejected);
        let mut tq_report = FileReport::new(files::TEST_QUERIES);
        let test_queries = read::test_queries(&root.join(files::TEST_QUERIES), on_bad, &mut rejected)?;
        finish_rejected(&mut tq_report, test_queries.len(), &mut rejected);
        let mut ti_report = FileReport::new(files::TEST_IMAGES);
        let test_images = read::test_images(&root.join(files::TEST_IMAGES), on_bad, &mut rejected)?;
        finish_rejected(&mut ti_report, test_images.len(), &mut rejected);

        // Cross-row checks, file by file.
        let mut texts: HashMap<QueryId, (u64, String)> = HashMap::new();
        let train = retain(train, &mut train_report, |r, seen| {
            pair_checks(seen, (&r.image, &r.query), r.line, &train_image_files).or_else(|| match texts.get(&r.query) {
                Some((first_line, text)) if *text != r.text => {
                    Some(SkipReason::ConflictingText { first_line: *first_line })
                }
                Some(_) => None,
                None => {
                    texts.insert(r.query.clone(), (r.line, r.text.clone()));
                    None
                }
            })
        });
        let crowd = retain(crowd, &mut crowd_report, |r, seen| {
            pair_checks(seen, (&r.image, &r.query), r.line, &train_image_files)
        });
        let expert = retain(expert, &mut expert_report, |r, seen| {
            pair_checks(seen, (&r.image, &r.query), r.line, &train_image_files)
        });
        let mut test_texts: HashMap<QueryId, (u64, String)> = HashMap::new();
        let test_queries = retain(test_queries, &mut tq_report, |r, seen| {
            pair_checks(seen, (&r.image, &r.query), r.line, &test_image_files).or_else(|| {
                let first = test_texts.entry(r.query.clone()).or_insert((r.line, r.text.clone()));
                (first.1 != r.text).then_some(SkipReason::ConflictingText { first_line: first.0 })
            })
        });
        let mut seen_images: HashMap<ImageId, u64> = HashMap::new();
        let test_images = retain(test_images, &mut ti_report, |r, _| {
            if let Some(&first_line) = seen_images.get(&r.image) {
                return Some(SkipReason::DuplicatePair { first_line });
            }
            seen_images.insert(r.image.clone(), r.line);
            (!test_image_files.contains(&r.image)).then(|| SkipReason::MissingImage { image: r.image.clone() })
        });

        let referenced_train: BTreeSet<&ImageId> = train
            .iter()
            .map(|r| &r.image)
            .chain(crowd.iter().map(|r| &r.image))
            .chain(expert.iter().map(|r| &r.image))
            .chain(train.iter().map(|r| r.query.source_image()))
            .collect();
        report.unreferenced_train_images =
            train_image_files.iter().filter(|i| !referenced_train.contains(i)).cloned().collect();
        let referenced_test: BTreeSet<&ImageId> =
            test_queries.iter().map(|r| &r.image).chain(test_images.iter().map(|r| &r.image)).collect();
        report.unreferenced_test_images =
            test_image_files.iter().filter(|i| !referenced_test.contains(i)).cloned().collect();
        report.files = vec![train_report, crowd_report, expert_report, tq_report, ti_report];

        Ok(Dataset {
            root: root.to_owned(),
            train,
            crowd,
            expert,
            test_queries,
            test_images,
            train_image_files,
            test_image_files,
            report,
        })
    }

    /// Every caption text known from `train_dataset.csv`, by query id.
    pub fn train_captions(&self) -> BTreeMap<QueryId, &str> {
        self.train.iter().map(|r| (r.query.clone(), r.text.as_str())).collect()
    }

    /// The distinct images of the training side: every image named by a train row or annotation.
    pub fn train_images(&self) -> BTreeSet<ImageId> {
        self.train
            .iter()
            .map(|r| r.image.clone())
            .chain(self.crowd.iter().map(|r| r.image.clone()))
            .chain(self.expert.iter().map(|r| r.image.clone()))
            .collect()
    }

    pub fn train_image_path(&self, image: &ImageId) -> PathBuf {
        self.root.join(files::TRAIN_IMAGE_DIR).join(image.as_str())
    }

    pub fn test_image_path(&self, image: &ImageId) -> PathBuf {
        self.root.join(files::TEST_IMAGE_DIR).join(image.as_str())
    }
}

fn finish_rejected(file: &mut FileReport, kept: usize, rejected: &mut read::Rejected) {
    file.skips.extend(
        rejected.drain(..).map(|(line, e)| Skip { line, reason: SkipReason::Malformed { message: e.to_string() } }),
    );
    file.rows_read = kept + file.skips.len();
}

/// Keeps the rows for which `check` finds nothing wrong; records the others in `file`.
fn retain<T>(
    rows: Vec<T>,
    file: &mut FileReport,
    mut check: impl FnMut(&T, &mut HashMap<(ImageId, QueryId), u64>) -> Option<SkipReason>,
) -> Vec<T>
where
    T: HasLine,
{
    let mut seen = HashMap::new();
    let kept: Vec<T> = rows
        .into_iter()
        .filter(|row| match check(row, &mut seen) {
            Some(reason) => {
                file.skips.push(Skip { line: row.line(), reason });
                false
            }
            None => true,
        })
        .collect();
    file.skips.sort_by_key(|s| s.line);
    file.rows_kept = kept.len();
    kept
}

/// Duplicate pair and missing image checks shared by the pair files.
fn pair_checks(
    seen: &mut HashMap<(ImageId, QueryId), u64>,
    (image, query): (&ImageId, &QueryId),
    line: u64,
    on_disk: &BTreeSet<ImageId>,
) -> Option<SkipReason> {
    if let Some(&first_line) = seen.get(&(image.clone(), query.clone())) {
        return Some(SkipReason::DuplicatePair { first_line });
    }
    seen.insert((image.clone(), query.clone()), line);
    (!on_disk.contains(image)).then(|| SkipReason::MissingImage { image: image.clone() })
}

pub(crate) trait HasLine {
    fn line(&self) -> u64;
}

macro_rules! has_line {
    ($($t:ty),*) => { $(impl HasLine for $t { fn line(&self) -> u64 { self.line } })* };
}
has_line!(TrainRow, CrowdRow, ExpertRow, TestQuery, TestImageRow);

/// The image files directly inside `dir`, by file name. A missing folder is an error.
fn list_images(dir: &Path, ignored: &mut Vec<PathBuf>) -> Result<BTreeSet<ImageId>> {
    let entries = std::fs::read_dir(dir).map_err(|source| Error::Read { path: dir.to_owned(), source })?;
    let mut images = BTreeSet::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::Read { path: dir.to_owned(), source })?;
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        match (is_image && path.is_file(), entry.file_name().into_string()) {
            (true, Ok(name)) => {
                images.insert(ImageId(name));
            }
            _ => ignored.push(path),
        }
    }
    Ok(images)
}
