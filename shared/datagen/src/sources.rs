//! Where examples come from. Every source is one [`Source`]: given the
//! example's own random generator it draws one example, so the same
//! (run seed, index) always gives the same example.
//!
//! The sources that read what the product already holds (a campaign's
//! items, a context pack's files, finished workflow tasks, rated answers)
//! work on a [`Material`] snapshot taken when the run is created: shards
//! generated later, or twice, see the same records whatever changed since.

use rand::{Rng, rngs::StdRng, seq::IndexedRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Example, synthetic};

/// One source of examples.
pub trait Source: Send + Sync {
    /// The source's name, as a run's `sources` entry names it.
    fn name(&self) -> &'static str;
    /// One example drawn with `rng`.
    fn draw(&self, rng: &mut StdRng) -> Example;
}

/// Programmatic tasks with computed answers ([`synthetic`]).
pub struct Synthetic;

impl Source for Synthetic {
    fn name(&self) -> &'static str {
        "synthetic"
    }

    fn draw(&self, rng: &mut StdRng) -> Example {
        synthetic::generate(rng)
    }
}

/// One record of a snapshot: what a source turns into examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The item's type (`Product`, `component`), the file's kind, the
    /// task's type or the rated model.
    pub kind: String,
    /// The item's name, the section's heading, the task's prompt.
    pub title: String,
    /// The section's text, the task's output, the corrected answer.
    pub text: String,
    /// The item itself (campaign items only).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub data: Value,
}

/// The records of one source at the time its run was created.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Material {
    pub records: Vec<Record>,
}

/// A campaign's schema.org items and Storybook components as instruction
/// pairs: to JSON, extract a field, describe, compare two of a kind.
pub struct Campaign(pub Material);

impl Source for Campaign {
    fn name(&self) -> &'static str {
        "campaign"
    }

    fn draw(&self, rng: &mut StdRng) -> Example {
        let record = pick(&self.0, rng);
        let fields = fields(&record.data);
        let kind = &record.kind;
        let prose = fields
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join("\n");
        match rng.random_range(0..4) {
            0 => example(
                "campaign",
                "campaign_to_json",
                format!("Write this {kind} as a JSON object with the same fields."),
                prose,
                Value::Object(
                    fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone().into()))
                        .collect(),
                )
                .to_string(),
            ),
            1 if !fields.is_empty() => {
                let (field, value) = fields.choose(rng).expect("not empty");
                example(
                    "campaign",
                    "campaign_extract",
                    format!("What is the {field} of this {kind}? Answer with the value only."),
                    prose.clone(),
                    value.clone(),
                )
            }
            2 => {
                let other = pick(&self.0, rng);
                compare(record, other)
            }
            _ => example(
                "campaign",
                "campaign_describe",
                format!("Describe this {kind} in one sentence."),
                compact(&record.data),
                describe(record, &fields),
            ),
        }
    }
}

/// A pack's files cut at headings and definitions: a question answered by
/// its section, a title for a passage, and code explained by its own doc
/// comment.
pub struct ContextPack(pub Material);

impl Source for ContextPack {
    fn name(&self) -> &'static str {
        "context_pack"
    }

    fn draw(&self, rng: &mut StdRng) -> Example {
        let record = pick(&self.0, rng);
        let (path, heading) = record
            .title
            .split_once(" › ")
            .unwrap_or((&record.title, ""));
        let (doc, body) = doc_comment(&record.text);
        match rng.random_range(0..3) {
            0 if !doc.is_empty() && !body.trim().is_empty() => example(
                "context_pack",
                "pack_explain",
                "Explain what this code does.".into(),
                body.trim().into(),
                doc,
            ),
            1 if !heading.is_empty() && record.kind == "markdown" => example(
                "context_pack",
                "pack_summary",
                "Summarize this passage as a short title.".into(),
                record.text.trim().into(),
                heading.into(),
            ),
            _ => example(
                "context_pack",
                "pack_question",
                match heading.is_empty() {
                    true => format!("What does {path} say?"),
                    false => format!("What does the section \"{heading}\" of {path} say?"),
                },
                String::new(),
                record.text.trim().into(),
            ),
        }
    }
}

/// Prompts and the answers they got: finished workflow tasks
/// (`workflows`, one family per task type) or rated answers (`feedback`:
/// the correction, or the well-rated response).
pub struct Answered {
    pub source: &'static str,
    pub material: Material,
}

