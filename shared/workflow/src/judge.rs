//! Reading a validator's verdict, and measuring agreement between answers
//! for consensus mode. Both pure, so they are tested without a model.

use std::collections::HashSet;

use serde::Serialize;

use orchestrator_llm::ChatMessage;

/// A validator's judgement of one answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub pass: bool,
    pub reason: String,
    /// False when the validator's text gave no verdict, or gave both. Such
    /// an answer fails (a check that did not happen is not a pass), and the
    /// executor moves on to the next model in the chain, without counting
    /// the failure against the answering model.
    pub clear: bool,
}

/// The conversation asking a validator to judge `answer` to `task`.
pub fn judge_prompt(task: &str, answer: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(
            "system",
            "You check answers. Reply with one line `VERDICT: PASS` or `VERDICT: FAIL`, \
             then one short sentence saying why.",
        ),
        ChatMessage::new(
            "user",
            format!("Task:\n{task}\n\nAnswer:\n{answer}\n\nVerdict:"),
        ),
    ]
}

/// Reads a verdict from a validator's text, most explicit form first:
///
/// 1. JSON: `{"verdict": "pass"}`, `{"result": "FAIL"}`, `{"pass": true}`;
/// 2. a verdict line: `VERDICT: PASS`, `Final verdict - fail` (the last
///    one wins: models reason first, then conclude);
/// 3. a line that is just a verdict word: `PASS`, `**FAIL**.`, `Yes.`;
/// 4. the words of the text, with negation read: "not correct" fails,
///    "no issues" and "nothing wrong" pass. Signals that disagree
///    ("correct but incomplete") are unclear.
///
/// An unclear verdict fails.
pub fn parse_verdict(text: &str) -> Verdict {
    let reason: String = text.trim().chars().take(300).collect();
    let decided = from_json(text)
        .or_else(|| from_verdict_line(text))
        .or_else(|| from_bare_line(text))
        .or_else(|| from_words(text));
    Verdict {
        pass: decided == Some(true),
        reason,
        clear: decided.is_some(),
    }
}

/// `pass` / `fail` and their synonyms as one word; `None` for anything else.
fn verdict_word(word: &str) -> Option<bool> {
    match word.to_ascii_lowercase().as_str() {
        "pass" | "passed" | "passes" | "approve" | "approved" | "accept" | "accepted"
        | "correct" | "valid" | "good" | "ok" | "true" => Some(true),
        "fail" | "failed" | "fails" | "reject" | "rejected" | "incorrect" | "invalid" | "wrong"
        | "false" | "bad" | "inaccurate" | "incomplete" | "unacceptable" => Some(false),
        _ => None,
    }
}

fn from_json(text: &str) -> Option<bool> {
    let start = text.find('{')?;
    let end = text.rfind('}')?;
    let value: serde_json::Value = serde_json::from_str(text.get(start..=end)?).ok()?;
    ["verdict", "result", "decision", "pass", "passed", "valid"]
        .iter()
        .find_map(|key| match value.get(*key)? {
            serde_json::Value::Bool(b) => Some(*b),
            serde_json::Value::String(s) => verdict_word(s.trim()),
            _ => None,
        })
}

