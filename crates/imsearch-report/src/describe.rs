//! Describe-style summaries of a table of strings, after pandas' `head()`, `describe()` and
//! `duplicated().sum()`.
//!
//! Cells are `Option<String>`; `None` is a missing value. A column's type is inferred from its
//! non-missing cells: all parse as `i64` (after trimming) gives [`ColumnType::Integer`], all
//! parse as finite `f64` gives [`ColumnType::Float`], anything else is [`ColumnType::Text`].

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;

/// A named table of optional strings. A row shorter than `columns` is treated as missing in
/// the columns it lacks; cells beyond `columns` are ignored by the summaries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// The type inferred for a column from its non-missing values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Integer,
    Float,
    Text,
    /// Every value is missing (or there are no rows).
    Empty,
}

impl ColumnType {
    /// Lowercase name, as shown in describe tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Integer => "integer",
            ColumnType::Float => "float",
            ColumnType::Text => "text",
            ColumnType::Empty => "empty",
        }
    }
}

/// Statistics of a numeric column, over its non-missing values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NumericSummary {
    pub mean: f64,
    /// Sample standard deviation (divides by n - 1, like pandas); `None` for a single value.
    pub std: Option<f64>,
    pub min: f64,
    /// Quartiles with linear interpolation between order statistics (pandas' default).
    pub q25: f64,
    pub q50: f64,
    pub q75: f64,
    pub max: f64,
}

/// One column of a describe table.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSummary {
    pub name: String,
    pub kind: ColumnType,
    /// Non-missing values.
    pub count: usize,
    pub missing: usize,
    /// Distinct non-missing values (numeric columns compare parsed numbers, so `1.0` and `1`
    /// are the same).
    pub unique: usize,
    /// For integer and float columns.
    pub numeric: Option<NumericSummary>,
    /// For text columns: the most frequent value and its count; ties go to the value seen first.
    pub top: Option<(String, usize)>,
}

/// Header of [`Table::describe`], in order.
pub const DESCRIBE_COLUMNS: [&str; 14] =
    ["column", "type", "count", "missing", "unique", "top", "freq", "mean", "std", "min", "25%", "50%", "75%", "max"];

impl Table {
    /// An empty table with the given column names.
    pub fn new(name: impl Into<String>, columns: Vec<String>) -> Self {
        Table { name: name.into(), columns, rows: Vec::new() }
    }

    /// A table whose every cell is present.
    pub fn from_cells<C: AsRef<str>>(name: impl Into<String>, columns: &[C], rows: Vec<Vec<String>>) -> Self {
        let columns = columns.iter().map(|c| c.as_ref().to_owned()).collect();
        Table {
            name: name.into(),
            columns,
            rows: rows.into_iter().map(|r| r.into_iter().map(Some).collect()).collect(),
        }
    }

    /// The first `n` rows (all of them if there are fewer).
    pub fn head(&self, n: usize) -> &[Vec<Option<String>>] {
        &self.rows[..n.min(self.rows.len())]
    }

    /// A table with the same columns holding only the first `n` rows.
    pub fn head_table(&self, n: usize) -> Table {
        Table { name: self.name.clone(), columns: self.columns.clone(), rows: self.head(n).to_vec() }
    }

    /// The cells of column `index`, one per row (`None` where missing).
    fn column_cells(&self, index: usize) -> impl Iterator<Item = Option<&str>> {
        self.rows.iter().map(move |row| row.get(index).and_then(|c| c.as_deref()))
    }

