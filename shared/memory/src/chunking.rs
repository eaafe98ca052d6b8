//! Splits documents into chunks along their structure: markdown at
//! headings, code at top-level definitions, prose at paragraphs. Small
//! neighbouring sections are merged up to a target size; a section too big
//! for the embedder is cut into windows that overlap, so a sentence cut at
//! one window's end is whole in the next.

use serde::{Deserialize, Serialize};

/// Aimed-for chunk size in characters (about 200 tokens of English).
const TARGET_CHARS: usize = 800;
/// Hard ceiling: MiniLM reads 256 tokens, roughly 1,000 characters of
/// English; longer chunks would be truncated when embedded.
const MAX_CHARS: usize = 1_000;
/// Characters repeated at the start of the next window when a section is cut.
const OVERLAP_CHARS: usize = 200;

/// What a document is, which decides where it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DocKind {
    Text,
    Markdown,
    Code,
}

impl DocKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DocKind::Text => "text",
            DocKind::Markdown => "markdown",
            DocKind::Code => "code",
        }
    }

    /// The kind a stored name (see [`DocKind::as_str`]) stands for.
    pub fn from_name(name: &str) -> Self {
        match name {
            "markdown" => DocKind::Markdown,
            "code" => DocKind::Code,
            _ => DocKind::Text,
        }
    }

    /// Guesses the kind from a file name's extension.
    pub fn from_path(path: &str) -> Self {
        let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("md" | "markdown" | "mdx" | "rst" | "adoc") => DocKind::Markdown,
            Some(
                "rs" | "py" | "js" | "jsx" | "ts" | "tsx" | "go" | "java" | "kt" | "c" | "h" | "cc"
                | "cpp" | "hpp" | "cs" | "rb" | "php" | "swift" | "scala" | "sh" | "lua" | "sql"
                | "toml" | "yaml" | "yml" | "json",
            ) => DocKind::Code,
            _ => DocKind::Text,
        }
    }
}

/// One piece of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Heading path (markdown) or definition line (code) the chunk sits under.
    pub title: Option<String>,
    pub text: String,
    /// 1-based inclusive line range in the document.
    pub start_line: u32,
    pub end_line: u32,
}

/// A run of lines that belongs together, before size limits are applied.
struct Section {
    title: Option<String>,
    start: usize,
    end: usize,
}

/// Cuts `text` into chunks; blank documents give none.
pub fn chunk(text: &str, kind: DocKind) -> Vec<Chunk> {
    let lines: Vec<&str> = text.lines().collect();
    let sections = match kind {
        DocKind::Markdown => markdown_sections(&lines),
        DocKind::Code => code_sections(&lines),
        DocKind::Text => paragraph_sections(&lines),
    };
    let merged = merge_small(&lines, sections);
    merged
        .iter()
        .flat_map(|section| split_large(&lines, section))
        .filter(|c| !c.text.trim().is_empty())
        .collect()
}

fn markdown_sections(lines: &[&str]) -> Vec<Section> {
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut sections = vec![Section {
        title: None,
        start: 0,
        end: lines.len(),
    }];
    let mut in_fence = false;
    for (i, line) in lines.iter().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        let Some((level, heading)) = (!in_fence).then(|| heading(line)).flatten() else {
            continue;
        };
        path.retain(|(l, _)| *l < level);
        path.push((level, heading.to_string()));
        let title = path
            .iter()
            .map(|(_, h)| h.as_str())
            .collect::<Vec<_>>()
            .join(" > ");
        sections.last_mut().expect("one section at least").end = i;
        sections.push(Section {
            title: Some(title),
            start: i,
            end: lines.len(),
        });
    }
    sections
}

/// `## Title` → (2, "Title").
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.bytes().take_while(|b| *b == b'#').count();
    let rest = &line[level..];
    ((1..=6).contains(&level) && rest.starts_with(' ')).then(|| (level, rest.trim()))
}

