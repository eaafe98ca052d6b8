//! `storybook_discovery`: reads each Storybook's story index (`index.json`
//! of Storybook 7 and 8, or `stories.json` of Storybook 6) and records its
//! components with their stories, args and tags.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde_json::{Value, json};
use url::Url;

use super::{CampaignType, Found, Op, OpContext, OpKind, Outcome};
use crate::{
    fetch::FetchError,
    model::{Facts, Goals, Settings, key_of},
};

/// Most components kept from one Storybook.
const MAX_COMPONENTS: usize = 10_000;

pub struct StorybookDiscovery;

impl StorybookDiscovery {
    pub const NAME: &'static str = "storybook_discovery";
}

#[async_trait]
impl CampaignType for StorybookDiscovery {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn check(&self, settings: &Settings, goals: &Goals) -> Result<(), String> {
        if settings.urls.is_empty() {
            return Err("config.urls: storybook_discovery needs at least one Storybook URL".into());
        }
        if !settings.sitemaps.is_empty() {
            return Err("config.sitemaps: only seo_mining reads sitemaps".into());
        }
        if goals.min_sites.is_some() || !goals.schema_types.is_empty() {
            return Err(
                "goals: storybook_discovery has only min_components (min_sites and schema_types are seo_mining's)"
                    .into(),
            );
        }
        if goals.min_components == Some(0) {
            return Err("goals.min_components: must be at least 1".into());
        }
        Ok(())
    }

    fn seeds(&self, settings: &Settings) -> Vec<Op> {
        settings
            .urls
            .iter()
            .map(|url| Op {
                url: storybook_root(url),
                kind: OpKind::Storybook,
                depth: 0,
            })
            .collect()
    }

    async fn run(&self, op: &Op, cx: &OpContext<'_>) -> Result<Outcome, FetchError> {
        let index = fetch_index(op, cx).await?;
        Ok(Outcome {
            items: components(&index, &op.url),
            discovered: Vec::new(),
        })
    }

    fn goals_met(&self, goals: &Goals, facts: &Facts) -> bool {
        goals
            .min_components
            .is_none_or(|n| facts.items >= u64::from(n))
    }
}

/// The directory a Storybook is served from: `.../sb/iframe.html`,
/// `.../sb/index.json` and `.../sb` all mean `.../sb/`.
fn storybook_root(url: &Url) -> Url {
    let mut root = url.clone();
    root.set_query(None);
    root.set_fragment(None);
    let path = root.path().to_string();
    let last = path.rsplit('/').next().unwrap_or("");
    let dir = if last.ends_with(".html") || last.ends_with(".json") {
        path[..path.len() - last.len()].to_string()
    } else if path.ends_with('/') {
        path
    } else {
        format!("{path}/")
    };
    root.set_path(&dir);
    root
}

/// `index.json` (v7, v8), else `stories.json` (v6).
async fn fetch_index(op: &Op, cx: &OpContext<'_>) -> Result<Value, FetchError> {
    let mut last_error = None;
    for name in ["index.json", "stories.json"] {
        let url = op
            .url
            .join(name)
            .map_err(|e| FetchError::Network(format!("{}: {e}", op.url)))?;
        match cx.fetcher.get(&url).await {
            Ok(page) => {
                return serde_json::from_slice(&page.body).map_err(|e| {
                    FetchError::Network(format!("{url}: not a Storybook index ({e})"))
                });
            }
            Err(err @ FetchError::Http { status: 404, .. }) => last_error = Some(err),
            Err(err) => return Err(err),
        }
    }
    Err(last_error.expect("both index names tried"))
}

