//! XML (`<urlset>` / `<sitemapindex>`) and plain-text sitemaps.

use quick_xml::Reader;
use quick_xml::events::Event;
use url::Url;

/// Entries kept per sitemap file; the sitemaps.org protocol caps a file at 50,000 URLs.
pub const MAX_ENTRIES: usize = 50_000;

/// Page URLs (`<urlset><url><loc>`) and child sitemaps (`<sitemapindex><sitemap><loc>`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sitemap {
    pub pages: Vec<Url>,
    pub sitemaps: Vec<Url>,
}

#[derive(Debug, thiserror::Error)]
pub enum SitemapError {
    #[error("sitemap is not well-formed XML at byte {position}: {message}")]
    Xml { position: u64, message: String },
    #[error("sitemap root element is <{0}>, expected <urlset> or <sitemapindex>")]
    UnexpectedRoot(String),
    #[error("sitemap is neither XML nor a plain-text list of http(s) URLs")]
    NotASitemap,
}

/// Parses a sitemap. Locs are trimmed and resolved against `base`; only http(s) URLs are kept,
/// at most [`MAX_ENTRIES`] in all (the rest are dropped). Text not starting with `<` is read as
/// a plain-text sitemap: one absolute URL per line.
pub fn parse_sitemap(xml: &str, base: &Url) -> Result<Sitemap, SitemapError> {
    let body = xml.trim_start_matches('\u{feff}').trim_start();
    if body.starts_with('<') {
        parse_xml(body, base)
    } else {
        parse_text(body)
    }
}

fn parse_text(text: &str) -> Result<Sitemap, SitemapError> {
    let mut map = Sitemap::default();
    let mut non_empty = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        non_empty += 1;
        if let Ok(u) = Url::parse(line)
            && is_http(&u)
        {
            map.pages.push(u);
            if map.pages.len() >= MAX_ENTRIES {
                break;
            }
        }
    }
    if map.pages.is_empty() && non_empty > 0 {
        return Err(SitemapError::NotASitemap);
    }
    Ok(map)
}

fn is_http(u: &Url) -> bool {
    matches!(u.scheme(), "http" | "https")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Pages,
    Index,
}