/// Definitions start at column 0 in every mainstream language; comments,
/// attributes and decorators right above one belong to it.
fn code_sections(lines: &[&str]) -> Vec<Section> {
    const STARTS: &[&str] = &[
        "fn ",
        "pub fn ",
        "pub(crate) fn ",
        "async fn ",
        "pub async fn ",
        "struct ",
        "pub struct ",
        "enum ",
        "pub enum ",
        "impl ",
        "impl<",
        "trait ",
        "pub trait ",
        "mod ",
        "pub mod ",
        "def ",
        "async def ",
        "class ",
        "function ",
        "async function ",
        "export ",
        "func ",
        "public ",
        "private ",
        "protected ",
        "interface ",
        "type ",
        "const ",
        "let ",
        "var ",
    ];
    let mut starts = vec![0];
    for (i, line) in lines.iter().enumerate() {
        if i > 0 && STARTS.iter().any(|s| line.starts_with(s)) {
            let mut start = i;
            while start > 0 && is_preamble(lines[start - 1]) {
                start -= 1;
            }
            if start > *starts.last().expect("non-empty") {
                starts.push(start);
            }
        }
    }
    sections_from_starts(lines, &starts, |line| {
        let definition = line.trim();
        (!definition.is_empty()).then(|| definition.chars().take(80).collect())
    })
}

fn is_preamble(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty()
        && line.len() - t.len() == 0
        && ["//", "#[", "#!", "@", "/*", " *", "*", "\"\"\"", "# "]
            .iter()
            .any(|p| t.starts_with(p))
}

fn paragraph_sections(lines: &[&str]) -> Vec<Section> {
    let mut starts = vec![0];
    for i in 1..lines.len() {
        if lines[i - 1].trim().is_empty() && !lines[i].trim().is_empty() {
            starts.push(i);
        }
    }
    sections_from_starts(lines, &starts, |_| None)
}

fn sections_from_starts(
    lines: &[&str],
    starts: &[usize],
    title_of: impl Fn(&str) -> Option<String>,
) -> Vec<Section> {
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| {
            let end = starts.get(n + 1).copied().unwrap_or(lines.len());
            let first_code_line = lines[start..end]
                .iter()
                .find(|l| !is_preamble(l) && !l.trim().is_empty());
            Section {
                title: first_code_line.and_then(|l| title_of(l)),
                start,
                end,
            }
        })
        .collect()
}

fn size(lines: &[&str], start: usize, end: usize) -> usize {
    lines[start..end].iter().map(|l| l.len() + 1).sum()
}

/// Joins neighbouring sections while the result stays under the target; the
/// first section's title names the merged chunk.
fn merge_small(lines: &[&str], sections: Vec<Section>) -> Vec<Section> {
    let mut merged: Vec<Section> = Vec::new();
    for section in sections.into_iter().filter(|s| s.start < s.end) {
        match merged.last_mut() {
            Some(last)
                if size(lines, last.start, section.end) <= TARGET_CHARS
                    && (last.title.is_none()
                        || section.title.is_none()
                        || last.title == section.title
                        || size(lines, last.start, last.end) < TARGET_CHARS / 4) =>
            {
                last.end = section.end;
                if last.title.is_none() {
                    last.title = section.title;
                }
            }
            _ => merged.push(section),
        }
    }
    merged
}

/// Cuts a section into windows of at most `MAX_CHARS`, each starting
/// `OVERLAP_CHARS` of whole lines before the previous one ended. A single
/// line longer than the limit is cut by characters.
fn split_large(lines: &[&str], section: &Section) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut start = section.start;
    while start < section.end {
        let mut end = start;
        let mut chars = 0;
        while end < section.end && (end == start || chars + lines[end].len() < MAX_CHARS) {
            chars += lines[end].len() + 1;
            end += 1;
        }
        let text = lines[start..end].join("\n");
        for piece in split_chars(&text) {
            chunks.push(Chunk {
                title: section.title.clone(),
                text: piece,
                start_line: start as u32 + 1,
                end_line: end as u32,
            });
        }
        if end >= section.end {
            break;
        }
        // Step back over whole lines worth the overlap, but always advance.
        let mut next = end;
        let mut overlap = 0;
        while next > start + 1 && overlap + lines[next - 1].len() < OVERLAP_CHARS {
            overlap += lines[next - 1].len() + 1;
            next -= 1;
        }
        start = next;
    }
    chunks
}