    /// Summary of column `index`, or `None` if there is no such column.
    pub fn column_summary(&self, index: usize) -> Option<ColumnSummary> {
        let name = self.columns.get(index)?.clone();
        let values: Vec<&str> = self.column_cells(index).flatten().collect();
        let count = values.len();
        let missing = self.rows.len() - count;
        let kind = infer_type(&values);
        let (unique, numeric, top) = match kind {
            ColumnType::Empty => (0, None, None),
            ColumnType::Integer => {
                let ints: Vec<i64> = values.iter().filter_map(|v| v.trim().parse().ok()).collect();
                let unique = ints.iter().collect::<HashSet<_>>().len();
                let floats: Vec<f64> = ints.iter().map(|&i| i as f64).collect();
                (unique, numeric_summary(&floats), None)
            }
            ColumnType::Float => {
                let floats: Vec<f64> = values.iter().filter_map(|v| parse_finite(v)).collect();
                // `+ 0.0` folds -0.0 into 0.0 so they count once.
                let unique = floats.iter().map(|f| (f + 0.0).to_bits()).collect::<HashSet<_>>().len();
                (unique, numeric_summary(&floats), None)
            }
            ColumnType::Text => {
                let (unique, top) = top_value(&values);
                (unique, None, top)
            }
        };
        Some(ColumnSummary { name, kind, count, missing, unique, numeric, top })
    }

    /// Summaries of every column, in order.
    pub fn summaries(&self) -> Vec<ColumnSummary> {
        (0..self.columns.len()).filter_map(|i| self.column_summary(i)).collect()
    }

    /// Number of rows equal to an earlier row (pandas' `df.duplicated().sum()`).
    pub fn duplicate_rows(&self) -> usize {
        let mut seen = HashSet::with_capacity(self.rows.len());
        self.rows.iter().filter(|row| !seen.insert(*row)).count()
    }

    /// The describe table: one row per column with [`DESCRIBE_COLUMNS`] as header. Numbers are
    /// formatted with [`format_number`]; statistics that do not apply are `None`.
    pub fn describe(&self) -> Table {
        let rows = self
            .summaries()
            .into_iter()
            .map(|s| {
                let num = |f: fn(&NumericSummary) -> Option<f64>| s.numeric.as_ref().and_then(f).map(format_number);
                vec![
                    Some(s.name.clone()),
                    Some(s.kind.as_str().to_owned()),
                    Some(s.count.to_string()),
                    Some(s.missing.to_string()),
                    Some(s.unique.to_string()),
                    s.top.as_ref().map(|(v, _)| v.clone()),
                    s.top.as_ref().map(|(_, n)| n.to_string()),
                    num(|n| Some(n.mean)),
                    num(|n| n.std),
                    num(|n| Some(n.min)),
                    num(|n| Some(n.q25)),
                    num(|n| Some(n.q50)),
                    num(|n| Some(n.q75)),
                    num(|n| Some(n.max)),
                ]
            })
            .collect();
        Table {
            name: format!("{} (describe)", self.name),
            columns: DESCRIBE_COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
            rows,
        }
    }

    /// Plain-text rendering with aligned columns, missing cells shown as `NaN` (for a `<pre>`
    /// block or a terminal). Cells longer than `max_cell` characters are cut with `…`.
    pub fn to_text(&self, max_cell: usize) -> String {
        let cut = |s: &str| -> String {
            if s.chars().count() <= max_cell {
                s.to_owned()
            } else {
                let mut t: String = s.chars().take(max_cell.saturating_sub(1)).collect();
                t.push('…');
                t
            }
        };
        let header: Vec<String> = self.columns.iter().map(|c| cut(c)).collect();
        let body: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|row| {
                (0..self.columns.len()).map(|i| cut(row.get(i).and_then(|c| c.as_deref()).unwrap_or("NaN"))).collect()
            })
            .collect();
        let widths: Vec<usize> = (0..header.len())
            .map(|i| body.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for line in std::iter::once(&header).chain(&body) {
            let cells: Vec<String> = line.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "{}", cells.join("  ").trim_end());
        }
        out
    }
}

fn parse_finite(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

fn infer_type(values: &[&str]) -> ColumnType {
    if values.is_empty() {
        ColumnType::Empty
    } else if values.iter().all(|v| v.trim().parse::<i64>().is_ok()) {
        ColumnType::Integer
    } else if values.iter().all(|v| parse_finite(v).is_some()) {
        ColumnType::Float
    } else {
        ColumnType::Text
    }
}

/// Number of distinct values and the most frequent one (first seen wins a tie).
fn top_value(values: &[&str]) -> (usize, Option<(String, usize)>) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    let mut top: Option<(&str, usize)> = None;
    for v in values {
        let n = counts[v];
        if top.is_none_or(|(_, best)| n > best) {
            top = Some((v, n));
        }
    }
    (counts.len(), top.map(|(v, n)| (v.to_owned(), n)))
}