/// Groups the index's stories by component (their title). Docs entries
/// are not stories and are skipped.
pub fn components(index: &Value, root: &Url) -> Vec<Found> {
    let entries = index
        .get("entries")
        .or_else(|| index.get("stories"))
        .and_then(Value::as_object);
    let mut by_title: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for entry in entries.into_iter().flat_map(|e| e.values()) {
        let docs_only = entry.get("type").and_then(Value::as_str) == Some("docs")
            || entry
                .pointer("/parameters/docsOnly")
                .and_then(Value::as_bool)
                == Some(true);
        let title = entry
            .get("title")
            .or_else(|| entry.get("kind"))
            .and_then(Value::as_str);
        if let (false, Some(title)) = (docs_only, title) {
            by_title.entry(title.to_string()).or_default().push(entry);
        }
    }
    let version = index.get("v").cloned().unwrap_or(Value::Null);
    by_title
        .into_iter()
        .take(MAX_COMPONENTS)
        .map(|(title, stories)| component(&title, &stories, &version, root))
        .collect()
}

fn component(title: &str, entries: &[&Value], version: &Value, root: &Url) -> Found {
    let mut tags: Vec<String> = Vec::new();
    let stories: Vec<Value> = entries
        .iter()
        .map(|entry| {
            let entry_tags: Vec<String> = entry
                .get("tags")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect();
            for tag in &entry_tags {
                if !tags.contains(tag) {
                    tags.push(tag.clone());
                }
            }
            json!({
                "id": entry.get("id"),
                "name": entry.get("name").or_else(|| entry.get("story")),
                "args": entry.get("args").or_else(|| entry.pointer("/parameters/args")),
                "tags": entry_tags,
            })
        })
        .collect();
    let import_path = entries
        .iter()
        .find_map(|e| e.get("importPath").and_then(Value::as_str));
    Found {
        kind: "component".into(),
        syntax: "storybook",
        key: key_of(title),
        data: json!({
            "title": title,
            "storybook": root.as_str(),
            "index_version": version,
            "import_path": import_path,
            "stories": stories,
            "tags": tags,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_are_directories() {
        let root = |s: &str| storybook_root(&Url::parse(s).unwrap()).to_string();
        assert_eq!(root("http://h/sb/iframe.html?x=1"), "http://h/sb/");
        assert_eq!(root("http://h/sb"), "http://h/sb/");
        assert_eq!(root("http://h/sb/index.json"), "http://h/sb/");
        assert_eq!(root("http://h/"), "http://h/");
    }

    #[test]
    fn v7_index_groups_stories_and_skips_docs() {
        let index = json!({"v": 5, "entries": {
            "button--primary": {"id": "button--primary", "title": "Button", "name": "Primary",
                "type": "story", "importPath": "./Button.stories.tsx", "tags": ["autodocs"],
                "args": {"label": "Go"}},
            "button--docs": {"id": "button--docs", "title": "Button", "name": "Docs", "type": "docs"},
            "button--small": {"id": "button--small", "title": "Button", "name": "Small", "type": "story",
                "tags": ["small"]},
            "card--plain": {"id": "card--plain", "title": "Card", "name": "Plain", "type": "story"}
        }});
        let found = components(&index, &Url::parse("http://h/sb/").unwrap());
        assert_eq!(found.len(), 2);
        let button = &found[0].data;
        assert_eq!(button["title"], "Button");
        assert_eq!(button["stories"].as_array().unwrap().len(), 2);
        assert_eq!(button["tags"], json!(["autodocs", "small"]));
        assert_eq!(button["stories"][0]["args"], json!({"label": "Go"}));
    }

    #[test]
    fn v6_stories_json_uses_kind_and_story() {
        let index = json!({"v": 3, "stories": {
            "form-input--empty": {"id": "form-input--empty", "kind": "Form/Input", "story": "Empty",
                "parameters": {"docsOnly": false, "args": {"value": ""}}},
            "intro--page": {"id": "intro--page", "kind": "Intro", "story": "Page",
                "parameters": {"docsOnly": true}}
        }});
        let found = components(&index, &Url::parse("http://h/").unwrap());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].data["title"], "Form/Input");
        assert_eq!(found[0].data["stories"][0]["name"], "Empty");
        assert_eq!(found[0].data["stories"][0]["args"], json!({"value": ""}));
    }
}
