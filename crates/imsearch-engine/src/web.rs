//! A [`Searcher`] behind imsearch-web's API: the text policy on the query, the image policy on
//! every result, images looked up by index row.

use imsearch_web::{Answer, Backend, ImageLookup, Ranked};

use crate::Searcher;

impl Backend for Searcher {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        match Searcher::search(self, query, k).map_err(|e| crate::error::chain(&e))? {
            Err(reason) => Ok(Answer::Blocked { reason: reason.to_string() }),
            Ok(ranked) => Ok(Answer::Ranked(
                ranked.iter().map(|r| Ranked { id: row_id(r.row), score: r.score, blocked: r.blocked }).collect(),
            )),
        }
    }

    fn image(&self, id: u32) -> ImageLookup {
        let row = id as usize;
        match (self.is_blocked(row), self.path(row)) {
            (Some(false), Some(path)) => {
                let content_type = match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase) {
                    Some(e) if e == "png" => "image/png",
                    _ => "image/jpeg",
                };
                match std::fs::read(&path) {
                    Ok(bytes) => ImageLookup::Found { bytes, content_type },
                    Err(e) => ImageLookup::Unreadable(format!("{}: {e}", path.display())),
                }
            }
            (Some(true), _) => ImageLookup::Blocked,
            _ => ImageLookup::Unknown,
        }
    }

    fn indexed(&self) -> usize {
        self.len()
    }

    fn refuse(&self, query: &str) -> Option<String> {
        match self.gate(query) {
            imsearch_compliance::Decision::Block(reason) => Some(reason.to_string()),
            imsearch_compliance::Decision::Allow => None,
        }
    }
}

/// The public id of an index row. An index holds far fewer than 2^32 images (each is a file
/// encoded on this machine); saturating keeps an impossible overflow from aliasing a real id.
fn row_id(row: usize) -> u32 {
    u32::try_from(row).unwrap_or(u32::MAX)
}