/// Mean, sample std, min, quartiles and max of finite values; `None` if `values` is empty.
pub fn numeric_summary(values: &[f64]) -> Option<NumericSummary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len() as f64;
    let mean = sorted.iter().sum::<f64>() / n;
    let std = (sorted.len() > 1).then(|| (sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    Some(NumericSummary {
        mean,
        std,
        min: sorted[0],
        q25: quantile_sorted(&sorted, 0.25),
        q50: quantile_sorted(&sorted, 0.5),
        q75: quantile_sorted(&sorted, 0.75),
        max: sorted[sorted.len() - 1],
    })
}

/// The `q` quantile (0..=1) of ascending `sorted` with linear interpolation, like pandas and
/// numpy's default: position `q * (n - 1)` between the two nearest order statistics.
/// Returns NaN for an empty slice.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Formats a statistic for display: integral values without decimals, others with up to four
/// decimals (trailing zeros dropped), very large or small magnitudes in scientific notation.
pub fn format_number(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let a = x.abs();
    if (x - x.round()).abs() < 1e-9 && a < 1e15 {
        format!("{}", x.round() as i64)
    } else if a != 0.0 && !(1e-3..1e9).contains(&a) {
        format!("{x:.4e}")
    } else {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" {
            "0".to_owned()
        } else {
            s.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    fn table(columns: &[&str], rows: &[&[Option<&str>]]) -> Table {
        Table {
            name: "t".to_owned(),
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: rows.iter().map(|r| r.iter().map(|c| c.map(str::to_owned)).collect()).collect(),
        }
    }

    fn col(values: &[Option<&str>]) -> ColumnSummary {
        let rows: Vec<Vec<Option<&str>>> = values.iter().map(|v| vec![*v]).collect();
        let rows: Vec<&[Option<&str>]> = rows.iter().map(Vec::as_slice).collect();
        table(&["x"], &rows).column_summary(0).unwrap()
    }

    #[track_caller]
    fn close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() < 1e-9, "expected {expected}, got {actual}");
    }

    #[track_caller]
    fn check_numeric(values: &[f64], expected: [f64; 7]) {
        let s = numeric_summary(values).unwrap();
        let [mean, std, min, q25, q50, q75, max] = expected;
        close(mean, s.mean);
        close(std, s.std.unwrap());
        close(min, s.min);
        close(q25, s.q25);
        close(q50, s.q50);
        close(q75, s.q75);
        close(max, s.max);
    }

    #[test]
    fn numeric_statistics_match_pandas() {
        // pd.Series([1, 2, 3, 4]).describe(): std = sqrt(5/3).
        check_numeric(&[1.0, 2.0, 3.0, 4.0], [2.5, 1.290_994_448_735_805_6, 1.0, 1.75, 2.5, 3.25, 4.0]);
        // Unsorted input; pd.Series([10, 0, 5]).describe(): std = 5.
        check_numeric(&[10.0, 0.0, 5.0], [5.0, 5.0, 0.0, 2.5, 5.0, 7.5, 10.0]);
        // pd.Series([2, 4, 4, 4, 5, 5, 7, 9]): std = sqrt(32 / 7).
        check_numeric(
            &[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0],
            [5.0, (32.0f64 / 7.0).sqrt(), 2.0, 4.0, 4.5, 5.5, 9.0],
        );
    }

    #[test]
    fn single_value_has_no_std_and_empty_has_no_summary() {
        let s = numeric_summary(&[3.5]).unwrap();
        assert!(s.std.is_none());
        close(s.q25, 3.5);
        close(s.q75, 3.5);
        assert!(numeric_summary(&[]).is_none());
        assert!(quantile_sorted(&[], 0.5).is_nan());
    }

    #[test]
    fn infers_integer_column_with_missing_values() {
        let s = col(&[Some("1"), None, Some(" 2 "), Some("2"), Some("4")]);
        assert_eq!(s.kind, ColumnType::Integer);
        assert_eq!((s.count, s.missing, s.unique), (4, 1, 3));
        assert!(s.top.is_none());
        let n = s.numeric.unwrap();
        close(n.mean, 2.25);
        close(n.q50, 2.0);
    }

    #[test]
    fn infers_float_and_text_columns() {
        let f = col(&[Some("1.5"), Some("1"), Some("1.0"), Some("-0.0"), Some("0")]);
        assert_eq!(f.kind, ColumnType::Float);
        assert_eq!(f.unique, 3);
        close(f.numeric.unwrap().max, 1.5);

        // "inf" and "NaN" parse as f64 but are not numbers a person typed: text.
        let t = col(&[Some("a"), Some("b"), Some("b"), Some("inf"), None]);
        assert_eq!(t.kind, ColumnType::Text);
        assert_eq!((t.count, t.missing, t.unique), (4, 1, 3));
        assert_eq!(t.top, Some(("b".to_owned(), 2)));
        assert!(t.numeric.is_none());
    }

    #[test]
    fn top_tie_goes_to_first_seen_and_empty_column_is_empty() {
        let t = col(&[Some("y"), Some("x"), Some("x"), Some("y")]);
        assert_eq!(t.top, Some(("y".to_owned(), 2)));
        let e = col(&[None, None]);
        assert_eq!(e.kind, ColumnType::Empty);
        assert_eq!((e.count, e.missing, e.unique), (0, 2, 0));
    }

    #[test]
    fn short_rows_count_as_missing() {
        let t = table(&["a", "b"], &[&[Some("1"), Some("x")], &[Some("2")]]);
        let b = t.column_summary(1).unwrap();
        assert_eq!((b.count, b.missing), (1, 1));
        assert!(t.column_summary(2).is_none());
    }

    #[test]
    fn duplicate_rows_counts_repeats_of_earlier_rows() {
        let t = table(
            &["a", "b"],
            &[
                &[Some("1"), Some("x")],
                &[Some("1"), None],
                &[Some("1"), Some("x")],
                &[Some("1"), None],
                &[Some("1"), Some("x")],
                &[Some("2"), Some("x")],
            ],
        );
        assert_eq!(t.duplicate_rows(), 3);
        assert_eq!(Table::default().duplicate_rows(), 0);
    }

    #[test]
    fn head_is_clamped() {
        let t = table(&["a"], &[&[Some("1")], &[Some("2")], &[Some("3")]]);
        assert_eq!(t.head(2).len(), 2);
        assert_eq!(t.head(10).len(), 3);
        assert_eq!(t.head_table(1).rows, vec![vec![Some("1".to_owned())]]);
    }

    #[test]
    fn format_number_cases() {
        let cases = [
            (3.0, "3"),
            (-2.0, "-2"),
            (2.5, "2.5"),
            (1.290_994_448, "1.291"),
            (0.000_12, "1.2000e-4"),
            (1.5e10, "15000000000"),
            (1.5e20, "1.5000e20"),
            (-0.000_01, "-1.0000e-5"),
        ];
        for (x, expected) in cases {
            assert_eq!(format_number(x), expected, "{x}");
        }
    }

    #[test]
    fn describe_and_text_rendering() {
        let t = table(
            &["image", "votes", "score"],
            &[
                &[Some("a.jpg"), Some("1"), Some("0.5")],
                &[Some("b.jpg"), Some("2"), None],
                &[Some("a.jpg"), Some("3"), Some("1.5")],
                &[Some("c.jpg"), Some("4"), Some("2.25")],
            ],
        );
        expect![[r#"
            column  type     count  missing  unique  top    freq  mean    std    min  25%   50%  75%    max
            image   text     4      0        3       a.jpg  2     NaN     NaN    NaN  NaN   NaN  NaN    NaN
            votes   integer  4      0        4       NaN    NaN   2.5     1.291  1    1.75  2.5  3.25   4
            score   float    3      1        3       NaN    NaN   1.4167  0.878  0.5  1     1.5  1.875  2.25
        "#]]
        .assert_eq(&t.describe().to_text(20));
        expect![[r#"
            ima…  vot…  sco…
            a.j…  1     0.5
            b.j…  2     NaN
        "#]]
        .assert_eq(&t.head_table(2).to_text(4));
    }
}