fn parse_xml(xml: &str, base: &Url) -> Result<Sitemap, SitemapError> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().trim_text(false);
    let mut map = Sitemap::default();
    let mut kind = None;
    // Local names of open elements; only the last three matter.
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut loc: Option<String> = None;
    let err = |reader: &Reader<&[u8]>, e: &dyn std::fmt::Display| SitemapError::Xml {
        position: reader.buffer_position(),
        message: e.to_string(),
    };
    loop {
        let event = reader.read_event().map_err(|e| err(&reader, &e))?;
        match event {
            Event::Start(e) => {
                let name = e.local_name().as_ref().to_ascii_lowercase();
                if stack.is_empty() {
                    kind = Some(match name.as_slice() {
                        b"urlset" => Kind::Pages,
                        b"sitemapindex" => Kind::Index,
                        _ => {
                            return Err(SitemapError::UnexpectedRoot(
                                String::from_utf8_lossy(&name).into_owned(),
                            ));
                        }
                    });
                }
                if name == b"loc" && stack.len() == 2 {
                    loc = Some(String::new());
                }
                stack.push(name);
            }
            Event::Empty(e) if stack.is_empty() => {
                let name = e.local_name().as_ref().to_ascii_lowercase();
                return match name.as_slice() {
                    b"urlset" | b"sitemapindex" => Ok(map),
                    _ => Err(SitemapError::UnexpectedRoot(
                        String::from_utf8_lossy(&name).into_owned(),
                    )),
                };
            }
            Event::Text(t) => {
                if let Some(l) = loc.as_mut() {
                    l.push_str(&t.decode().map_err(|e| err(&reader, &e))?);
                }
            }
            Event::CData(t) => {
                if let Some(l) = loc.as_mut() {
                    l.push_str(&t.decode().map_err(|e| err(&reader, &e))?);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(l) = loc.as_mut() {
                    if let Some(c) = r.resolve_char_ref().map_err(|e| err(&reader, &e))? {
                        l.push(c);
                    } else {
                        let name = r.decode().map_err(|e| err(&reader, &e))?;
                        l.push_str(match name.as_ref() {
                            "amp" => "&",
                            "lt" => "<",
                            "gt" => ">",
                            "quot" => "\"",
                            "apos" => "'",
                            _ => "",
                        });
                    }
                }
            }
            Event::End(_) => {
                let name = stack.pop();
                if name.as_deref() == Some(b"loc")
                    && let Some(text) = loc.take()
                {
                    let parent = stack.last().map(Vec::as_slice);
                    let target = match (kind, parent) {
                        (Some(Kind::Pages), Some(b"url")) => Some(&mut map.pages),
                        (Some(Kind::Index), Some(b"sitemap")) => Some(&mut map.sitemaps),
                        _ => None,
                    };
                    if let Some(target) = target
                        && let Ok(u) = base.join(text.trim())
                        && is_http(&u)
                    {
                        target.push(u);
                        if map.pages.len() + map.sitemaps.len() >= MAX_ENTRIES {
                            return Ok(map);
                        }
                    }
                }
                if stack.is_empty() {
                    return Ok(map);
                }
            }
            Event::Eof => {
                if kind.is_none() {
                    return Err(SitemapError::NotASitemap);
                }
                if !stack.is_empty() {
                    return Err(SitemapError::Xml {
                        position: reader.buffer_position(),
                        message: "unexpected end of document".into(),
                    });
                }
                return Ok(map);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Url {
        Url::parse("https://ex.com/sitemaps/main.xml").unwrap()
    }

    fn strs(v: &[Url]) -> Vec<&str> {
        v.iter().map(Url::as_str).collect()
    }

    #[test]
    fn urlset() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
            <urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
              <url><loc>
                 https://ex.com/a?x=1&amp;y=2
              </loc><lastmod>2024-01-01</lastmod></url>
              <url><loc>/relative/b</loc></url>
              <url><loc><![CDATA[https://ex.com/c]]></loc></url>
              <url><loc>ftp://ex.com/nope</loc></url>
              <url><loc>mailto:x@ex.com</loc></url>
              <url><image:image xmlns:image="http://www.google.com/schemas/sitemap-image/1.1">
                 <image:loc>https://ex.com/img.png</image:loc></image:image></url>
            </urlset>"#;
        let s = parse_sitemap(xml, &base()).unwrap();
        assert_eq!(
            strs(&s.pages),
            vec![
                "https://ex.com/a?x=1&y=2",
                "https://ex.com/relative/b",
                "https://ex.com/c"
            ]
        );
        assert!(s.sitemaps.is_empty());
    }

    #[test]
    fn sitemap_index() {
        let xml = "\u{feff}<sitemapindex xmlns=\"http://www.sitemaps.org/schemas/sitemap/0.9\">\
            <sitemap><loc>https://ex.com/s1.xml.gz</loc></sitemap>\
            <sitemap><loc>s2.xml</loc><lastmod>2024</lastmod></sitemap></sitemapindex>";
        let s = parse_sitemap(xml, &base()).unwrap();
        assert_eq!(
            strs(&s.sitemaps),
            vec!["https://ex.com/s1.xml.gz", "https://ex.com/sitemaps/s2.xml"]
        );
        assert!(s.pages.is_empty());
    }

    #[test]
    fn plain_text() {
        let s = parse_sitemap(
            "https://ex.com/1\r\n\n  http://ex.com/2  \nnot a url\nftp://ex.com/3\n",
            &base(),
        )
        .unwrap();
        assert_eq!(strs(&s.pages), vec!["https://ex.com/1", "http://ex.com/2"]);
        assert_eq!(parse_sitemap("", &base()).unwrap(), Sitemap::default());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(
            parse_sitemap("hello world\nthis is not a sitemap", &base()),
            Err(SitemapError::NotASitemap)
        ));
        assert!(matches!(
            parse_sitemap("<html><body>hi</body></html>", &base()),
            Err(SitemapError::UnexpectedRoot(r)) if r == "html"
        ));
        assert!(matches!(
            parse_sitemap("<urlset><url><loc>https://ex.com/a</loc></url>", &base()),
            Err(SitemapError::Xml { .. })
        ));
        assert!(matches!(
            parse_sitemap("<urlset><url></loc></urlset>", &base()),
            Err(SitemapError::Xml { .. })
        ));
        assert!(parse_sitemap("<<<>>>", &base()).is_err());
    }

    #[test]
    fn capped_at_max_entries() {
        let mut xml = String::from("<urlset>");
        for i in 0..MAX_ENTRIES + 10 {
            xml.push_str(&format!("<url><loc>https://ex.com/{i}</loc></url>"));
        }
        xml.push_str("</urlset>");
        let s = parse_sitemap(&xml, &base()).unwrap();
        assert_eq!(s.pages.len(), MAX_ENTRIES);
        assert_eq!(s.pages.last().unwrap().as_str(), "https://ex.com/49999");
    }
}
