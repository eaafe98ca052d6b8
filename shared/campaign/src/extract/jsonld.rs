//! `<script type="application/ld+json">` blocks.

use scraper::ElementRef;
use serde_json::{Map, Value};

use super::{SchemaItem, Syntax, short_name};

/// Parses one script and appends its items; unparseable scripts are skipped.
pub(super) fn extract_script(script: &ElementRef<'_>, out: &mut Vec<SchemaItem>) {
    let text: String = script.text().collect();
    let Some(value) = parse_lenient(&text) else {
        return;
    };
    match value {
        Value::Array(values) => {
            for v in values {
                push_value(v, out);
            }
        }
        v => push_value(v, out),
    }
}

fn push_value(v: Value, out: &mut Vec<SchemaItem>) {
    let Value::Object(mut obj) = v else { return };
    if let Some(graph) = obj.remove("@graph") {
        match graph {
            Value::Array(nodes) => {
                for n in nodes {
                    if let Value::Object(o) = n {
                        out.push(item_from_object(o));
                    }
                }
            }
            Value::Object(o) => out.push(item_from_object(o)),
            _ => {}
        }
        return;
    }
    if !obj.is_empty() {
        out.push(item_from_object(obj));
    }
}

fn item_from_object(obj: Map<String, Value>) -> SchemaItem {
    let mut types = Vec::new();
    let mut id = None;
    let mut properties = Map::new();
    for (k, v) in obj {
        match k.as_str() {
            "@type" => match v {
                Value::String(s) => types.push(short_name(&s).to_owned()),
                Value::Array(a) => types.extend(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(|s| short_name(s).to_owned()),
                ),
                _ => {}
            },
            "@id" => id = v.as_str().map(str::to_owned),
            _ if k.starts_with('@') => {}
            _ => {
                let name = short_name(&k);
                let name = if name.len() == k.len() {
                    k
                } else {
                    name.to_owned()
                };
                properties.insert(name, v);
            }
        }
    }
    SchemaItem {
        syntax: Syntax::JsonLd,
        types,
        id,
        properties,
    }
}

/// Strict JSON first; on failure retry without comment wrappers and with raw control
/// characters inside strings escaped (Python's `json.loads(strict=False)` accepts those).
fn parse_lenient(text: &str) -> Option<Value> {
    if let Ok(v) = serde_json::from_str(text) {
        return Some(v);
    }
    let mut body = text.trim();
    loop {
        let before = body.len();
        for prefix in ["<!--", "<![CDATA[", "//<![CDATA[", "/*<![CDATA[*/"] {
            if let Some(rest) = body.strip_prefix(prefix) {
                body = rest.trim_start();
            }
        }
        for suffix in ["-->", "]]>", "//]]>", "/*]]>*/"] {
            if let Some(rest) = body.strip_suffix(suffix) {
                body = rest.trim_end();
            }
        }
        // Whole-line `//` comments before or after the JSON value.
        if body.starts_with("//") {
            body = body.split_once('\n').map_or("", |(_, r)| r).trim_start();
        }
        if let Some(pos) = body.rfind('\n')
            && body[pos + 1..].trim_start().starts_with("//")
        {
            body = body[..pos].trim_end();
        }
        if body.len() == before {
            break;
        }
    }
    if let Ok(v) = serde_json::from_str(body) {
        return Some(v);
    }
    serde_json::from_str(&escape_controls_in_strings(body)).ok()
}

fn escape_controls_in_strings(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let mut in_str = false;
    let mut escaped = false;
    for c in s.chars() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            } else if (c as u32) < 0x20 {
                out.push_str(&format!("\\u{:04x}", c as u32));
                continue;
            }
        } else if c == '"' {
            in_str = true;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Syntax, extract_items};
    use serde_json::json;
    use url::Url;

    fn items(html: &str) -> Vec<super::SchemaItem> {
        extract_items(html, &Url::parse("https://example.com/").unwrap())
    }

    #[test]
    fn single_object() {
        let v = items(
            r##"<script type="application/ld+json">
            {"@context":"https://schema.org","@type":"Product","@id":"#p","name":"Shoe",
             "offers":{"@type":"Offer","price":"9.99"},"aggregateRating":{"@type":"AggregateRating","ratingValue":4.5}}
            </script>"##,
        );
        assert_eq!(v.len(), 1);
        let p = &v[0];
        assert_eq!(p.syntax, Syntax::JsonLd);
        assert_eq!(p.types, vec!["Product"]);
        assert_eq!(p.id.as_deref(), Some("#p"));
        assert_eq!(p.properties.len(), 3);
        assert_eq!(p.properties["offers"]["price"], json!("9.99"));
        assert_eq!(p.properties["aggregateRating"]["ratingValue"], json!(4.5));
    }

    #[test]
    fn array_and_type_array() {
        let v = items(
            r#"<script type="application/ld+json">[{"@type":["http://schema.org/Organization","Brand"],"name":"A"},
               {"@type":"schema:Person","schema:name":"B"}, 3, "x"]</script>"#,
        );
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].types, vec!["Organization", "Brand"]);
        assert_eq!(v[1].types, vec!["Person"]);
        assert_eq!(v[1].properties["name"], json!("B"));
    }

    #[test]
    fn graph_nodes_are_items() {
        let v = items(
            r##"<script type="application/ld+json">{"@context":"https://schema.org","@graph":[
                {"@type":"WebSite","@id":"/#w","name":"S"},{"@type":"WebPage","isPartOf":{"@id":"/#w"}}]}</script>"##,
        );
        let types: Vec<&str> = v.iter().map(|i| i.types[0].as_str()).collect();
        assert_eq!(types, vec!["WebSite", "WebPage"]);
        assert_eq!(v[1].properties["isPartOf"], json!({"@id":"/#w"}));
    }

    #[test]
    fn invalid_script_skipped_others_kept() {
        let v = items(
            r#"<script type="application/ld+json">{"@type":"Broken",</script>
               <script type="application/ld+json">not json at all</script>
               <script type="application/ld+json"></script>
               <script type="text/javascript">{"@type":"NotLd"}</script>
               <script type="APPLICATION/LD+JSON">{"@type":"Thing","name":"ok"}</script>"#,
        );
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].types, vec!["Thing"]);
    }

    #[test]
    fn comment_wrappers_and_raw_newlines() {
        let v = items(
            "<script type=\"application/ld+json\">\n//<![CDATA[\n{\"@type\":\"A\",\"d\":\"x\"}\n//]]>\n</script>\
             <script type=\"application/ld+json\"><!--\n{\"@type\":\"B\"}\n--></script>\
             <script type=\"application/ld+json\">{\"@type\":\"C\",\"d\":\"line1\nline2\"}</script>",
        );
        let types: Vec<&str> = v.iter().map(|i| i.types[0].as_str()).collect();
        assert_eq!(types, vec!["A", "B", "C"]);
        assert_eq!(v[2].properties["d"], json!("line1\nline2"));
    }
}
