//! A tiny HTML page builder: every piece of text and every attribute is escaped, so captions,
//! queries and file names can be passed in as they are.

use std::fmt::Write as _;
use std::path::Path;

use crate::describe::Table;
use crate::Result;

/// Escapes `text` for use in HTML element content and in double-quoted attribute values:
/// `&`, `<`, `>`, `"` and `'`.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A self-contained HTML page built top to bottom. Methods append to the body and return
/// `&mut Self` so calls can be chained.
#[derive(Debug, Clone)]
pub struct Page {
    title: String,
    body: String,
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em auto;max-width:72em;padding:0 1em}\
table{border-collapse:collapse;margin:1em 0}\
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}\
th{background:#f0f0f0}\
pre{background:#f6f6f6;padding:.8em;overflow-x:auto}\
img{max-width:100%;height:auto;display:block;margin:1em 0}";

impl Page {
    /// An empty page; `title` goes in `<title>` and as the first `<h1>`.
    pub fn new(title: impl Into<String>) -> Self {
        let title = title.into();
        let mut page = Page { title: title.clone(), body: String::new() };
        page.heading(1, &title);
        page
    }

    /// A heading `<h1>`..`<h6>`; `level` is clamped into 1..=6.
    pub fn heading(&mut self, level: u8, text: &str) -> &mut Self {
        let level = level.clamp(1, 6);
        let _ = writeln!(self.body, "<h{level}>{}</h{level}>", escape(text));
        self
    }

    /// A paragraph of plain text.
    pub fn paragraph(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "<p>{}</p>", escape(text));
        self
    }

    /// A table with a header row; rows shorter than the header are padded with empty cells.
    pub fn table<H, C>(&mut self, header: &[H], rows: &[Vec<C>]) -> &mut Self
    where
        H: AsRef<str>,
        C: AsRef<str>,
    {
        self.body.push_str("<table>\n<thead><tr>");
        for h in header {
            let _ = write!(self.body, "<th>{}</th>", escape(h.as_ref()));
        }
        self.body.push_str("</tr></thead>\n<tbody>\n");
        for row in rows {
            self.body.push_str("<tr>");
            for c in row {
                let _ = write!(self.body, "<td>{}</td>", escape(c.as_ref()));
            }
            for _ in row.len()..header.len() {
                self.body.push_str("<td></td>");
            }
            self.body.push_str("</tr>\n");
        }
        self.body.push_str("</tbody>\n</table>\n");
        self
    }

    /// A [`Table`] (e.g. a `describe()` or `head_table()` result) with its name as caption;
    /// missing cells show as `NaN`.
    pub fn data_table(&mut self, table: &Table) -> &mut Self {
        let rows: Vec<Vec<&str>> = table
            .rows
            .iter()
            .map(|row| {
                (0..table.columns.len()).map(|i| row.get(i).and_then(|c| c.as_deref()).unwrap_or("NaN")).collect()
            })
            .collect();
        let _ = writeln!(self.body, "<p><em>{}</em></p>", escape(&table.name));
        self.table(&table.columns, &rows)
    }

    /// An image; `src` should be relative to the page (e.g. `plots/votes.png`).
    pub fn image(&mut self, src: &str, alt: &str) -> &mut Self {
        let _ = writeln!(self.body, "<img src=\"{}\" alt=\"{}\">", escape(src), escape(alt));
        self
    }

    /// A `<pre>` block, e.g. the output of [`Table::to_text`].
    pub fn preformatted(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.body, "<pre>{}</pre>", escape(text));
        self
    }

    /// The complete document.
    pub fn to_html(&self) -> String {
        format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{}</body>\n</html>\n",
            escape(&self.title),
            self.body
        )
    }

    /// Writes the document to `path` atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        Ok(imsearch_fsio::write_bytes_atomic(path, self.to_html().as_bytes())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[track_caller]
    fn check(input: &str, expected: &str) {
        assert_eq!(escape(input), expected);
    }

    #[test]
    fn escapes_markup_characters() {
        check("plain text", "plain text");
        check("a < b & c > d", "a &lt; b &amp; c &gt; d");
        check(r#"say "hi" it's"#, "say &quot;hi&quot; it&#39;s");
        check("&amp;", "&amp;amp;");
        check("<script>alert(1)</script>", "&lt;script&gt;alert(1)&lt;/script&gt;");
        check("ünïcode ✓", "ünïcode ✓");
    }

    #[test]
    fn body_elements_are_escaped() {
        let mut page = Page::new("A & B");
        page.heading(9, "h<2>")
            .paragraph("dogs & \"cats\"")
            .table(&["a<b", "c"], &[vec!["1 & 2"], vec!["x", "y"]])
            .image("plots/a b&c.png", "alt \"quoted\"")
            .preformatted("x < y\n  z");
        let html = page.to_html();
        assert!(html.contains("<title>A &amp; B</title>"));
        expect![[r#"
            <h1>A &amp; B</h1>
            <h6>h&lt;2&gt;</h6>
            <p>dogs &amp; &quot;cats&quot;</p>
            <table>
            <thead><tr><th>a&lt;b</th><th>c</th></tr></thead>
            <tbody>
            <tr><td>1 &amp; 2</td><td></td></tr>
            <tr><td>x</td><td>y</td></tr>
            </tbody>
            </table>
            <img src="plots/a b&amp;c.png" alt="alt &quot;quoted&quot;">
            <pre>x &lt; y
              z</pre>
        "#]]
        .assert_eq(&page.body);
    }

    #[test]
    fn data_table_shows_missing_as_nan() {
        let table = Table {
            name: "t<1>".to_owned(),
            columns: vec!["a".to_owned(), "b".to_owned()],
            rows: vec![vec![Some("1".to_owned())]],
        };
        let mut page = Page::new("p");
        page.data_table(&table);
        assert!(page.body.contains("<em>t&lt;1&gt;</em>"));
        assert!(page.body.contains("<tr><td>1</td><td>NaN</td></tr>"));
    }

    #[test]
    fn write_creates_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.html");
        Page::new("t").paragraph("hello").write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("<!DOCTYPE html>") && text.contains("<p>hello</p>"));
    }
}
