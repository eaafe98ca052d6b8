//! Quality filters beyond length and exact repeats: garbled answers,
//! languages, and near-duplicates (MinHash over word shingles).

use std::{collections::hash_map::DefaultHasher, hash::BuildHasherDefault};

use gaoya::minhash::{MinHashIndex, MinHasher, MinHasher32, calculate_minhash_params};
use whatlang::Lang;

/// Whether an answer is garbled: broken characters, control characters, a
/// character or word repeated on and on (a model caught in a loop), or
/// hardly a letter or digit in it.
pub fn garbled(answer: &str) -> bool {
    if answer
        .chars()
        .any(|c| c == '\u{FFFD}' || (c.is_control() && !matches!(c, '\n' | '\r' | '\t')))
    {
        return true;
    }
    if longest_run(answer.chars()) >= 40 || longest_run(answer.split_whitespace()) >= 8 {
        return true;
    }
    let visible = answer.chars().filter(|c| !c.is_whitespace()).count();
    let meaningful = answer.chars().filter(|c| c.is_alphanumeric()).count();
    visible >= 8 && meaningful * 5 < visible
}

/// The longest run of equal consecutive items.
fn longest_run<T: PartialEq>(items: impl Iterator<Item = T>) -> usize {
    let (mut longest, mut run, mut last) = (0, 0, None);
    for item in items {
        run = if last.as_ref() == Some(&item) {
            run + 1
        } else {
            1
        };
        longest = longest.max(run);
        last = Some(item);
    }
    longest
}

/// A language code this build can detect (ISO 639-3, such as `eng`).
pub fn language(code: &str) -> Option<Lang> {
    Lang::from_code(code.to_ascii_lowercase())
}

/// Whether `text` is in one of `allowed`. Text whose language cannot be
/// told reliably (code, numbers, a few words) is kept: the filter drops
/// only what is clearly in another language.
pub fn in_languages(text: &str, allowed: &[Lang]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match whatlang::detect(text) {
        Some(info) if info.is_reliable() => allowed.contains(&info.lang()),
        _ => true,
    }
}

/// Words per shingle: long enough that texts sharing a template but not
/// their values (numbers, names) share few shingles.
const SHINGLE_WORDS: usize = 5;
const HASHES: usize = 128;

/// Texts seen so far, to tell a near-duplicate of one of them: estimated
/// Jaccard similarity of their word 5-shingles at or over the threshold.
pub struct NearDuplicates {
    /// Shingles hashed with fixed keys: the same text, the same signature.
    hasher: MinHasher32<BuildHasherDefault<DefaultHasher>>,
    index: MinHashIndex<u32, u32>,
    threshold: f64,
    next: u32,
}

impl NearDuplicates {
    pub fn new(threshold: f64) -> Self {
        let (bands, rows) = calculate_minhash_params(threshold, HASHES);
        Self {
            hasher: MinHasher32::new_with_hasher(bands * rows, BuildHasherDefault::default()),
            index: MinHashIndex::new(bands, rows, threshold),
            threshold,
            next: 0,
        }
    }

    /// True when `text` is close to one seen before; otherwise remembers it.
    pub fn check(&mut self, text: &str) -> bool {
        let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
        let shingles: Vec<&[String]> = match words.len() < SHINGLE_WORDS {
            true => vec![&words[..]],
            false => words.windows(SHINGLE_WORDS).collect(),
        };
        let signature = self.hasher.create_signature(shingles.into_iter());
        if self
            .index
            .query_one(&signature)
            .is_some_and(|(_, similarity)| similarity >= self.threshold)
        {
            return true;
        }
        self.index.insert(self.next, signature);
        self.next += 1;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbled_answers_are_told_from_plain_ones() {
        for plain in [
            "42",
            "The capital of France is Paris.",
            "{\"name\": \"Ada\", \"age\": 36}",
            "SELECT name FROM users WHERE age > 30;",
            "x = [3, 1, 2]\nprint(sorted(x))",
        ] {
            assert!(!garbled(plain), "{plain}");
        }
        for broken in [
            "caf\u{FFFD} au lait",
            "ok\u{0007}",
            &"a".repeat(60),
            &"the ".repeat(12),
            "!!!??? *** ### ~~~ ^^^",
        ] {
            assert!(garbled(broken), "{broken}");
        }
    }

    #[test]
    fn only_clearly_foreign_text_is_dropped_by_language() {
        let english = [language("eng").unwrap()];
        assert!(in_languages(
            "The queue hands every job to exactly one worker at a time.",
            &english
        ));
        assert!(!in_languages(
            "Die Warteschlange gibt jeden Auftrag genau einem Arbeiter zur gleichen Zeit.",
            &english
        ));
        assert!(in_languages("SELECT 1;", &english), "undecided is kept");
        assert!(language("xx").is_none());
    }

    #[test]
    fn near_duplicates_are_caught_and_different_texts_kept() {
        let mut seen = NearDuplicates::new(0.8);
        let base = "Workers lease jobs from the queue, run them, and acknowledge each one \
                    when it is done, so a job whose worker dies is delivered again later.";
        assert!(!seen.check(base));
        assert!(
            seen.check(&base.replace("later.", "later!")),
            "one word changed"
        );
        assert!(!seen.check(
            "Campaigns crawl a site's pages and record every schema.org item they find \
             in the results table, one row per page and item."
        ));
        // Same template, other values: not a near-duplicate.
        assert!(!seen.check("What is 37 + 45?"));
        assert!(!seen.check("What is 38 + 45?"));
    }
}
