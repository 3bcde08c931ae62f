//! A [`Searcher`] behind imsearch-web's API: the text policy on the query, the image policy on
//! every result and on the example of a "more like this", images looked up by index row.

use imsearch_web::{Answer, Backend, ImageLookup, Ranked};

use crate::Searcher;

impl Backend for Searcher {
    fn search(&self, query: &str, k: usize) -> Result<Answer, String> {
        Ok(answer(Searcher::search(self, query, k).map_err(|e| crate::error::chain(&e))?))
    }

    fn similar(&self, id: u32, k: usize) -> Result<Answer, String> {
        Ok(answer(Searcher::similar(self, id as usize, k).map_err(|e| crate::error::chain(&e))?))
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

    /// The file name of a shown image (never of a blocked one, whoever asks).
    fn name(&self, id: u32) -> Option<String> {
        let row = id as usize;
        if self.is_blocked(row) != Some(false) {
            return None;
        }
        Some(self.path(row)?.file_name()?.to_string_lossy().into_owned())
    }
}

/// A searcher's ranking (or the reason it has none) as the web API's answer.
fn answer(ranking: Result<Vec<crate::Ranked>, imsearch_compliance::BlockReason>) -> Answer {
    match ranking {
        Err(reason) => Answer::Blocked { reason: reason.to_string() },
        Ok(ranked) => Answer::Ranked(
            ranked.iter().map(|r| Ranked { id: row_id(r.row), score: r.score, blocked: r.blocked }).collect(),
        ),
    }
}

/// The public id of an index row. An index holds far fewer than 2^32 images (each is a file
/// encoded on this machine); saturating keeps an impossible overflow from aliasing a real id.
fn row_id(row: usize) -> u32 {
    u32::try_from(row).unwrap_or(u32::MAX)
}