impl Source for Answered {
    fn name(&self) -> &'static str {
        self.source
    }

    fn draw(&self, rng: &mut StdRng) -> Example {
        let record = pick(&self.material, rng);
        let family = match self.source {
            "workflows" => format!("workflow_{}", record.kind),
            other => other.to_string(),
        };
        example(
            self.source,
            &family,
            record.title.clone(),
            String::new(),
            record.text.clone(),
        )
    }
}

fn example(
    source: &str,
    family: &str,
    instruction: String,
    input: String,
    output: String,
) -> Example {
    Example {
        source: source.into(),
        family: family.into(),
        instruction,
        input,
        output,
    }
}

/// A record; snapshots are never empty (a run refuses an empty source).
fn pick<'a>(material: &'a Material, rng: &mut StdRng) -> &'a Record {
    material
        .records
        .choose(rng)
        .expect("a snapshot has records")
}

/// An item's fields as (name, text), in order, leaving out JSON-LD's
/// `@context`/`@type` and nested values too long to say in a line.
fn fields(data: &Value) -> Vec<(String, String)> {
    let Some(object) = data.as_object() else {
        return Vec::new();
    };
    object
        .iter()
        .filter(|(key, _)| !key.starts_with('@'))
        .filter_map(|(key, value)| Some((key.clone(), say(value)?)))
        .collect()
}

/// A value in a line: scalars as they are, a list of names joined, a
/// nested item by its name.
fn say(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Object(object) => say(named(object)?)?,
        Value::Array(items) => items
            .iter()
            .filter_map(|item| match item {
                Value::Object(object) => say(named(object)?),
                other => say(other),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Null => return None,
    };
    (!text.is_empty() && text.len() <= 300).then_some(text)
}

fn named(object: &Map<String, Value>) -> Option<&Value> {
    ["name", "title", "@id", "value"]
        .iter()
        .find_map(|key| object.get(*key))
}

fn compact(data: &Value) -> String {
    let mut data = data.clone();
    if let Some(object) = data.as_object_mut() {
        object.remove("@context");
    }
    data.to_string()
}

fn describe(record: &Record, fields: &[(String, String)]) -> String {
    let name = match record.title.is_empty() {
        true => format!("This {}", record.kind),
        false => format!("{} is a {}", record.title, record.kind),
    };
    let rest: Vec<String> = fields
        .iter()
        .filter(|(key, _)| key != "name" && key != "title")
        .take(4)
        .map(|(key, value)| format!("{key} {value}"))
        .collect();
    match rest.is_empty() {
        true => format!("{name}."),
        false => format!("{name} with {}.", rest.join(", ")),
    }
}

/// The fields two items differ in, or that they are the same.
fn compare(a: &Record, b: &Record) -> Example {
    let (left, right) = (fields(&a.data), fields(&b.data));
    let lookup = |list: &[(String, String)], key: &str| {
        list.iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "(none)".into())
    };
    let mut keys: Vec<&String> = left.iter().chain(&right).map(|(k, _)| k).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<String> = keys
        .into_iter()
        .filter_map(|key| {
            let (x, y) = (lookup(&left, key), lookup(&right, key));
            (x != y).then(|| format!("{key}: {x} / {y}"))
        })
        .collect();
    let output = match differing.is_empty() {
        true => "They have the same fields and values.".to_string(),
        false => differing.join("\n"),
    };
    example(
        "campaign",
        "campaign_compare",
        "List the fields these two items differ in, as `field: first / second`.".into(),
        format!("First: {}\nSecond: {}", compact(&a.data), compact(&b.data)),
        output,
    )
}

/// A section's leading doc comment (as prose) and the code after it.
fn doc_comment(text: &str) -> (String, &str) {
    let mut doc = Vec::new();
    let mut rest = text;
    for line in text.lines() {
        let trimmed = line.trim_start();
        let comment = ["///", "//!", "//", "#", "--"]
            .iter()
            .find_map(|marker| trimmed.strip_prefix(marker));
        match comment {
            Some(words) if !trimmed.starts_with("#[") && !trimmed.starts_with("#!") => {
                doc.push(words.trim().to_string());
                rest = &rest[(line.len() + 1).min(rest.len())..];
            }
            _ => break,
        }
    }
    (doc.join(" ").trim().to_string(), rest)
}

