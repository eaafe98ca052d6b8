//! Request → task type → DAG of tasks, from the patterns file
//! (`config/workflow_patterns.toml`, overridable), or from a plan a model
//! wrote, checked before it is trusted.

use std::{collections::HashMap, path::Path};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::dag::{MAX_TASKS, resolve};

/// The patterns shipped with the project.
pub const DEFAULT_PATTERNS: &str = include_str!("../../../config/workflow_patterns.toml");
/// Type used when nothing else matches; the patterns file must define it.
pub const GENERAL: &str = "general";
/// Default answer length of a task.
const DEFAULT_MAX_TOKENS: u32 = 256;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PatternsFile {
    pattern: Vec<Pattern>,
}

/// One request type and its task template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pattern {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub keywords: Vec<String>,
    #[serde(default)]
    pub examples: Vec<String>,
    pub tasks: Vec<TaskTemplate>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskTemplate {
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default)]
    pub context_needed: bool,
    #[serde(default)]
    pub validation_required: bool,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub requirements: HashMap<String, toml::Value>,
}

/// A task ready to be stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlannedTask {
    pub name: String,
    pub description: String,
    pub task_type: String,
    /// Indexes of the tasks this one needs.
    pub depends_on: Vec<usize>,
    pub context_needed: bool,
    pub validation_required: bool,
    pub priority: i32,
    pub max_tokens: u32,
    pub requirements: Value,
}

/// The checked patterns.
#[derive(Debug, Clone)]
pub struct Patterns {
    patterns: Vec<Pattern>,
}

impl Patterns {
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: PatternsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut seen = std::collections::HashSet::new();
        for pattern in &file.pattern {
            if !seen.insert(pattern.kind.as_str()) {
                return Err(format!("pattern type {} is defined twice", pattern.kind));
            }
            check_pattern(pattern)?;
        }
        if !seen.contains(GENERAL) {
            return Err(format!("the patterns must define the {GENERAL:?} type"));
        }
        Ok(Self {
            patterns: file.pattern,
        })
    }

    /// The shipped patterns, or the file at `path`.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Self::parse(DEFAULT_PATTERNS).map_err(anyhow::Error::msg);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| p.kind.as_str())
    }

    pub fn get(&self, kind: &str) -> Option<&Pattern> {
        self.patterns.iter().find(|p| p.kind == kind)
    }

    /// Every (type, example) pair, for nearest-example classification.
    pub fn examples(&self) -> Vec<(&str, &str)> {
        self.patterns
            .iter()
            .flat_map(|p| {
                p.examples
                    .iter()
                    .map(move |e| (p.kind.as_str(), e.as_str()))
            })
            .collect()
    }

    /// The type whose keywords occur most often in `request` (whole words,
    /// case-insensitive), if any occurs.
    pub fn classify_by_keywords(&self, request: &str) -> Option<&str> {
        let text = format!(" {} ", normalise(request));
        self.patterns
            .iter()
            .map(|p| {
                let hits = p
                    .keywords
                    .iter()
                    .filter(|k| text.contains(&format!(" {} ", normalise(k))))
                    .count();
                (hits, p.kind.as_str())
            })
            .filter(|(hits, _)| *hits > 0)
            // Most hits wins; ties go to the type listed first.
            .fold(
                None,
                |best: Option<(usize, &str)>, (hits, kind)| match best {
                    Some((b, _)) if b >= hits => best,
                    _ => Some((hits, kind)),
                },
            )
            .map(|(_, kind)| kind)
    }

    /// The tasks of `kind`'s pattern for `request`.
    pub fn decompose(&self, kind: &str, request: &str) -> Vec<PlannedTask> {
        let pattern = self
            .get(kind)
            .or_else(|| self.get(GENERAL))
            .expect("general pattern");
        // Checked when the patterns were loaded.
        let deps = resolve(
            pattern
                .tasks
                .iter()
                .map(|t| (t.name.as_str(), t.depends_on.as_slice())),
        )
        .unwrap_or_default();
        pattern
            .tasks
            .iter()
            .zip(deps)
            .map(|(t, depends_on)| PlannedTask {
                name: t.name.clone(),
                description: t.description.replace("{request}", request),
                task_type: t.task_type.clone().unwrap_or_else(|| pattern.kind.clone()),
                depends_on,
                context_needed: t.context_needed,
                validation_required: t.validation_required,
                priority: t.priority,
                max_tokens: t.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
                requirements: serde_json::to_value(&t.requirements).unwrap_or(Value::Null),
            })
            .collect()
    }
}

