//! The text policy: a lexicon of words for people under 16, matched word by word.
//!
//! Decisions on ambiguous words (each has a unit test):
//! - blocked: `teen`, `teenager`, `teenage` (13 to 19 includes 13 to 15: fail closed), `son`,
//!   `daughter` (in photo captions they almost always name a child: "a man and his son"), `youth`
//!   ("youth football": mostly under 16), `kiddie`, `tot`;
//! - no phrase is blocked: "young people", "young persons", "young ones" and "little ones" were
//!   once (added after reading test queries, which is tuning on the test set) and catch no
//!   training caption, so no training evidence supports them (`cargo xtask compliance` lists the
//!   training captions of every rule); a phrase joins [`PHRASES`] only with such evidence;
//! - allowed: `young` alone ("a young man", "a young woman" are adults; "a young boy" is caught
//!   by `boy`), `little` ("a little dog"), `student` (college students are adults), `pupil` (also
//!   part of an eye), `lad` (mostly adult in British usage);
//! - words that merely contain a lexicon word are not hits: `skid`, `kidney`, `kidnap`,
//!   `boyfriend`, `girlfriend` (adult relationships), `cowboy` (rodeo riders are adults),
//!   `babysitter` (the sitter is the subject), `childhood`.

use serde::{Deserialize, Serialize};

use crate::{BlockReason, Decision};

/// Words (lowercase, singular and plural) that describe a person under 16.
pub const LEXICON: &[&str] = &[
    "baby",
    "babies",
    "boy",
    "boys",
    "child",
    "children",
    "childs",
    "daughter",
    "daughters",
    "girl",
    "girls",
    "infant",
    "infants",
    "kid",
    "kids",
    "kiddie",
    "kiddies",
    "kiddo",
    "kiddos",
    "kindergartner",
    "kindergartners",
    "newborn",
    "newborns",
    "preschooler",
    "preschoolers",
    "preteen",
    "preteens",
    "schoolboy",
    "schoolboys",
    "schoolchild",
    "schoolchildren",
    "schoolgirl",
    "schoolgirls",
    "son",
    "sons",
    "teen",
    "teens",
    "teenage",
    "teenager",
    "teenagers",
    "toddler",
    "toddlers",
    "tot",
    "tots",
    "youngster",
    "youngsters",
    "youth",
    "youths",
];

/// Two-word phrases that describe people under 16 although neither word does alone; each must
/// catch training captions that name a child (none does today: see the module's decisions).
pub const PHRASES: &[[&str; 2]] = &[];

/// Matches texts against a lexicon on word boundaries, case-insensitively, ignoring possessive
/// endings (`boy's`, `boys'`, `children's`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextPolicy {
    words: Vec<String>,
}

impl Default for TextPolicy {
    fn default() -> Self {
        TextPolicy::new(LEXICON.iter().copied())
    }
}

impl TextPolicy {
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> Self {
        let mut words: Vec<String> = words.into_iter().map(|w| w.to_lowercase()).collect();
        words.sort();
        words.dedup();
        TextPolicy { words }
    }

    /// The first lexicon word in `text`, as it is written in the lexicon.
    pub fn matched_word(&self, text: &str) -> Option<&str> {
        words(text).find_map(|w| {
            let w = strip_possessive(&w);
            self.words.binary_search_by(|x| x.as_str().cmp(w)).ok().map(|i| self.words[i].as_str())
        })
    }

    /// The first of [`PHRASES`] in `text`, as two words joined by a space.
    pub fn matched_phrase(&self, text: &str) -> Option<String> {
        let words: Vec<String> = words(text).map(|w| strip_possessive(&w).to_owned()).collect();
        words.windows(2).find_map(|pair| {
            PHRASES.iter().find(|p| p[0] == pair[0] && p[1] == pair[1]).map(|p| format!("{} {}", p[0], p[1]))
        })
    }

    /// Whether `phrase` (two words, as in [`PHRASES`]) occurs in `text`, on word boundaries.
    pub fn has_phrase(text: &str, phrase: &[&str; 2]) -> bool {
        let words: Vec<String> = words(text).map(|w| strip_possessive(&w).to_owned()).collect();
        words.windows(2).any(|pair| pair[0] == phrase[0] && pair[1] == phrase[1])
    }

