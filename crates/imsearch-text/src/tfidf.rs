//! The TF-IDF baseline: scikit-learn's `TfidfVectorizer()` with its defaults (lowercase, words
//! of two or more word characters, raw counts, smooth idf, L2-normalised rows).

use std::collections::{BTreeMap, HashMap};

use imsearch_types::EmbeddingMatrix;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the vocabulary is built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TfidfOptions {
    /// Keep a term only if it occurs in at least this many training documents.
    pub min_df: usize,
    /// Shortest token kept, in characters. 2 matches scikit-learn's `\b\w\w+\b`, which drops
    /// one-letter words such as "a".
    pub min_token_chars: usize,
}

impl Default for TfidfOptions {
    fn default() -> Self {
        TfidfOptions { min_df: 1, min_token_chars: 2 }
    }
}

/// Lowercases `text`, splits it into runs of word characters (alphanumeric or `_`, like
/// Python's `\w`) and keeps those of at least `min_chars` characters.
pub fn tokenize(text: &str, min_chars: usize) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty() && t.chars().count() >= min_chars)
        .map(str::to_owned)
        .collect()
}

/// A sparse row: `indices` strictly increasing, `values[k]` the weight of term `indices[k]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseRow {
    pub indices: Vec<u32>,
    pub values: Vec<f32>,
}

impl SparseRow {
    /// Dot product of two sparse rows (their cosine similarity when both are L2-normalised).
    pub fn dot(&self, other: &SparseRow) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }

    /// Writes the row into a dense slice of the vocabulary's width.
    pub fn to_dense(&self, dim: usize) -> Vec<f32> {
        let mut out = vec![0f32; dim];
        for (&i, &v) in self.indices.iter().zip(&self.values) {
            out[i as usize] = v;
        }
        out
    }
}

/// A fitted TF-IDF vectoriser. Term `i` is the `i`-th vocabulary word in sorted order, as in
/// scikit-learn; `idf[i] = ln((1 + n) / (1 + df_i)) + 1` for `n` training documents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "TfidfRepr", into = "TfidfRepr")]
pub struct Tfidf {
    options: TfidfOptions,
    terms: Vec<String>,
    idf: Vec<f32>,
    index: HashMap<String, u32>,
}

/// The serialised form: the index is rebuilt (and the whole checked) on load.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TfidfRepr {
    options: TfidfOptions,
    terms: Vec<String>,
    idf: Vec<f32>,
}

impl TryFrom<TfidfRepr> for Tfidf {
    type Error = Error;

    fn try_from(r: TfidfRepr) -> Result<Self> {
        let invalid = |reason: String| Err(Error::InvalidTfidf { reason });
        if r.terms.len() != r.idf.len() {
            return invalid(format!("{} terms but {} idf values", r.terms.len(), r.idf.len()));
        }
        if let Some(w) = r.terms.windows(2).find(|w| w[0] >= w[1]) {
            return invalid(format!("terms not sorted and unique at {:?}, {:?}", w[0], w[1]));
        }
        if let Some(v) = r.idf.iter().find(|v| !(v.is_finite() && **v >= 1.0)) {
            return invalid(format!("idf value {v} is not a finite number >= 1"));
        }
        let Ok(_) = u32::try_from(r.terms.len()) else {
            return invalid(format!("{} terms do not fit u32 indices", r.terms.len()));
        };
        let index = r.terms.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        Ok(Tfidf { options: r.options, terms: r.terms, idf: r.idf, index })
    }
}

impl From<Tfidf> for TfidfRepr {
    fn from(t: Tfidf) -> Self {
        TfidfRepr { options: t.options, terms: t.terms, idf: t.idf }
    }
}

impl Tfidf {
    /// Learns the vocabulary and idf weights from `documents`.
    pub fn fit(documents: &[&str], options: TfidfOptions) -> Result<Self> {
        let mut df: BTreeMap<String, usize> = BTreeMap::new();
        for doc in documents {
            let mut terms = tokenize(doc, options.min_token_chars);
            terms.sort_unstable();
            terms.dedup();
            for t in terms {
                *df.entry(t).or_default() += 1;
            }
        }
        let n = documents.len() as f64;
        let (terms, idf): (Vec<String>, Vec<f32>) = df
            .into_iter()
            .filter(|&(_, d)| d >= options.min_df)
            .map(|(t, d)| (t, (((1.0 + n) / (1.0 + d as f64)).ln() + 1.0) as f32))
            .unzip();
        if terms.is_empty() {
            return Err(Error::EmptyVocabulary { min_df: options.min_df, documents: documents.len() });
        }
        Tfidf::try_from(TfidfRepr { options, terms, idf })
    }

    /// Vocabulary size: the width of a dense row.
    pub fn dim(&self) -> usize {
        self.terms.len()
    }

    /// The vocabulary, sorted; term `i` is column `i`.
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    pub fn idf(&self) -> &[f32] {
        &self.idf
    }

    pub fn options(&self) -> &TfidfOptions {
        &self.options
    }

    /// One L2-normalised sparse row per text. Words outside the vocabulary are ignored; a text
    /// with none in it gives an empty (all-zero) row, as in scikit-learn.
    pub fn transform(&self, texts: &[&str]) -> Vec<SparseRow> {
        texts.iter().map(|t| self.transform_one(t)).collect()
    }

    /// [`Tfidf::transform`] as a dense `(texts, dim)` matrix.
    pub fn transform_dense(&self, texts: &[&str]) -> EmbeddingMatrix {
        let dim = self.dim();
        let data = texts.iter().flat_map(|t| self.transform_one(t).to_dense(dim)).collect();
        // `fit` rejects an empty vocabulary, so `dim > 0`, and each row has `dim` values.
        EmbeddingMatrix::new(dim, data).expect("whole rows")
    }