/// A pack file cut into sections: at markdown headings, or before each
/// definition (with its doc comment) in code. Titles are `path › heading`.
pub fn sections(path: &str, content: &str) -> Vec<Record> {
    let is_markdown = path.ends_with(".md") || path.ends_with(".markdown");
    let mut out = Vec::new();
    let mut heading = String::new();
    let mut current: Vec<&str> = Vec::new();
    let lines: Vec<&str> = content.lines().collect();
    let mut flush = |heading: &str, current: &mut Vec<&str>| {
        let text = current.join("\n");
        if text.trim().len() >= 20 {
            out.push(Record {
                kind: if is_markdown { "markdown" } else { "code" }.into(),
                title: match heading.is_empty() {
                    true => path.to_string(),
                    false => format!("{path} › {heading}"),
                },
                text: text.chars().take(4_000).collect(),
                data: Value::Null,
            });
        }
        current.clear();
    };
    for (at, line) in lines.iter().enumerate() {
        if is_markdown {
            if let Some(title) = line.strip_prefix('#') {
                flush(&heading, &mut current);
                heading = title.trim_start_matches('#').trim().to_string();
                continue;
            }
        } else if let Some(name) = definition(line) {
            // The doc comment above belongs to this definition.
            let mut doc_start = current.len();
            while doc_start > 0 && is_comment(current[doc_start - 1]) {
                doc_start -= 1;
            }
            let doc: Vec<&str> = current.split_off(doc_start);
            flush(&heading, &mut current);
            current.extend(doc);
            heading = name;
        }
        current.push(lines[at]);
    }
    flush(&heading, &mut current);
    out
}

fn is_comment(line: &str) -> bool {
    let trimmed = line.trim_start();
    trimmed.starts_with("//") || (trimmed.starts_with('#') && !trimmed.starts_with("#["))
}

/// The name a line defines (`fn parse`, `class Queue`), if it starts one.
fn definition(line: &str) -> Option<String> {
    let trimmed = line
        .trim_start()
        .trim_start_matches("pub ")
        .trim_start_matches("pub(crate) ")
        .trim_start_matches("export ")
        .trim_start_matches("async ");
    [
        "fn ",
        "def ",
        "class ",
        "function ",
        "struct ",
        "enum ",
        "trait ",
        "impl ",
    ]
    .iter()
    .find_map(|keyword| trimmed.strip_prefix(keyword).map(|rest| (keyword, rest)))
    .map(|(keyword, rest)| {
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        format!("{}{name}", keyword)
    })
    .filter(|name| name.split(' ').nth(1).is_some_and(|n| !n.is_empty()))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use serde_json::json;

    use super::*;

    fn record(kind: &str, title: &str, data: Value) -> Record {
        Record {
            kind: kind.into(),
            title: title.into(),
            text: String::new(),
            data,
        }
    }

    #[test]
    fn campaign_items_become_every_kind_of_pair_with_their_own_values() {
        let material = Material {
            records: vec![
                record(
                    "Product",
                    "Lamp",
                    json!({"@context": "https://schema.org", "@type": "Product",
                           "name": "Lamp", "sku": "L-1",
                           "offers": {"@type": "Offer", "name": "19.99"}}),
                ),
                record(
                    "Product",
                    "Desk",
                    json!({"@type": "Product", "name": "Desk", "sku": "D-7"}),
                ),
            ],
        };
        let source = Campaign(material);
        let mut families = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let example = source.draw(&mut StdRng::seed_from_u64(seed));
            assert!(!example.output.is_empty(), "{example:?}");
            assert!(!example.input.contains("schema.org"), "{example:?}");
            if example.family == "campaign_extract" {
                let value = example.output.as_str();
                assert!(
                    ["Lamp", "Desk", "L-1", "D-7", "19.99"].contains(&value),
                    "{value}"
                );
                assert!(example.input.contains(value));
            }
            if example.family == "campaign_to_json" {
                let object: Value = serde_json::from_str(&example.output).unwrap();
                assert!(object["sku"] == "L-1" || object["sku"] == "D-7");
            }
            families.insert(example.family);
        }
        assert_eq!(families.len(), 4, "{families:?}");
    }

    #[test]
    fn files_are_cut_at_headings_and_definitions_with_their_doc_comments() {
        let markdown = "# Queue\nJobs wait in queues until a worker leases them.\n## Leases\nA lease expires unless the worker renews it in time.\n";
        let parts = sections("docs/queue.md", markdown);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].title, "docs/queue.md › Leases");
        let code = "use std::io;\n\n/// Adds two numbers and returns their sum.\npub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n";
        let parts = sections("src/math.rs", code);
        let add = parts.iter().find(|p| p.title.ends_with("fn add")).unwrap();
        let (doc, body) = doc_comment(&add.text);
        assert_eq!(doc, "Adds two numbers and returns their sum.");
        assert!(body.starts_with("pub fn add"));
    }
}
