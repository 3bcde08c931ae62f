//! The shared vocabulary of imsearch: image and query ids, captions, graded pairs, scores,
//! embedding matrices and splits.
//!
//! Architecture invariant: this crate sits below every other imsearch crate and depends on
//! `serde` only. It does no I/O and knows nothing of files, tensors or models.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The file name of an image in a dataset directory, e.g. `1056338697_4f7d7ce270.jpg`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ImageId(pub String);

impl ImageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ImageId {
    fn from(s: &str) -> Self {
        ImageId(s.to_owned())
    }
}

/// A caption's id: `<image>#<n>`, the `n`-th caption written for `image`.
///
/// The image named in a query id is the caption's *source* image: the picture the caption was
/// written for. A graded pair may pair the caption with any other image.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueryId {
    image: ImageId,
    n: u32,
}

/// Why a string is not a query id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseQueryIdError {
    pub input: String,
}

impl fmt::Display for ParseQueryIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a query id of the form <image>#<n>", self.input)
    }
}

impl std::error::Error for ParseQueryIdError {}

impl QueryId {
    pub fn new(image: ImageId, n: u32) -> Self {
        QueryId { image, n }
    }

    /// Parses `<image>#<n>`, where `<image>` is non-empty and `<n>` a decimal number.
    pub fn parse(s: &str) -> Result<Self, ParseQueryIdError> {
        let err = || ParseQueryIdError { input: s.to_owned() };
        let (image, n) = s.rsplit_once('#').ok_or_else(err)?;
        if image.is_empty() || image.trim() != image || n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n = n.parse().map_err(|_| err())?;
        Ok(QueryId { image: ImageId(image.to_owned()), n })
    }

    /// The image the caption was written for.
    pub fn source_image(&self) -> &ImageId {
        &self.image
    }

    pub fn n(&self) -> u32 {
        self.n
    }
}

impl fmt::Display for QueryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.image, self.n)
    }
}

impl TryFrom<String> for QueryId {
    type Error = ParseQueryIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        QueryId::parse(&s)
    }
}

impl From<QueryId> for String {
    fn from(q: QueryId) -> String {
        q.to_string()
    }
}

/// A caption: a query id and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caption {
    pub query: QueryId,
    pub text: String,
}

/// A score in `0..=1`: how well a text describes an image.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f32", into = "f32")]
pub struct Score(f32);

/// A number outside `0..=1` (or NaN) offered as a score.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreOutOfRange(pub f32);

impl fmt::Display for ScoreOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "score {} is outside 0..=1", self.0)
    }
}

impl std::error::Error for ScoreOutOfRange {}

impl Score {
    pub fn new(v: f32) -> Result<Self, ScoreOutOfRange> {
        if (0.0..=1.0).contains(&v) {
            Ok(Score(v))
        } else {
            Err(ScoreOutOfRange(v))
        }
    }

    /// Clamps into `0..=1`; NaN becomes 0.
    pub fn saturating(v: f32) -> Self {
        if v.is_nan() {
            Score(0.0)
        } else {
            Score(v.clamp(0.0, 1.0))
        }
    }

    pub fn get(self) -> f32 {
        self.0
    }
}

impl TryFrom<f32> for Score {
    type Error = ScoreOutOfRange;
    fn try_from(v: f32) -> Result<Self, Self::Error> {
        Score::new(v)
    }
}

impl From<Score> for f32 {
    fn from(s: Score) -> f32 {
        s.0
    }
}

/// The crowd's votes on a pair: how many said the caption fits, how many said it does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CrowdVotes {
    pub yes: u32,
    pub no: u32,
}

impl CrowdVotes {
    /// The share of "yes" votes; `None` when nobody voted.
    pub fn fraction(self) -> Option<f32> {
        let total = self.yes + self.no;
        (total > 0).then(|| self.yes as f32 / total as f32)
    }
}

/// The three expert grades of a pair, each in `1..=4`
/// (1: the caption does not describe the image at all, 4: it describes it exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpertGrades(pub [u8; 3]);

impl ExpertGrades {
    /// The grade given by at least two of the three experts; `None` when all three differ.
    pub fn majority(self) -> Option<u8> {
        let [a, b, c] = self.0;
        if a == b || a == c {
            Some(a)
        } else if b == c {
            Some(b)
        } else {
            None
        }
    }

    pub fn mean(self) -> f32 {
        self.0.iter().map(|&g| g as f32).sum::<f32>() / 3.0
    }