/// Lower case, punctuation as spaces, single spaces.
fn normalise(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == ';' {
                c
            } else {
                ' '
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn check_pattern(pattern: &Pattern) -> Result<(), String> {
    let kind = &pattern.kind;
    if !valid_name(kind) {
        return Err(format!(
            "pattern type {kind:?}: 1 to 32 characters of a-z, 0-9, '_'"
        ));
    }
    if pattern.tasks.is_empty() || pattern.tasks.len() > MAX_TASKS {
        return Err(format!("pattern {kind}: 1 to {MAX_TASKS} tasks"));
    }
    for task in &pattern.tasks {
        if task.description.trim().is_empty() {
            return Err(format!(
                "pattern {kind}, task {}: empty description",
                task.name
            ));
        }
        if task
            .max_tokens
            .is_some_and(|m| m == 0 || m > orchestrator_llm::MAX_NEW_TOKENS)
        {
            return Err(format!(
                "pattern {kind}, task {}: max_tokens out of range",
                task.name
            ));
        }
    }
    resolve(
        pattern
            .tasks
            .iter()
            .map(|t| (t.name.as_str(), t.depends_on.as_slice())),
    )
    .map_err(|e| format!("pattern {kind}: {e}"))?;
    Ok(())
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// The prompt asking a model to plan the tasks of `request`.
pub fn planning_prompt(request: &str) -> String {
    format!(
        "Break the request below into 2 to 6 steps. Answer with JSON only, in this form:\n\
         {{\"tasks\": [{{\"name\": \"step1\", \"description\": \"...\", \"depends_on\": []}}, \
         {{\"name\": \"step2\", \"description\": \"...\", \"depends_on\": [\"step1\"]}}]}}\n\n\
         Request: {request}"
    )
}

#[derive(Deserialize)]
struct ModelPlan {
    tasks: Vec<ModelPlanTask>,
}

#[derive(Deserialize)]
struct ModelPlanTask {
    name: String,
    description: String,
    #[serde(default)]
    depends_on: Vec<String>,
}

/// Parses and checks a plan a model wrote: the first JSON object in the
/// text, 1 to [`MAX_TASKS`] uniquely named tasks, known dependencies, no
/// cycle. The final task is validated; tasks with no dependencies retrieve
/// context.
pub fn parse_model_plan(text: &str, kind: &str) -> Result<Vec<PlannedTask>, String> {
    let start = text.find('{').ok_or("the plan has no JSON object")?;
    let end = text.rfind('}').ok_or("the plan has no JSON object")?;
    if end < start {
        return Err("the plan has no JSON object".into());
    }
    let plan: ModelPlan = serde_json::from_str(&text[start..=end])
        .map_err(|e| format!("the plan is not valid: {e}"))?;
    if plan.tasks.is_empty() || plan.tasks.len() > MAX_TASKS {
        return Err(format!("the plan must have 1 to {MAX_TASKS} tasks"));
    }
    for task in &plan.tasks {
        if task.name.is_empty() || task.name.len() > 64 {
            return Err("task names must be 1 to 64 characters".into());
        }
        if task.description.trim().is_empty() || task.description.len() > 2_000 {
            return Err(format!(
                "task {}: description must be 1 to 2,000 bytes",
                task.name
            ));
        }
    }
    let deps = resolve(
        plan.tasks
            .iter()
            .map(|t| (t.name.as_str(), t.depends_on.as_slice())),
    )?;
    let last = plan.tasks.len() - 1;
    Ok(plan
        .tasks
        .into_iter()
        .zip(deps)
        .enumerate()
        .map(|(i, (task, depends_on))| PlannedTask {
            context_needed: depends_on.is_empty(),
            name: task.name,
            description: task.description,
            task_type: kind.to_string(),
            depends_on,
            validation_required: i == last,
            priority: 5,
            max_tokens: DEFAULT_MAX_TOKENS,
            requirements: Value::Object(Default::default()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Patterns {
        Patterns::parse(DEFAULT_PATTERNS).unwrap()
    }

    #[test]
    fn keywords_pick_the_type() {
        let p = shipped();
        assert_eq!(
            p.classify_by_keywords("Please summarize this memo"),
            Some("summarization")
        );
        assert_eq!(
            p.classify_by_keywords("Fix the bug in my Rust function"),
            Some("coding")
        );
        assert_eq!(p.classify_by_keywords("Hello there"), None);
        // Whole words only: "testament" is not "test".
        assert_eq!(p.classify_by_keywords("an old testament"), None);
    }

    #[test]
    fn research_has_a_fan_in() {
        let tasks = shipped().decompose("research", "vector databases");
        assert_eq!(tasks.len(), 3);
        assert_eq!(tasks[2].depends_on, vec![0, 1]);
        assert!(tasks[0].description.contains("vector databases"));
        assert!(tasks[2].validation_required);
    }

    #[test]
    fn bad_patterns_are_refused() {
        let cyclic = "[[pattern]]\ntype = \"general\"\n[[pattern.tasks]]\nname = \"a\"\ndescription = \"x\"\ndepends_on = [\"b\"]\n[[pattern.tasks]]\nname = \"b\"\ndescription = \"y\"\ndepends_on = [\"a\"]\n";
        assert!(Patterns::parse(cyclic).unwrap_err().contains("cycle"));
        let no_general =
            "[[pattern]]\ntype = \"x\"\n[[pattern.tasks]]\nname = \"a\"\ndescription = \"x\"\n";
        assert!(Patterns::parse(no_general).unwrap_err().contains("general"));
        let unknown = "[[pattern]]\ntype = \"general\"\n[[pattern.tasks]]\nname = \"a\"\ndescription = \"x\"\ndepends_on = [\"zz\"]\n";
        assert!(
            Patterns::parse(unknown)
                .unwrap_err()
                .contains("unknown dependency")
        );
    }

    #[test]
    fn model_plans_are_checked() {
        let good = "Sure! {\"tasks\": [{\"name\": \"a\", \"description\": \"do a\"}, {\"name\": \"b\", \"description\": \"do b\", \"depends_on\": [\"a\"]}]} done";
        let tasks = parse_model_plan(good, "research").unwrap();
        assert_eq!(tasks[1].depends_on, vec![0]);
        assert!(tasks[1].validation_required && tasks[0].context_needed);
        let cyclic = "{\"tasks\": [{\"name\": \"a\", \"description\": \"x\", \"depends_on\": [\"b\"]}, {\"name\": \"b\", \"description\": \"y\", \"depends_on\": [\"a\"]}]}";
        assert!(
            parse_model_plan(cyclic, "general")
                .unwrap_err()
                .contains("cycle")
        );
        assert!(parse_model_plan("no json here", "general").is_err());
        let many: Vec<String> = (0..20)
            .map(|i| format!("{{\"name\": \"t{i}\", \"description\": \"x\"}}"))
            .collect();
        let big = format!("{{\"tasks\": [{}]}}", many.join(","));
        assert!(parse_model_plan(&big, "general").is_err());
    }
}
