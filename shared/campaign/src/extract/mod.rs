//! schema.org extraction from HTML: JSON-LD, microdata and RDFa, plus the page's crawlable links.

mod jsonld;
mod microdata;
mod rdfa;

use std::collections::HashSet;

use scraper::{ElementRef, Html, Node};
use serde::{Deserialize, Serialize};
use url::Url;

/// The markup syntax an item was found in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Syntax {
    #[serde(rename = "json-ld")]
    JsonLd,
    #[serde(rename = "microdata")]
    Microdata,
    #[serde(rename = "rdfa")]
    Rdfa,
}

/// One top-level schema item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchemaItem {
    pub syntax: Syntax,
    /// Short schema.org type names ("Product"); non-schema.org types keep their full IRI.
    pub types: Vec<String>,
    /// `@id` / `itemid` / RDFa `about`/`resource`, when given.
    pub id: Option<String>,
    /// Short property name -> value (string, number, nested object, or array when repeated).
    pub properties: serde_json::Map<String, serde_json::Value>,
}

/// Everything [`extract`] finds on one page.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    pub items: Vec<SchemaItem>,
    /// Absolute http(s) `<a href>` targets, fragments removed, deduplicated, in document order.
    pub links: Vec<Url>,
}

/// Parses the page once; returns top-level schema items of all three syntaxes and the absolute
/// http(s) links (`<a href>`, resolved against `<base href>` or `base_url`, fragments removed,
/// deduplicated, in document order).
pub fn extract(html: &str, base_url: &Url) -> Extracted {
    let doc = Html::parse_document(html);
    extract_document(&doc, base_url, true)
}

/// Items only, no links (for callers that do not crawl).
pub fn extract_items(html: &str, base_url: &Url) -> Vec<SchemaItem> {
    let doc = Html::parse_document(html);
    extract_document(&doc, base_url, false).items
}

/// What one pass over the tree collects for the per-syntax extractors.
struct Scan<'a> {
    base_href: Option<&'a str>,
    ld_scripts: Vec<ElementRef<'a>>,
    md_roots: Vec<ElementRef<'a>>,
    has_itemref: bool,
    has_rdfa: bool,
    hrefs: Vec<&'a str>,
}

fn scan<'a>(doc: &'a Html, want_links: bool) -> Scan<'a> {
    let mut s = Scan {
        base_href: None,
        ld_scripts: Vec::new(),
        md_roots: Vec::new(),
        has_itemref: false,
        has_rdfa: false,
        hrefs: Vec::new(),
    };
    for node in doc.tree.root().descendants() {
        let Node::Element(el) = node.value() else {
            continue;
        };
        match el.name() {
            "script"
                if el
                    .attr("type")
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/ld+json")) =>
            {
                s.ld_scripts.extend(ElementRef::wrap(node));
            }
            "a" if want_links => {
                if let Some(h) = el.attr("href") {
                    s.hrefs.push(h);
                }
            }
            "base" if s.base_href.is_none() => s.base_href = el.attr("href"),
            _ => {}
        }
        // Attribute scan is cheap: most elements have 0-3 attributes.
        let mut itemscope = false;
        let mut itemprop = false;
        for (name, _) in el.attrs() {
            match name {
                "itemscope" => itemscope = true,
                "itemprop" => itemprop = true,
                "itemref" => s.has_itemref = true,
                "typeof" | "property" | "vocab" => s.has_rdfa = true,
                _ => {}
            }
        }
        if itemscope && !itemprop {
            s.md_roots.extend(ElementRef::wrap(node));
        }
    }
    s
}

fn extract_document(doc: &Html, base_url: &Url, want_links: bool) -> Extracted {
    let s = scan(doc, want_links);
    let base = s
        .base_href
        .and_then(|h| base_url.join(h.trim()).ok())
        .unwrap_or_else(|| base_url.clone());

    let mut items = Vec::new();
    for script in &s.ld_scripts {
        jsonld::extract_script(script, &mut items);
    }
    if !s.md_roots.is_empty() {
        microdata::extract(doc, &s.md_roots, s.has_itemref, &base, &mut items);
    }
    if s.has_rdfa {
        rdfa::extract(doc, &base, &mut items);
    }

    let mut links = Vec::new();
    if want_links {
        let mut seen = HashSet::with_capacity(s.hrefs.len());
        for h in s.hrefs {
            let h = h.trim();
            // An empty href is a self-link: nothing to crawl.
            if h.is_empty() {
                continue;
            }
            let Ok(mut u) = base.join(h) else { continue };
            if !matches!(u.scheme(), "http" | "https") {
                continue;
            }
            u.set_fragment(None);
            if seen.insert(u.as_str().to_owned()) {
                links.push(u);
            }
        }
    }
    Extracted { items, links }
}

/// Strips the schema.org namespace from a type or property IRI/CURIE.
fn short_name(s: &str) -> &str {
    for p in ["https://schema.org/", "http://schema.org/", "schema:"] {
        if let Some(rest) = s.strip_prefix(p) {
            return rest;
        }
    }
    s
}

/// Text content without script/style, whitespace runs (and block boundaries) collapsed to one space.
fn normalized_text(el: ElementRef<'_>) -> String {
    let mut out = String::new();
    let mut pending = false;
    push_text(el, &mut out, &mut pending);
    out
}