    /// Maps a grade (or mean grade) in `1..=4` onto `0..=1`.
    pub fn normalise(grade: f32) -> f32 {
        (grade - 1.0) / 3.0
    }
}

/// Where a pair's grade came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GradeSources {
    pub expert: Option<ExpertGrades>,
    pub crowd: Option<CrowdVotes>,
}

/// Which kind of source a label rests on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Expert,
    Crowd,
    Both,
}

impl GradeSources {
    pub fn kind(&self) -> Option<SourceKind> {
        match (self.expert.is_some(), self.crowd.is_some()) {
            (true, true) => Some(SourceKind::Both),
            (true, false) => Some(SourceKind::Expert),
            (false, true) => Some(SourceKind::Crowd),
            (false, false) => None,
        }
    }
}

/// An image-caption pair with its aggregated label and the grades it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradedPair {
    pub image: ImageId,
    pub query: QueryId,
    pub label: Score,
    pub sources: GradeSources,
}

/// One side of a split by image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Validation,
}

/// Row-major `rows x dim` matrix of `f32` embeddings, one row per item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingMatrix {
    dim: usize,
    data: Vec<f32>,
}

/// `data.len()` is not a multiple of `dim` (or `dim` is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError {
    pub len: usize,
    pub dim: usize,
}

impl fmt::Display for ShapeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} values do not form rows of dimension {}", self.len, self.dim)
    }
}

impl std::error::Error for ShapeError {}

impl EmbeddingMatrix {
    pub fn new(dim: usize, data: Vec<f32>) -> Result<Self, ShapeError> {
        if dim == 0 || !data.len().is_multiple_of(dim) {
            return Err(ShapeError { len: data.len(), dim });
        }
        Ok(EmbeddingMatrix { dim, data })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn rows(&self) -> usize {
        self.data.len() / self.dim
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_query(input: &str, expected: Option<(&str, u32)>) {
        let got = QueryId::parse(input).ok();
        let got = got.as_ref().map(|q| (q.source_image().as_str(), q.n()));
        assert_eq!(got, expected, "{input}");
    }

    #[test]
    fn query_ids() {
        check_query("1056338697_4f7d7ce270.jpg#2", Some(("1056338697_4f7d7ce270.jpg", 2)));
        check_query("a#b#3", Some(("a#b", 3)));
        check_query("1056338697_4f7d7ce270.jpg", None);
        check_query("#2", None);
        check_query("x.jpg#", None);
        check_query("x.jpg#-1", None);
        check_query("x.jpg#1 ", None);
        check_query("x.jpg#99999999999", None);
    }

    #[test]
    fn query_id_round_trips_through_serde() {
        let q = QueryId::parse("x.jpg#4").unwrap();
        let json = serde_json::to_string(&q).unwrap();
        assert_eq!(json, "\"x.jpg#4\"");
        assert_eq!(serde_json::from_str::<QueryId>(&json).unwrap(), q);
        assert!(serde_json::from_str::<QueryId>("\"nope\"").is_err());
    }

    #[test]
    fn majority_vote() {
        assert_eq!(ExpertGrades([1, 1, 2]).majority(), Some(1));
        assert_eq!(ExpertGrades([3, 2, 3]).majority(), Some(3));
        assert_eq!(ExpertGrades([4, 2, 2]).majority(), Some(2));
        assert_eq!(ExpertGrades([4, 4, 4]).majority(), Some(4));
        assert_eq!(ExpertGrades([1, 2, 3]).majority(), None);
    }

    #[test]
    fn scores_stay_in_range() {
        assert!(Score::new(1.01).is_err());
        assert!(Score::new(f32::NAN).is_err());
        assert_eq!(Score::saturating(-3.0).get(), 0.0);
        assert_eq!(Score::saturating(f32::NAN).get(), 0.0);
        assert!(serde_json::from_str::<Score>("2.0").is_err());
    }

    #[test]
    fn embedding_shape_is_checked() {
        assert!(EmbeddingMatrix::new(3, vec![0.0; 7]).is_err());
        assert!(EmbeddingMatrix::new(0, vec![]).is_err());
        let m = EmbeddingMatrix::new(2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.rows(), 2);
        assert_eq!(m.row(1), &[3.0, 4.0]);
    }

    #[test]
    fn crowd_fraction() {
        assert_eq!(CrowdVotes { yes: 1, no: 3 }.fraction(), Some(0.25));
        assert_eq!(CrowdVotes { yes: 0, no: 0 }.fraction(), None);
    }
}