/// Splits into lower-case words, keeping apostrophes (`isn't`).
fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '\'' || c == '’'))
        .map(|w| {
            w.trim_matches(|c| c == '\'' || c == '’')
                .replace('’', "'")
                .to_ascii_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

fn from_verdict_line(text: &str) -> Option<bool> {
    text.lines().rev().find_map(|line| {
        let words = words(line);
        let at = words.iter().position(|w| w == "verdict")?;
        words[at + 1..].iter().find_map(|w| verdict_word(w))
    })
}

fn from_bare_line(text: &str) -> Option<bool> {
    text.lines().find_map(|line| match words(line).as_slice() {
        [word] => verdict_word(word).or(match word.as_str() {
            "yes" => Some(true),
            "no" => Some(false),
            _ => None,
        }),
        _ => None,
    })
}

const NEGATIONS: [&str; 14] = [
    "not", "no", "never", "nothing", "isn't", "aren't", "wasn't", "doesn't", "don't", "cannot",
    "can't", "hardly", "nor", "without",
];
const PROBLEMS: [&str; 12] = [
    "issue", "issues", "error", "errors", "problem", "problems", "mistake", "mistakes", "flaw",
    "flaws", "concerns", "bugs",
];

/// Verdict signals clause by clause: a negation ("not", "no", "nothing")
/// up to three words before a verdict word turns it round, within its
/// clause only ("no issues, PASS" is two passes).
fn from_words(text: &str) -> Option<bool> {
    let mut signals = Vec::new();
    let mut first_word = true;
    for clause in text.split(|c: char| ".,;:!?()\n".contains(c)) {
        let words = words(clause);
        let negated = |i: usize| {
            words[i.saturating_sub(3)..i]
                .iter()
                .any(|w| NEGATIONS.contains(&w.as_str()))
        };
        for (i, word) in words.iter().enumerate() {
            if let Some(pass) = verdict_word(word) {
                signals.push(pass != negated(i));
            } else if PROBLEMS.contains(&word.as_str()) && negated(i) {
                signals.push(true);
            } else if first_word && words.len() == 1 && (word == "yes" || word == "no") {
                // "Yes, ..." / "No. ..." opening the answer.
                signals.push(word == "yes");
            }
            first_word = false;
        }
    }
    match (signals.contains(&true), signals.contains(&false)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        _ => None,
    }
}

/// Shortest answer (in words) judged for loops: shorter ones can repeat a
/// phrase legitimately.
const MIN_WORDS_TO_JUDGE: usize = 30;
/// Share of repeated 4-word sequences above which an answer is a loop.
const MAX_REPEATED_NGRAMS: f64 = 0.5;

/// Why `text` is a degenerate answer (the model looping on a phrase or a
/// line), or `None`. Natural text repeats few 4-word sequences; a model
/// stuck in a loop repeats most of them.
pub fn degenerate(text: &str) -> Option<String> {
    let words: Vec<String> = text.split_whitespace().map(str::to_lowercase).collect();
    if words.len() < MIN_WORDS_TO_JUDGE {
        return None;
    }
    let grams: Vec<&[String]> = words.windows(4).collect();
    let distinct: HashSet<&[String]> = grams.iter().copied().collect();
    let repeated = 1.0 - distinct.len() as f64 / grams.len() as f64;
    if repeated > MAX_REPEATED_NGRAMS {
        return Some(format!(
            "the answer loops: {:.0}% of its 4-word sequences are repeats",
            repeated * 100.0
        ));
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.len() > 3)
        .collect();
    let distinct: HashSet<&str> = lines.iter().copied().collect();
    if lines.len() >= 6 && distinct.len() * 2 < lines.len() {
        return Some(format!(
            "the answer loops: {} of its {} lines are repeats",
            lines.len() - distinct.len(),
            lines.len()
        ));
    }
    None
}

/// Word-set similarity of two answers (Jaccard over lower-cased words).
pub fn similarity(a: &str, b: &str) -> f64 {
    let words = |s: &str| -> HashSet<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (a, b) = (words(a), words(b));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

/// The answer the others agree with most: (index, its mean similarity to
/// the others). With one answer, that answer with agreement 1.
pub fn most_agreed(answers: &[&str]) -> Option<(usize, f64)> {
    if answers.len() < 2 {
        return answers.first().map(|_| (0, 1.0));
    }
    (0..answers.len())
        .map(|i| {
            let total: f64 = (0..answers.len())
                .filter(|&j| j != i)
                .map(|j| similarity(answers[i], answers[j]))
                .sum();
            (i, total / (answers.len() - 1) as f64)
        })
        .fold(None, |best: Option<(usize, f64)>, (i, score)| match best {
            Some((_, b)) if b >= score => best,
            _ => Some((i, score)),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers in the shapes validators give; `None` is an unclear one.
    const VERDICTS: &[(&str, Option<bool>)] = &[
        (
            "VERDICT: PASS\nThe answer states the capital correctly.",
            Some(true),
        ),
        ("VERDICT: FAIL\nThe date is off by a year.", Some(false)),
        ("Verdict: pass - it lists all three items.", Some(true)),
        (
            "verdict = FAIL (the SQL never filters by year)",
            Some(false),
        ),
        (
            "Let me check. The sum is right but the unit is missing.\nFinal verdict: FAIL",
            Some(false),
        ),
        (
            "The answer is not correct: 7 x 8 is 56.\nFINAL VERDICT: FAIL",
            Some(false),
        ),
        (
            "It looks wrong at first, but the rounding is fine.\nVERDICT: PASS",
            Some(true),
        ),
        ("PASS\nLooks right.", Some(true)),
        ("FAIL: the date is wrong", Some(false)),
        ("**PASS**\nClear and complete.", Some(true)),
        ("**FAIL**.\nIt answers another question.", Some(false)),
        (
            "{\"verdict\": \"fail\", \"reason\": \"misses the second step\"}",
            Some(false),
        ),
        ("{\"verdict\": \"PASS\"}", Some(true)),
        (
            "```json\n{\"pass\": true, \"why\": \"matches the reference\"}\n```",
            Some(true),
        ),
        ("{\"result\": \"rejected\"}", Some(false)),
        ("**Yes**, it answers the task", Some(true)),
        ("Yes.", Some(true)),
        ("No. The function returns before the loop.", Some(false)),
        ("I would say this is incorrect.", Some(false)),
        ("This is not correct.", Some(false)),
        (
            "The answer is not entirely accurate and not correct.",
            Some(false),
        ),
        ("no issues, PASS", Some(true)),
        (
            "No issues found; the code compiles and prints 42.",
            Some(true),
        ),
        ("There is nothing wrong with this answer.", Some(true)),
        (
            "The reasoning isn't valid: it assumes the list is sorted.",
            Some(false),
        ),
        ("The answer is correct.", Some(true)),
        ("The passage is invalid", Some(false)),
        ("The answer is correct but incomplete.", None),
        ("Hmm.", None),
        ("", None),
        ("I cannot judge this without the source document.", None),
        ("The task asks for a summary of the text.", None),
        ("Approved: it follows every instruction.", Some(true)),
        ("Rejected - it ignores the word limit.", Some(false)),
        ("It's a good answer.", Some(true)),
    ];

    #[test]
    fn verdicts_are_read_from_real_looking_answers() {
        assert!(VERDICTS.len() >= 30);
        for &(text, expected) in VERDICTS {
            let verdict = parse_verdict(text);
            assert_eq!(verdict.clear, expected.is_some(), "clear? {text:?}");
            assert_eq!(verdict.pass, expected == Some(true), "pass? {text:?}");
        }
    }

    #[test]
    fn an_unclear_verdict_fails_the_answer() {
        let unclear = parse_verdict("Hmm.");
        assert!(!unclear.pass && !unclear.clear);
    }

    #[test]
    fn loops_are_told_from_answers() {
        let looped = "Tabs are better than spaces because they are flexible. ".repeat(12);
        assert!(degenerate(&looped).unwrap().contains("4-word"));
        let lines = (0..10)
            .map(|i| {
                if i % 2 == 0 {
                    "- Use tabs for indentation"
                } else {
                    "- Consistency matters"
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(degenerate(&lines).is_some());
        let prose = "Tabs let every reader choose their own indentation width, which helps \
                     people with visual impairments. Spaces look the same everywhere, so code \
                     aligned with them survives any editor, diff tool or web page. Most style \
                     guides pick one and enforce it with a formatter; the choice matters less \
                     than applying it consistently across a code base.";
        assert_eq!(degenerate(prose), None);
        assert_eq!(degenerate("yes yes yes"), None, "too short to judge");
        let list = "1. Install Rust\n2. Clone the repository\n3. Run cargo build\n\
                    4. Run cargo test\n5. Start the API\n6. Open the console\n\
                    7. Push a job and watch it finish on the overview page";
        assert_eq!(degenerate(list), None);
    }

    #[test]
    fn consensus_picks_the_majority_answer() {
        let answers = [
            "Paris is the capital of France",
            "The capital of France is Paris",
            "Berlin",
        ];
        let (winner, agreement) = most_agreed(&answers).unwrap();
        assert!(winner < 2, "picked {}", answers[winner]);
        assert!(agreement > 0.3 && agreement < 1.0);
        assert_eq!(most_agreed(&["only"]), Some((0, 1.0)));
        assert_eq!(most_agreed(&[]), None);
    }
}
