//! The RDFa subset real pages use (RDFa 1.1 Lite plus `about`/`content`/`href`/`src`).
//! `rel`/`rev` chaining and `datatype` typing are not modelled.

use scraper::{ElementRef, Html};
use serde_json::{Map, Value};
use url::Url;

use super::{SchemaItem, Syntax, normalized_text, short_name};

/// Prefixes pyRdfa knows without a `prefix` attribute (RDFa 1.1 initial context subset).
const DEFAULT_PREFIXES: &[(&str, &str)] = &[
    ("schema", "http://schema.org/"),
    ("og", "http://ogp.me/ns#"),
    ("dc", "http://purl.org/dc/terms/"),
    ("dcterms", "http://purl.org/dc/terms/"),
    ("foaf", "http://xmlns.com/foaf/0.1/"),
    ("rdf", "http://www.w3.org/1999/02/22-rdf-syntax-ns#"),
    ("rdfs", "http://www.w3.org/2000/01/rdf-schema#"),
    ("xsd", "http://www.w3.org/2001/XMLSchema#"),
    ("gr", "http://purl.org/goodrelations/v1#"),
    ("sioc", "http://rdfs.org/sioc/ns#"),
    ("skos", "http://www.w3.org/2004/02/skos/core#"),
    ("v", "http://rdf.data-vocabulary.org/#"),
    ("vcard", "http://www.w3.org/2006/vcard/ns#"),
];

enum Val {
    Lit(String),
    Item(usize),
}

struct Node {
    types: Vec<String>,
    id: Option<String>,
    props: Vec<(String, Val)>,
    /// Value of some property, hence not top-level.
    bound: bool,
    /// Created by `typeof`; `about`-only subjects are never emitted.
    typed: bool,
}

#[derive(Clone, Copy)]
struct Ctx<'a, 'p> {
    vocab: Option<&'a str>,
    prefixes: &'p [(&'a str, &'a str)],
    subject: Option<usize>,
}

pub(super) fn extract(doc: &Html, base: &Url, out: &mut Vec<SchemaItem>) {
    let mut arena = Vec::new();
    let ctx = Ctx {
        vocab: None,
        prefixes: &[],
        subject: None,
    };
    walk(doc.root_element(), ctx, base, &mut arena);
    for i in 0..arena.len() {
        let n = &arena[i];
        if n.bound || !n.typed || n.types.is_empty() {
            continue;
        }
        out.push(SchemaItem {
            syntax: Syntax::Rdfa,
            types: n.types.clone(),
            id: n.id.clone(),
            properties: properties(&arena, i),
        });
    }
}

fn walk<'a>(el: ElementRef<'a>, ctx: Ctx<'a, '_>, base: &Url, arena: &mut Vec<Node>) {
    let v = el.value();
    let mut ctx = ctx;
    if let Some(vocab) = v.attr("vocab") {
        let vocab = vocab.trim();
        ctx.vocab = (!vocab.is_empty()).then_some(vocab);
    }
    let owned_prefixes;
    if let Some(p) = v.attr("prefix") {
        let mut list = ctx.prefixes.to_vec();
        let mut tokens = p.split_ascii_whitespace();
        while let Some(name) = tokens.next() {
            let (Some(name), Some(iri)) = (name.strip_suffix(':'), tokens.next()) else {
                break;
            };
            list.push((name, iri));
        }
        owned_prefixes = list;
        ctx.prefixes = &owned_prefixes;
    }

    let property = v.attr("property").filter(|p| !p.trim().is_empty());
    let abs = |attr: &str| {
        v.attr(attr).map(|raw| {
            let raw = raw.trim();
            base.join(raw).map_or_else(|_| raw.to_owned(), String::from)
        })
    };

    if let Some(type_attr) = v.attr("typeof") {
        let types = type_attr
            .split_ascii_whitespace()
            .filter_map(|t| resolve(t, &ctx))
            .collect();
        let id = abs("about")
            .or_else(|| abs("resource"))
            .or_else(|| abs("href"))
            .or_else(|| abs("src"));
        let idx = arena.len();
        let bound = property.is_some() && ctx.subject.is_some();
        arena.push(Node {
            types,
            id,
            props: Vec::new(),
            bound,
            typed: true,
        });
        if let (Some(p), Some(s)) = (property, ctx.subject) {
            for name in p.split_ascii_whitespace().filter_map(|t| resolve(t, &ctx)) {
                arena[s].props.push((name, Val::Item(idx)));
            }
        }
        ctx.subject = Some(idx);
    } else {
        if let (Some(p), Some(s)) = (property, ctx.subject) {
            let value = if let Some(c) = v.attr("content") {
                c.to_owned()
            } else if let Some(r) = (v.attr("datatype").is_none())
                .then(|| {
                    abs("resource")
                        .or_else(|| abs("href"))
                        .or_else(|| abs("src"))
                })
                .flatten()
            {
                r
            } else if let (true, Some(dt)) = (v.name() == "time", v.attr("datetime")) {
                dt.to_owned()
            } else {
                normalized_text(el)
            };
            for name in p.split_ascii_whitespace().filter_map(|t| resolve(t, &ctx)) {
                let props = &mut arena[s].props;
                // RDF graphs are sets: an identical triple adds nothing.
                if !props
                    .iter()
                    .any(|(n, v)| *n == name && matches!(v, Val::Lit(l) if *l == value))
                {
                    props.push((name, Val::Lit(value.clone())));
                }
            }
        }
        if property.is_none()
            && let Some(about) = abs("about")
        {
            ctx.subject = Some(arena.len());
            arena.push(Node {
                types: Vec::new(),
                id: Some(about),
                props: Vec::new(),
                bound: false,
                typed: false,
            });
        }
    }

    for child in el.child_elements() {
        walk(child, ctx, base, arena);
    }
}

