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
    /// False when the validator's text said neither pass nor fail; the
    /// answer is then kept (a judge that cannot judge rejects nothing).
    pub clear: bool,
}

/// The conversation asking a validator to judge `answer` to `task`.
pub fn judge_prompt(task: &str, answer: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(
            "system",
            "You check answers. Reply with PASS or FAIL on the first line, then one short sentence saying why.",
        ),
        ChatMessage::new(
            "user",
            format!("Task:\n{task}\n\nAnswer:\n{answer}\n\nVerdict:"),
        ),
    ]
}

/// Reads a verdict from free text: the first pass-like or fail-like word
/// wins (PASS/FAIL, yes/no, approve/reject, correct/incorrect, valid/
/// invalid), also inside JSON such as `{"verdict": "fail"}`.
pub fn parse_verdict(text: &str) -> Verdict {
    const PASS: [&str; 7] = [
        "pass", "passed", "yes", "approve", "approved", "correct", "valid",
    ];
    const FAIL: [&str; 9] = [
        "fail",
        "failed",
        "no",
        "reject",
        "rejected",
        "incorrect",
        "invalid",
        "wrong",
        "fails",
    ];
    let reason: String = text.trim().chars().take(300).collect();
    for word in text
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| !w.is_empty())
    {
        let word = word.to_ascii_lowercase();
        if FAIL.contains(&word.as_str()) {
            return Verdict {
                pass: false,
                reason,
                clear: true,
            };
        }
        if PASS.contains(&word.as_str()) {
            return Verdict {
                pass: true,
                reason,
                clear: true,
            };
        }
    }
    Verdict {
        pass: true,
        reason,
        clear: false,
    }
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

    #[test]
    fn verdicts_are_read_from_messy_text() {
        assert!(parse_verdict("PASS\nLooks right.").pass);
        assert!(!parse_verdict("FAIL: the date is wrong").pass);
        assert!(!parse_verdict("{\"verdict\": \"fail\", \"reason\": \"x\"}").pass);
        assert!(parse_verdict("**Yes**, it answers the task").pass);
        assert!(!parse_verdict("I would say this is incorrect.").pass);
        let unclear = parse_verdict("Hmm.");
        assert!(unclear.pass && !unclear.clear);
        // "passage" is not "pass".
        assert!(!parse_verdict("The passage is invalid").pass);
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