/// Cuts one over-long string at character boundaries (minified code, a
/// paragraph without line breaks).
fn split_chars(text: &str) -> Vec<String> {
    if text.len() <= MAX_CHARS * 2 {
        return vec![text.to_string()];
    }
    let chars: Vec<char> = text.chars().collect();
    let step = MAX_CHARS - OVERLAP_CHARS;
    (0..chars.len())
        .step_by(step)
        .map(|at| {
            chars[at..(at + MAX_CHARS).min(chars.len())]
                .iter()
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markdown_is_cut_at_headings_with_their_path_as_title() {
        let intro = "Intro paragraph.\n".repeat(30);
        let install = "Run the installer.\n".repeat(30);
        let doc = format!("# Guide\n{intro}\n## Install\n{install}\n## Use\nCall it.\n");
        let chunks = chunk(&doc, DocKind::Markdown);
        let titles: Vec<_> = chunks.iter().map(|c| c.title.clone().unwrap()).collect();
        assert_eq!(titles, ["Guide", "Guide > Install", "Guide > Use"]);
        assert!(chunks[1].text.starts_with("## Install"));
        assert_eq!(chunks[1].start_line, 33, "the heading line itself");
    }

    #[test]
    fn code_is_cut_at_definitions_keeping_their_doc_comments() {
        let body = "    let x = 1;\n".repeat(40);
        let code = format!(
            "use std::io;\n\n/// Adds.\nfn add() {{\n{body}}}\n\n#[test]\nfn check() {{\n{body}}}\n"
        );
        let chunks = chunk(&code, DocKind::Code);
        // The lone import joins the first definition rather than standing alone.
        assert!(
            chunks
                .iter()
                .any(|c| c.text.starts_with("use std::io;\n\n/// Adds.\nfn add()"))
        );
        assert!(
            chunks
                .iter()
                .any(|c| c.text.starts_with("#[test]\nfn check()"))
        );
        assert!(
            chunks
                .iter()
                .any(|c| c.title.as_deref() == Some("fn check() {"))
        );
    }

    #[test]
    fn long_sections_become_overlapping_windows_under_the_limit() {
        let text: String = (0..200)
            .map(|i| format!("sentence number {i} of the essay\n"))
            .collect();
        let chunks = chunk(&text, DocKind::Text);
        assert!(chunks.len() > 3);
        for pair in chunks.windows(2) {
            assert!(pair[1].start_line <= pair[0].end_line, "windows overlap");
            assert!(pair[1].start_line > pair[0].start_line, "windows advance");
        }
        assert!(chunks.iter().all(|c| c.text.len() <= MAX_CHARS));
        let first = chunks.first().unwrap();
        let last = chunks.last().unwrap();
        assert_eq!(
            (first.start_line, last.end_line),
            (1, 200),
            "nothing dropped"
        );
    }

    #[test]
    fn a_single_huge_line_is_cut_by_characters() {
        let minified = "x".repeat(10_000);
        let chunks = chunk(&minified, DocKind::Code);
        assert!(chunks.len() >= 10);
        assert!(chunks.iter().all(|c| c.text.chars().count() <= MAX_CHARS));
    }

    #[test]
    fn blank_documents_have_no_chunks_and_kinds_follow_extensions() {
        assert!(chunk("\n  \n\n", DocKind::Text).is_empty());
        assert_eq!(DocKind::from_path("src/lib.rs"), DocKind::Code);
        assert_eq!(DocKind::from_path("README.md"), DocKind::Markdown);
        assert_eq!(DocKind::from_path("notes"), DocKind::Text);
    }
}
