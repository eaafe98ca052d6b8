//! WHATWG microdata, with the value rules extruct applies.

use std::collections::HashMap;

use scraper::{ElementRef, Html};
use serde_json::{Map, Value};
use url::Url;

use super::{SchemaItem, Syntax, normalized_text, short_name};

struct Ctx<'a> {
    base: &'a Url,
    /// First element per id, built only when some item uses `itemref`.
    ids: HashMap<&'a str, ElementRef<'a>>,
    /// Items being built, to cut `itemref` cycles.
    stack: Vec<ElementRef<'a>>,
}

pub(super) fn extract<'a>(
    doc: &'a Html,
    roots: &[ElementRef<'a>],
    has_itemref: bool,
    base: &Url,
    out: &mut Vec<SchemaItem>,
) {
    let mut ids = HashMap::new();
    if has_itemref {
        for el in doc.root_element().descendent_elements() {
            if let Some(id) = el.value().attr("id") {
                ids.entry(id).or_insert(el);
            }
        }
    }
    let mut ctx = Ctx {
        base,
        ids,
        stack: Vec::new(),
    };
    for &root in roots {
        let (types, id, properties) = item(root, &mut ctx);
        out.push(SchemaItem {
            syntax: Syntax::Microdata,
            types,
            id,
            properties,
        });
    }
}

type ItemParts = (Vec<String>, Option<String>, Map<String, Value>);

fn item<'a>(el: ElementRef<'a>, ctx: &mut Ctx<'a>) -> ItemParts {
    let v = el.value();
    let types: Vec<String> = v
        .attr("itemtype")
        .unwrap_or("")
        .split_ascii_whitespace()
        .map(|t| short_name(t).to_owned())
        .collect();
    let id = v
        .attr("itemid")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);

    ctx.stack.push(el);
    let mut props = Vec::new();
    for child in el.child_elements() {
        collect_props(child, &mut props);
    }
    if let Some(refs) = v.attr("itemref") {
        for r in refs.split_ascii_whitespace() {
            if let Some(&target) = ctx.ids.get(r)
                && target != el
            {
                collect_props(target, &mut props);
            }
        }
    }

    let mut properties = Map::new();
    for p in props {
        let Some(names) = p.value().attr("itemprop") else {
            continue;
        };
        if names.trim().is_empty() {
            continue;
        }
        let Some(value) = prop_value(p, ctx) else {
            continue;
        };
        for name in names.split_ascii_whitespace() {
            add_value(&mut properties, short_name(name), value.clone());
        }
    }
    ctx.stack.pop();
    (types, id, properties)
}

/// Property elements of one item: `itemprop` descendants not inside a nested `itemscope`.
fn collect_props<'a>(el: ElementRef<'a>, out: &mut Vec<ElementRef<'a>>) {
    let v = el.value();
    if v.attr("itemprop").is_some() {
        out.push(el);
    }
    if v.attr("itemscope").is_none() {
        for child in el.child_elements() {
            collect_props(child, out);
        }
    }
}

/// Microdata values are never arrays themselves, so an existing array means "repeated".
fn add_value(props: &mut Map<String, Value>, name: &str, value: Value) {
    match props.get_mut(name) {
        None => {
            props.insert(name.to_owned(), value);
        }
        Some(Value::Array(a)) => a.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
    }
}

fn prop_value<'a>(el: ElementRef<'a>, ctx: &mut Ctx<'a>) -> Option<Value> {
    let v = el.value();
    if v.attr("itemscope").is_some() {
        if ctx.stack.contains(&el) {
            return None;
        }
        let (types, id, properties) = item(el, ctx);
        let mut obj = Map::with_capacity(properties.len() + 2);
        match types.len() {
            0 => {}
            1 => {
                obj.insert("@type".into(), Value::String(types.into_iter().next()?));
            }
            _ => {
                obj.insert(
                    "@type".into(),
                    Value::Array(types.into_iter().map(Value::String).collect()),
                );
            }
        }
        if let Some(id) = id {
            obj.insert("@id".into(), Value::String(id));
        }
        obj.extend(properties);
        return Some(Value::Object(obj));
    }
    let attr_url = |name: &str| -> Value {
        let raw = v.attr(name).unwrap_or("").trim();
        Value::String(
            ctx.base
                .join(raw)
                .map_or_else(|_| raw.to_owned(), String::from),
        )
    };
    let s = match v.name() {
        "meta" => return Some(Value::String(v.attr("content").unwrap_or("").to_owned())),
        "audio" | "embed" | "iframe" | "img" | "source" | "track" | "video" => {
            return Some(attr_url("src"));
        }
        "a" | "area" | "link" => return Some(attr_url("href")),
        "object" => return Some(attr_url("data")),
        "data" | "meter" => v.attr("value").unwrap_or("").to_owned(),
        "time" => match v.attr("datetime") {
            Some(dt) => dt.to_owned(),
            None => normalized_text(el),
        },
        _ => match v.attr("content") {
            // Not in the spec, but schema.org examples use it and extruct honours it.
            Some(c) if !c.is_empty() => c.to_owned(),
            _ => normalized_text(el),
        },
    };
    Some(Value::String(s))
}