    fn transform_one(&self, text: &str) -> SparseRow {
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        for t in tokenize(text, self.options.min_token_chars) {
            if let Some(&i) = self.index.get(&t) {
                *counts.entry(i).or_default() += 1;
            }
        }
        let weights: Vec<f64> = counts.iter().map(|(&i, &c)| f64::from(c) * f64::from(self.idf[i as usize])).collect();
        let norm = weights.iter().map(|w| w * w).sum::<f64>().sqrt();
        SparseRow { indices: counts.into_keys().collect(), values: weights.iter().map(|w| (w / norm) as f32).collect() }
    }
}

#[cfg(test)]
mod tests {
    use std::f64::consts::FRAC_1_SQRT_2;

    use expect_test::expect;

    use super::*;

    const DOCS: [&str; 3] = ["the cat sat", "the dog sat down", "A dog! A DOG."];

    #[track_caller]
    fn check_tokens(text: &str, expected: &[&str]) {
        assert_eq!(tokenize(text, 2), expected);
    }

    #[track_caller]
    fn check_row(row: &SparseRow, expected: &[(u32, f64)]) {
        assert_eq!(row.indices, expected.iter().map(|e| e.0).collect::<Vec<_>>());
        for (v, e) in row.values.iter().zip(expected) {
            assert!((f64::from(*v) - e.1).abs() < 1e-6, "{row:?} != {expected:?}");
        }
    }

    #[test]
    fn tokens() {
        check_tokens("A dog's ball, 2 kids & a  X-ray", &["dog", "ball", "kids", "ray"]);
        check_tokens("Zürich ÉCOLE snake_case 42nd", &["zürich", "école", "snake_case", "42nd"]);
        check_tokens("  ", &[]);
    }

    /// Worked by hand. n = 3 documents; tokens of 2+ characters, lowercased:
    ///   d0 = {the, cat, sat}, d1 = {the, dog, sat, down}, d2 = {dog, dog} ("a" is dropped).
    /// Sorted vocabulary: cat 0, dog 1, down 2, sat 3, the 4, with
    ///   df(cat) = df(down) = 1 -> idf = ln(4/2) + 1 = 1.693147
    ///   df(dog) = df(sat) = df(the) = 2 -> idf = ln(4/3) + 1 = 1.287682
    /// d0 = (cat 1.693147, sat 1.287682, the 1.287682), norm = sqrt(2.866747 + 2 * 1.658125)
    ///    = 2.486563 -> (0.680919, 0.517856, 0.517856).
    /// d2 = (dog 2 * 1.287682) -> (1).
    /// "the dog ate" = (dog 1.287682, the 1.287682) -> (0.707107, 0.707107); "ate" is unknown.
    /// scikit-learn 1.9.1's `TfidfVectorizer().fit(DOCS)` gives the same vocabulary and rows.
    #[test]
    fn hand_computed() {
        let m = Tfidf::fit(&DOCS, TfidfOptions::default()).unwrap();
        assert_eq!(m.terms(), ["cat", "dog", "down", "sat", "the"]);
        let idf: Vec<f64> = m.idf().iter().map(|&v| f64::from(v)).collect();
        for (got, want) in idf.iter().zip([1.693147, 1.287682, 1.693147, 1.287682, 1.287682]) {
            assert!((got - want).abs() < 1e-6, "{idf:?}");
        }
        let rows = m.transform(&[DOCS[0], DOCS[2], "the dog ate", "nothing known"]);
        check_row(&rows[0], &[(0, 0.680919), (3, 0.517856), (4, 0.517856)]);
        check_row(&rows[1], &[(1, 1.0)]);
        check_row(&rows[2], &[(1, FRAC_1_SQRT_2), (4, FRAC_1_SQRT_2)]);
        check_row(&rows[3], &[]);
        assert!((rows[0].dot(&rows[2]) - 0.517856 * FRAC_1_SQRT_2 as f32).abs() < 1e-6);

        let dense = m.transform_dense(&[DOCS[0], "nothing known"]);
        assert_eq!((dense.rows(), dense.dim()), (2, 5));
        assert_eq!(dense.row(1), [0.0; 5]);
        assert!((dense.row(0)[0] - 0.680919).abs() < 1e-6);
    }

    #[test]
    fn min_df_and_empty_vocabulary() {
        let m = Tfidf::fit(&DOCS, TfidfOptions { min_df: 2, ..TfidfOptions::default() }).unwrap();
        assert_eq!(m.terms(), ["dog", "sat", "the"]);
        let err = Tfidf::fit(&DOCS, TfidfOptions { min_df: 4, ..TfidfOptions::default() });
        assert!(matches!(err, Err(Error::EmptyVocabulary { min_df: 4, documents: 3 })));
        assert!(Tfidf::fit(&[], TfidfOptions::default()).is_err());
    }

    #[test]
    fn serde_round_trip() {
        let m = Tfidf::fit(&DOCS, TfidfOptions { min_df: 2, ..TfidfOptions::default() }).unwrap();
        let json = serde_json::to_string(&m).unwrap();
        expect![[r#"{"options":{"min_df":2,"min_token_chars":2},"terms":["dog","sat","the"],"idf":[1.287682,1.287682,1.287682]}"#]]
            .assert_eq(&json);
        let back: Tfidf = serde_json::from_str(&json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.transform(&["sat dog"]), m.transform(&["sat dog"]));

        let unsorted = r#"{"options":{},"terms":["sat","dog"],"idf":[1.0,1.0]}"#;
        assert!(serde_json::from_str::<Tfidf>(unsorted).is_err());
        let short = r#"{"options":{},"terms":["dog"],"idf":[]}"#;
        assert!(serde_json::from_str::<Tfidf>(short).is_err());
    }
}