/// Term, CURIE or IRI -> short schema.org name or full IRI; `None` if it cannot be resolved.
fn resolve(term: &str, ctx: &Ctx<'_, '_>) -> Option<String> {
    if term.contains("://") {
        return Some(short_name(term).to_owned());
    }
    if let Some((prefix, local)) = term.split_once(':') {
        let ns = ctx
            .prefixes
            .iter()
            .rev()
            .chain(DEFAULT_PREFIXES)
            .find(|(p, _)| p.eq_ignore_ascii_case(prefix))
            .map(|(_, ns)| *ns)?;
        let iri = format!("{ns}{local}");
        return Some(short_name(&iri).to_owned());
    }
    let vocab = ctx.vocab?;
    let iri = format!("{vocab}{term}");
    Some(short_name(&iri).to_owned())
}

fn properties(arena: &[Node], idx: usize) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, val) in &arena[idx].props {
        let value = match val {
            Val::Lit(s) => Value::String(s.clone()),
            Val::Item(j) => nested(arena, *j),
        };
        match map.get_mut(name) {
            None => {
                map.insert(name.clone(), value);
            }
            Some(Value::Array(a)) => a.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
        }
    }
    map
}

fn nested(arena: &[Node], idx: usize) -> Value {
    let n = &arena[idx];
    let mut obj = Map::new();
    match n.types.as_slice() {
        [] => {}
        [t] => {
            obj.insert("@type".into(), Value::String(t.clone()));
        }
        ts => {
            obj.insert(
                "@type".into(),
                Value::Array(ts.iter().cloned().map(Value::String).collect()),
            );
        }
    }
    if let Some(id) = &n.id {
        obj.insert("@id".into(), Value::String(id.clone()));
    }
    obj.extend(properties(arena, idx));
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::super::{Syntax, extract_items};
    use serde_json::json;
    use url::Url;

    fn items(html: &str) -> Vec<super::SchemaItem> {
        extract_items(html, &Url::parse("https://example.com/a/").unwrap())
    }

    #[test]
    fn vocab_typeof_property_nested() {
        let v = items(
            r#"<div vocab="https://schema.org/" typeof="Product">
                 <h1 property="name">Lamp</h1>
                 <img property="image" src="lamp.jpg">
                 <div property="offers" typeof="Offer">
                   <span property="price" content="10.00">$10</span>
                   <link property="availability" href="https://schema.org/InStock">
                 </div>
                 <div property="aggregateRating" typeof="AggregateRating">
                   <span property="ratingValue">4</span></div>
               </div>"#,
        );
        assert_eq!(v.len(), 1);
        let p = &v[0];
        assert_eq!(p.syntax, Syntax::Rdfa);
        assert_eq!(p.types, vec!["Product"]);
        assert_eq!(p.properties["name"], json!("Lamp"));
        assert_eq!(
            p.properties["image"],
            json!("https://example.com/a/lamp.jpg")
        );
        assert_eq!(
            p.properties["offers"],
            json!({"@type":"Offer","price":"10.00","availability":"https://schema.org/InStock"})
        );
        assert_eq!(p.properties["aggregateRating"]["ratingValue"], json!("4"));
        assert_eq!(p.properties.len(), 4);
    }

    #[test]
    fn prefix_and_default_schema_prefix() {
        let v = items(
            r#"<article prefix="s: http://schema.org/ dc: http://purl.org/dc/terms/" typeof="s:Article" about="/post/1">
                 <h2 property="s:headline dc:title">Hello</h2>
                 <span property="schema:author" typeof="schema:Person"><span property="schema:name">Zoe</span></span>
                 <span property="unprefixedNoVocab">dropped</span>
               </article>"#,
        );
        assert_eq!(v.len(), 1);
        let a = &v[0];
        assert_eq!(a.types, vec!["Article"]);
        assert_eq!(a.id.as_deref(), Some("https://example.com/post/1"));
        assert_eq!(a.properties["headline"], json!("Hello"));
        assert_eq!(
            a.properties["http://purl.org/dc/terms/title"],
            json!("Hello")
        );
        assert_eq!(
            a.properties["author"],
            json!({"@type":"Person","name":"Zoe"})
        );
        assert_eq!(a.properties.len(), 3);
    }

    #[test]
    fn sibling_typeof_without_property_is_top_level() {
        let v = items(
            r#"<body vocab="http://schema.org/">
                 <div typeof="Organization"><span property="name">Org</span>
                   <div typeof="Place"><span property="name">Inner</span></div></div>
                 <p property="name">document-level, no item</p>
                 <div vocab="" typeof="Unresolvable"><span property="name">x</span></div>
               </body>"#,
        );
        let t: Vec<&str> = v.iter().map(|i| i.types[0].as_str()).collect();
        assert_eq!(t, vec!["Organization", "Place"]);
        assert_eq!(v[0].properties.len(), 1);
        assert_eq!(v[1].properties["name"], json!("Inner"));
    }
}