#[cfg(test)]
mod tests {
    use super::super::{Syntax, extract_items};
    use serde_json::json;
    use url::Url;

    fn items(html: &str) -> Vec<super::SchemaItem> {
        extract_items(html, &Url::parse("https://example.com/shop/").unwrap())
    }

    #[test]
    fn nested_items_and_repeated_props() {
        let v = items(
            r#"<div itemscope itemtype="https://schema.org/Product" itemid="urn:p1">
                 <h1 itemprop="name">  Blue
                    Shoe </h1>
                 <span itemprop="color">blue</span><span itemprop="color">navy</span>
                 <div itemprop="offers" itemscope itemtype="http://schema.org/Offer">
                   <span itemprop="price" content="19.99">$19.99</span>
                   <span itemprop="seller" itemscope itemtype="http://schema.org/Organization">
                     <span itemprop="name">ACME</span></span>
                 </div>
                 <div itemprop="review" itemscope itemtype="http://schema.org/Review">
                   <span itemprop="author" itemscope itemtype="http://schema.org/Person"><b itemprop="name">Ann</b></span>
                 </div>
               </div>"#,
        );
        assert_eq!(v.len(), 1, "nested items are not top-level");
        let p = &v[0];
        assert_eq!(p.syntax, Syntax::Microdata);
        assert_eq!(p.types, vec!["Product"]);
        assert_eq!(p.id.as_deref(), Some("urn:p1"));
        assert_eq!(p.properties["name"], json!("Blue Shoe"));
        assert_eq!(p.properties["color"], json!(["blue", "navy"]));
        assert_eq!(
            p.properties["offers"],
            json!({"@type":"Offer","price":"19.99","seller":{"@type":"Organization","name":"ACME"}})
        );
        assert_eq!(p.properties["review"]["author"]["name"], json!("Ann"));
        assert_eq!(p.properties.len(), 4);
    }

    #[test]
    fn itemref_pulls_properties() {
        let v = items(
            r#"<div itemscope itemtype="http://schema.org/Person" itemref="addr extra missing">
                 <span itemprop="name">Bob</span></div>
               <p id="addr" itemprop="address" itemscope itemtype="http://schema.org/PostalAddress">
                 <span itemprop="streetAddress">1 Main St</span></p>
               <div id="extra"><span itemprop="jobTitle">Chef</span>
                 <div itemscope itemtype="http://schema.org/Thing"><span itemprop="name">other</span></div></div>"#,
        );
        // The Thing inside #extra is top-level (no itemprop); #addr is a property, not an item.
        assert_eq!(v.len(), 2);
        let person = &v[0];
        assert_eq!(person.properties["name"], json!("Bob"));
        assert_eq!(
            person.properties["address"]["streetAddress"],
            json!("1 Main St")
        );
        assert_eq!(person.properties["jobTitle"], json!("Chef"));
        assert_eq!(person.properties.len(), 3);
        assert_eq!(v[1].types, vec!["Thing"]);
    }

    #[test]
    fn attribute_value_rules() {
        let v = items(
            r#"<div itemscope itemtype="http://schema.org/Thing">
                 <meta itemprop="m" content="meta-c">
                 <a itemprop="a" href="../x.html">text</a>
                 <link itemprop="l" href="https://schema.org/InStock">
                 <img itemprop="img" src=" img/1.png ">
                 <video itemprop="v" src="/v.mp4"></video>
                 <object itemprop="o" data="obj.swf"></object>
                 <data itemprop="d" value="42">forty-two</data>
                 <meter itemprop="mt" value="0.5">half</meter>
                 <time itemprop="t1" datetime="2024-01-02">Jan 2</time>
                 <time itemprop="t2">yesterday</time>
                 <span itemprop="c" content="from-content">shown</span>
                 <span itemprop="txt">a <b>b</b><script>x</script> <i>c</i></span>
                 <span itemprop="name alternateName">both</span>
               </div>"#,
        );
        let p = &v[0].properties;
        assert_eq!(p["m"], json!("meta-c"));
        assert_eq!(p["a"], json!("https://example.com/x.html"));
        assert_eq!(p["l"], json!("https://schema.org/InStock"));
        assert_eq!(p["img"], json!("https://example.com/shop/img/1.png"));
        assert_eq!(p["v"], json!("https://example.com/v.mp4"));
        assert_eq!(p["o"], json!("https://example.com/shop/obj.swf"));
        assert_eq!(p["d"], json!("42"));
        assert_eq!(p["mt"], json!("0.5"));
        assert_eq!(p["t1"], json!("2024-01-02"));
        assert_eq!(p["t2"], json!("yesterday"));
        assert_eq!(p["c"], json!("from-content"));
        assert_eq!(p["txt"], json!("a b c"));
        assert_eq!(p["name"], json!("both"));
        assert_eq!(p["alternateName"], json!("both"));
    }
}