fn push_text(el: ElementRef<'_>, out: &mut String, pending: &mut bool) {
    for child in el.children() {
        match child.value() {
            Node::Text(t) => {
                for c in t.chars() {
                    if c.is_whitespace() {
                        *pending = true;
                    } else {
                        if *pending && !out.is_empty() {
                            out.push(' ');
                        }
                        *pending = false;
                        out.push(c);
                    }
                }
            }
            Node::Element(e) => match e.name() {
                "script" | "style" | "template" => {}
                "br" => *pending = true,
                name => {
                    let block = is_block(name);
                    *pending |= block;
                    if let Some(c) = ElementRef::wrap(child) {
                        push_text(c, out, pending);
                    }
                    *pending |= block;
                }
            },
            _ => {}
        }
    }
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "p" | "div"
            | "li"
            | "ul"
            | "ol"
            | "tr"
            | "td"
            | "th"
            | "table"
            | "section"
            | "article"
            | "header"
            | "footer"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "dd"
            | "dt"
            | "dl"
            | "blockquote"
            | "pre"
            | "nav"
            | "aside"
            | "main"
            | "figure"
            | "figcaption"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://shop.example/dir/page.html").unwrap()
    }

    #[test]
    fn links_resolved_deduped_and_filtered() {
        let html = r##"<html><body>
            <a href="/p/1.html">1</a>
            <a href="2.html#top">2</a>
            <a href=" /p/1.html#x ">dup</a>
            <a href="mailto:a@b.c">mail</a>
            <a href="javascript:void(0)">js</a>
            <a href="ftp://x.example/f">ftp</a>
            <a href="#frag">self</a>
            <a href="">empty</a>
            <a href="http://other.example/q?a=1#z">other</a>
            <a>no href</a>
        </body></html>"##;
        let e = extract(html, &base());
        let got: Vec<&str> = e.links.iter().map(|u| u.as_str()).collect();
        assert_eq!(
            got,
            vec![
                "https://shop.example/p/1.html",
                "https://shop.example/dir/2.html",
                "https://shop.example/dir/page.html",
                "http://other.example/q?a=1",
            ]
        );
    }

    #[test]
    fn links_use_base_href() {
        let html = r#"<html><head><base href="https://cdn.example/root/"><base href="/ignored/"></head>
            <body><a href="x.html">x</a><a href="/abs">abs</a></body></html>"#;
        let e = extract(html, &base());
        let got: Vec<&str> = e.links.iter().map(|u| u.as_str()).collect();
        assert_eq!(
            got,
            vec!["https://cdn.example/root/x.html", "https://cdn.example/abs"]
        );
    }

    #[test]
    fn broken_html_never_panics() {
        let inputs = [
            "",
            "<",
            "</div></div></span>",
            "<div itemscope itemtype='http://schema.org/Thing'><span itemprop='name'>x",
            "<script type='application/ld+json'>{\"@type\":\"Thing\"",
            "<div vocab='https://schema.org/' typeof='Thing'><p property='name'>unclosed<div property",
            "\u{0}\u{1}<<<>>>&&&;<a href='http://['>bad</a><a href='http://ok.example/'>ok",
            "<table><tr><td itemscope itemtype=x itemref='a b c a'><p id=a itemprop=n>1</table>",
        ];
        for html in inputs {
            let e = extract(html, &base());
            let _ = e.items.len();
        }
        let e = extract(inputs[3], &base());
        assert_eq!(e.items.len(), 1);
        assert_eq!(e.items[0].properties["name"], "x");
        let e = extract(inputs[6], &base());
        assert_eq!(e.links.len(), 1);
        assert_eq!(e.links[0].as_str(), "http://ok.example/");
    }

    #[test]
    fn truncated_and_mangled_pages_never_panic() {
        for i in 0..40 {
            let page = super::super::corpus::generate_page(i);
            let cuts = [
                page.len() / 7,
                page.len() / 3,
                page.len() / 2,
                page.len() - 9,
            ];
            for cut in cuts {
                let cut = (0..=cut).rev().find(|c| page.is_char_boundary(*c)).unwrap();
                let _ = extract(&page[..cut], &base());
                let mangled = page[..cut].replace('>', "").replace("</div", "<div");
                let _ = extract(&mangled, &base());
                let swapped = format!("{}</html></body>{}", &page[cut..], &page[..cut]);
                let _ = extract(&swapped, &base());
            }
        }
    }

    #[test]
    fn itemref_cycle_terminates() {
        let html = r#"<div itemscope itemtype="https://schema.org/Thing" id="a" itemref="b">
            <span itemprop="name">a</span></div>
            <div id="b"><div itemprop="sub" itemscope itemref="a b"><span itemprop="x">1</span></div></div>"#;
        let items = extract_items(html, &base());
        assert_eq!(items.len(), 1);
        assert!(items[0].properties.contains_key("sub"));
    }

    #[test]
    fn all_three_syntaxes_on_one_page() {
        let html = r#"<html><head>
            <script type=" Application/LD+JSON ">{"@type":"Organization","name":"O"}</script></head>
            <body><div itemscope itemtype="http://schema.org/Person"><span itemprop="name">P</span></div>
            <div vocab="https://schema.org/" typeof="Event"><span property="name">E</span></div></body></html>"#;
        let items = extract_items(html, &base());
        let kinds: Vec<(Syntax, &str)> = items
            .iter()
            .map(|i| (i.syntax, i.types[0].as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Syntax::JsonLd, "Organization"),
                (Syntax::Microdata, "Person"),
                (Syntax::Rdfa, "Event"),
            ]
        );
        assert_eq!(
            serde_json::to_value(Syntax::JsonLd).unwrap(),
            serde_json::json!("json-ld")
        );
    }
}