    /// Whether `text` names a person under 16, and by which word or phrase.
    pub fn matched(&self, text: &str) -> Option<String> {
        self.matched_word(text).map(str::to_owned).or_else(|| self.matched_phrase(text))
    }

    pub fn decide(&self, text: &str) -> Decision {
        match self.matched(text) {
            Some(word) => Decision::Block(BlockReason::Text { word }),
            None => Decision::Allow,
        }
    }
}

/// Lowercased words: runs of letters and digits, with apostrophes kept inside and at the end
/// (for possessives). Hyphens split words, so `pre-teen` yields `teen`.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}'))
        .map(|w| w.trim_start_matches(['\'', '\u{2019}']).replace('\u{2019}', "'").to_lowercase())
        .filter(|w| !w.is_empty())
}

fn strip_possessive(word: &str) -> &str {
    word.strip_suffix("'s").or_else(|| word.strip_suffix('\'')).unwrap_or(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(text: &str, expected: Option<&str>) {
        assert_eq!(TextPolicy::default().matched_word(text), expected, "{text:?}");
    }

    #[test]
    fn plain_words_plurals_and_case() {
        check("A little girl in a pink dress .", Some("girl"));
        check("Two BOYS play soccer", Some("boys"));
        check("Children playing in a fountain", Some("children"));
        check("a baby in a stroller", Some("baby"));
        check("Toddlers at the park", Some("toddlers"));
        check("an infant sleeps", Some("infant"));
        check("The kid jumps", Some("kid"));
        check("a schoolboy in uniform", Some("schoolboy"));
        check("a youngster on a bike", Some("youngster"));
    }

    #[test]
    fn possessives() {
        check("the boy's bike", Some("boy"));
        check("the boys' bikes", Some("boys"));
        check("The children's choir", Some("children"));
        check("a girl\u{2019}s hat", Some("girl"));
    }

    #[test]
    fn punctuation_and_hyphens() {
        check("\"Kids!\" shouted the man", Some("kids"));
        check("a pre-teen skateboarder", Some("teen"));
        check("boy,girl", Some("boy"));
    }

    #[test]
    fn ambiguous_words_blocked() {
        check("A teenager skateboards", Some("teenager"));
        check("teen girls", Some("teen"));
        check("a teenage boy", Some("teenage"));
        check("A man and his son fish", Some("son"));
        check("a mother holds her daughter", Some("daughter"));
        check("youth football game", Some("youth"));
        check("a kiddie pool", Some("kiddie"));
    }

    #[test]
    fn phrases_without_training_evidence_are_not_blocked() {
        let p = TextPolicy::default();
        assert_eq!(p.matched("Four young people sit on a bench").as_deref(), None);
        assert_eq!(p.matched("the little ones play").as_deref(), None);
        assert!(TextPolicy::has_phrase("Four young people sit", &["young", "people"]));
        assert!(!TextPolicy::has_phrase("people who are young", &["young", "people"]));
    }

    #[test]
    fn ambiguous_words_allowed() {
        check("A young man climbs a rock", None);
        check("a young woman smiles", None);
        check("A little dog runs", None);
        check("students walk to class", None);
        check("the pupil of an eye", None);
    }

    #[test]
    fn words_that_merely_contain_a_lexicon_word() {
        check("The car skids on the ice", None);
        check("a kidney bean", None);
        check("kidnap thriller poster", None);
        check("A man hugs his girlfriend", None);
        check("her boyfriend waves", None);
        check("A cowboy rides a bull", None);
        check("the babysitter reads", None);
        check("childhood memories", None);
        check("Sonny and a sonar", None);
        check("a person", None);
        check("", None);
    }

    #[test]
    fn decisions_carry_the_word() {
        let p = TextPolicy::default();
        assert_eq!(p.decide("two dogs play in the snow"), Decision::Allow);
        assert_eq!(p.decide("two kids play"), Decision::Block(BlockReason::Text { word: "kids".into() }));
    }
}
