//! Deterministic generated test pages mixing JSON-LD, microdata and RDFa, and the per-page
//! summary used to compare extractors.
//!
//! The pages avoid constructs where extruct 0.18 and browsers legitimately disagree
//! (`<base href>`, RDFa `rel`, microdata items without properties, `@graph` mixed with other keys).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use super::extract::{SchemaItem, Syntax};

/// Base URL the corpus pages are served under in the benchmark.
pub const BASE_URL: &str = "https://shop.example";

struct Rng(u64);

impl Rng {
    fn new(seed: usize) -> Self {
        // splitmix64 of the index so neighbouring pages differ in every bit.
        let mut z = (seed as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const WORDS: &[&str] = &[
    "quality",
    "comfort",
    "design",
    "shipping",
    "durable",
    "lightweight",
    "classic",
    "modern",
    "cotton",
    "leather",
    "steel",
    "bamboo",
    "organic",
    "handmade",
    "premium",
    "value",
    "review",
    "customers",
    "delivery",
    "warranty",
    "colour",
    "size",
    "fit",
    "style",
    "season",
    "garden",
    "kitchen",
    "travel",
    "café",
    "naïve",
    "outdoor",
    "winter",
    "summer",
    "gift",
    "family",
    "friendly",
    "support",
    "return",
    "policy",
    "stock",
    "limited",
    "edition",
    "bundle",
    "fresh",
];
const ADJ: &[&str] = &[
    "Classic", "Modern", "Deluxe", "Compact", "Ultra", "Eco", "Smart", "Vintage", "Pro", "Mini",
];
const NOUN: &[&str] = &[
    "Lamp",
    "Chair",
    "Backpack",
    "Kettle",
    "Sneaker",
    "Jacket",
    "Desk",
    "Headphones",
    "Mug",
    "Watch",
];
const FIRST: &[&str] = &[
    "Ana", "Ben", "Chloé", "Dmitri", "Eve", "Farid", "Grace", "Hiro",
];
const LAST: &[&str] = &[
    "Lopez", "Smith", "Müller", "Okafor", "Tanaka", "Rossi", "Kim",
];
const CITY: &[&str] = &["Lyon", "Austin", "Osaka", "Porto", "Leeds", "Graz"];

fn words(rng: &mut Rng, n: usize) -> String {
    let mut s = String::new();
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(rng.pick(WORDS));
    }
    s
}

fn product_name(rng: &mut Rng) -> String {
    format!(
        "{} {} {}",
        rng.pick(ADJ),
        rng.pick(NOUN),
        100 + rng.below(900)
    )
}

fn person(rng: &mut Rng) -> String {
    format!("{} {}", rng.pick(FIRST), rng.pick(LAST))
}

fn price(rng: &mut Rng) -> String {
    format!("{}.{:02}", 5 + rng.below(400), rng.below(100))
}

fn schema_ns(rng: &mut Rng) -> &'static str {
    if rng.chance(50) {
        "https://schema.org/"
    } else {
        "http://schema.org/"
    }
}

/// One ~7 KB page; the same `index` always yields the same bytes.
pub fn generate_page(index: usize) -> String {
    let mut rng = Rng::new(index);
    // Bit 0: JSON-LD, bit 1: microdata, bit 2: RDFa; every non-empty combination.
    let combo = 1 + rng.below(7);
    let target = 5_600 + rng.below(2_800);
    let title = product_name(&mut rng);
    let mut h = String::with_capacity(target + 2048);

    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{title} | Example Shop</title>\n\
         <meta name=\"description\" content=\"{}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <link rel=\"stylesheet\" href=\"/static/site.css\">\n",
        words(&mut rng, 12)
    );
    if combo & 1 != 0 {
        let blocks = 1 + rng.below(3);
        for _ in 0..blocks {
            jsonld_block(&mut rng, index, &mut h);
        }
    }
    h.push_str("</head>\n<body>\n<header class=\"site-header\">\n<nav><ul class=\"menu\">\n");
    for k in 0..12 + rng.below(8) {
        let n = rng.below(5000);
        let href = match k % 6 {
            0 => format!("{n}.html"),
            1 => format!("/p/{n}.html#reviews"),
            2 => format!("{BASE_URL}/p/{n}.html"),
            _ => format!("/p/{n}.html"),
        };
        let _ = writeln!(
            h,
            "<li><a class=\"nav-link\" href=\"{href}\">{}</a></li>",
            words(&mut rng, 2)
        );
    }
    h.push_str(
        "<li><a href=\"#top\">Top</a></li>\n<li><a href=\"mailto:help@shop.example\">Contact</a></li>\n\
         <li><a href=\"javascript:void(0)\">Menu</a></li>\n</ul></nav>\n</header>\n<main id=\"top\">\n",
    );
    let _ = writeln!(h, "<h1 class=\"page-title\">{title}</h1>");
    paragraphs(&mut rng, 2, &mut h);
    if combo & 2 != 0 {
        microdata_block(&mut rng, &mut h);
        if rng.chance(30) {
            microdata_block(&mut rng, &mut h);
        }
    }
    paragraphs(&mut rng, 1, &mut h);
    if combo & 4 != 0 {
        rdfa_block(&mut rng, &mut h);
        if rng.chance(30) {
            rdfa_block(&mut rng, &mut h);
        }
    }
    while h.len() + 700 < target {
        paragraphs(&mut rng, 1, &mut h);
    }
    h.push_str("</main>\n<footer>\n<ul class=\"footer-links\">\n");
    for _ in 0..4 {
        let n = rng.below(5000);
        let _ = writeln!(
            h,
            "<li><a href=\"/p/{n}.html\">{}</a></li>",
            words(&mut rng, 2)
        );
    }
    let _ = write!(
        h,
        "<li><a href=\"https://partner.example/ref?id={index}&amp;src=shop\">Partner</a></li>\n</ul>\n\
         <p class=\"copyright\">&copy; 2024 Example Shop &mdash; {}</p>\n</footer>\n\
         <script>window.dataLayer = window.dataLayer || []; dataLayer.push({{page: {index}}});</script>\n\
         </body>\n</html>\n",
        words(&mut rng, 4)
    );
    h
}

fn paragraphs(rng: &mut Rng, n: usize, h: &mut String) {
    for _ in 0..n {
        let _ = writeln!(
            h,
            "<section class=\"copy\"><h2>{}</h2>\n<p>{} <strong>{}</strong> {}.</p>\n<p>{}.</p></section>",
            words(rng, 3),
            words(rng, 25),
            words(rng, 2),
            words(rng, 20),
            words(rng, 30)
        );
    }
}

fn jsonld_block(rng: &mut Rng, index: usize, h: &mut String) {
    let url = format!("{BASE_URL}/p/{index}.html");
    let json = match rng.below(6) {
        0 | 1 => {
            let mut p = format!(
                "{{\"@context\": \"https://schema.org\", \"@type\": \"Product\", \"name\": \"{}\", \
                 \"image\": [\"{BASE_URL}/img/{index}-1.jpg\", \"{BASE_URL}/img/{index}-2.jpg\"], \
                 \"description\": \"{}\", \"sku\": \"SKU-{index}\"",
                product_name(rng),
                words(rng, 10)
            );
            if rng.chance(60) {
                let _ = write!(
                    p,
                    ", \"brand\": {{\"@type\": \"Brand\", \"name\": \"{}\"}}",
                    rng.pick(ADJ)
                );
            }
            let _ = write!(
                p,
                ", \"offers\": {{\"@type\": \"Offer\", \"price\": \"{}\", \"priceCurrency\": \"EUR\", \
                 \"availability\": \"https://schema.org/InStock\", \"url\": \"{url}\"}}",
                price(rng)
            );
            if rng.chance(70) {
                let _ = write!(
                    p,
                    ", \"aggregateRating\": {{\"@type\": \"AggregateRating\", \"ratingValue\": {}.{}, \"reviewCount\": {}}}",
                    1 + rng.below(4),
                    rng.below(10),
                    1 + rng.below(500)
                );
            }
            if rng.chance(40) {
                let _ = write!(
                    p,
                    ", \"review\": [{{\"@type\": \"Review\", \"author\": {{\"@type\": \"Person\", \"name\": \"{}\"}}, \
                     \"reviewBody\": \"{}\"}}]",
                    person(rng),
                    words(rng, 8)
                );
            }
            p.push('}');
            p
        }
        2 => format!(
            "{{\"@context\": \"https://schema.org\", \"@type\": \"Organization\", \"name\": \"Example Shop\", \
             \"url\": \"{BASE_URL}/\", \"logo\": \"{BASE_URL}/logo.png\", \
             \"sameAs\": [\"https://social.example/shop\", \"https://video.example/shop\"]{}}}",
            if rng.chance(50) {
                ", \"contactPoint\": {\"@type\": \"ContactPoint\", \"telephone\": \"+1-555-0100\", \"contactType\": \"customer service\"}"
            } else {
                ""
            }
        ),
        3 => {
            let depth = 2 + rng.below(3);
            let mut items = String::new();
            for pos in 1..=depth {
                if pos > 1 {
                    items.push_str(", ");
                }
                let _ = write!(
                    items,
                    "{{\"@type\": \"ListItem\", \"position\": {pos}, \"name\": \"{}\", \"item\": \"{BASE_URL}/c/{pos}\"}}",
                    words(rng, 1)
                );
            }
            format!(
                "{{\"@context\": \"https://schema.org\", \"@type\": \"BreadcrumbList\", \"itemListElement\": [{items}]}}"
            )
        }
        4 => format!(
            "{{\"@context\": \"http://schema.org\", \"@type\": \"{}\", \"headline\": \"{}\", \
             \"datePublished\": \"2024-0{}-1{}\", \"author\": {{\"@type\": \"Person\", \"name\": \"{}\"}}, \
             \"publisher\": {{\"@type\": \"Organization\", \"name\": \"Example Shop\"}}, \"mainEntityOfPage\": \"{url}\"{}}}",
            rng.pick(&["Article", "BlogPosting", "NewsArticle"]),
            words(rng, 6),
            1 + rng.below(9),
            rng.below(10),
            person(rng),
            if rng.chance(50) {
                ", \"image\": \"https://shop.example/img/hero.jpg\""
            } else {
                ""
            }
        ),
        _ => {
            if rng.chance(50) {
                format!(
                    "{{\"@context\": \"https://schema.org\", \"@graph\": [\
                     {{\"@type\": \"WebSite\", \"@id\": \"{BASE_URL}/#website\", \"url\": \"{BASE_URL}/\", \"name\": \"Example Shop\"}}, \
                     {{\"@type\": \"WebPage\", \"@id\": \"{url}#webpage\", \"url\": \"{url}\", \"name\": \"{}\", \
                     \"isPartOf\": {{\"@id\": \"{BASE_URL}/#website\"}}, \"inLanguage\": \"en\"}}]}}",
                    words(rng, 4)
                )
            } else {
                format!(
                    "[{{\"@context\": \"https://schema.org\", \"@type\": \"WebSite\", \"url\": \"{BASE_URL}/\", \
                     \"potentialAction\": {{\"@type\": \"SearchAction\", \"target\": \"{BASE_URL}/search?q={{q}}\", \
                     \"query-input\": \"required name=q\"}}}}, \
                     {{\"@context\": \"https://schema.org\", \"@type\": \"Person\", \"name\": \"{}\"}}]",
                    person(rng)
                )
            }
        }
    };
    // Some sites wrap JSON-LD in CDATA comments; extruct and we both tolerate it.
    if rng.chance(15) {
        let _ = write!(
            h,
            "<script type=\"application/ld+json\">\n//<![CDATA[\n{json}\n//]]>\n</script>\n"
        );
    } else {
        let _ = write!(
            h,
            "<script type=\"application/ld+json\">\n{json}\n</script>\n"
        );
    }
}

fn microdata_block(rng: &mut Rng, h: &mut String) {
    let ns = schema_ns(rng);
    match rng.below(4) {
        0 | 1 => {
            let _ = write!(
                h,
                "<div class=\"product\" itemscope itemtype=\"{ns}Product\">\n\
                 <h2 itemprop=\"name\">{}</h2>\n\
                 <img itemprop=\"image\" src=\"/img/{}.jpg\" alt=\"product photo\">\n\
                 <p itemprop=\"description\">{}</p>\n",
                product_name(rng),
                rng.below(1000),
                words(rng, 15)
            );
            if rng.chance(50) {
                let _ = writeln!(
                    h,
                    "<div itemprop=\"brand\" itemscope itemtype=\"{ns}Brand\"><span itemprop=\"name\">{}</span></div>",
                    rng.pick(ADJ)
                );
            }
            let _ = write!(
                h,
                "<div itemprop=\"offers\" itemscope itemtype=\"{ns}Offer\">\n\
                 <meta itemprop=\"priceCurrency\" content=\"USD\">\n\
                 <span itemprop=\"price\" content=\"{p}\">${p}</span>\n\
                 <link itemprop=\"availability\" href=\"https://schema.org/InStock\">In stock\n</div>\n",
                p = price(rng)
            );
            if rng.chance(60) {
                let _ = write!(
                    h,
                    "<div itemprop=\"aggregateRating\" itemscope itemtype=\"{ns}AggregateRating\">\n\
                     Rated <span itemprop=\"ratingValue\">{}</span>/5 from <span itemprop=\"reviewCount\">{}</span> reviews\n</div>\n",
                    1 + rng.below(5),
                    1 + rng.below(300)
                );
            }
            for _ in 0..rng.below(3) {
                let _ = write!(
                    h,
                    "<div itemprop=\"review\" itemscope itemtype=\"{ns}Review\">\n\
                     <span itemprop=\"author\" itemscope itemtype=\"{ns}Person\"><span itemprop=\"name\">{}</span></span>\n\
                     <time itemprop=\"datePublished\" datetime=\"2024-03-{:02}\">March</time>\n\
                     <p itemprop=\"reviewBody\">{}</p>\n</div>\n",
                    person(rng),
                    1 + rng.below(28),
                    words(rng, 12)
                );
            }
            h.push_str("</div>\n");
        }
        2 => {
            // itemref pulls the address block from outside the item.
            let id = format!("addr-{}", rng.below(100_000));
            let _ = write!(
                h,
                "<div class=\"author-box\" itemscope itemtype=\"{ns}Person\" itemref=\"{id}\">\n\
                 <span itemprop=\"name\">{}</span>, <span itemprop=\"jobTitle\">{}</span>\n\
                 <a itemprop=\"url\" href=\"/authors/{}\">profile</a>\n</div>\n\
                 <p>{}</p>\n\
                 <div id=\"{id}\" itemprop=\"address\" itemscope itemtype=\"{ns}PostalAddress\">\n\
                 <span itemprop=\"addressLocality\">{}</span> <span itemprop=\"postalCode\">{}</span>\n</div>\n",
                person(rng),
                words(rng, 2),
                rng.below(100),
                words(rng, 10),
                rng.pick(CITY),
                10_000 + rng.below(89_999)
            );
        }
        _ => {
            let _ = write!(
                h,
                "<div itemscope itemtype=\"{ns}Event\">\n<h3 itemprop=\"name\">{}</h3>\n\
                 <time itemprop=\"startDate\" datetime=\"2025-0{}-10T19:00\">soon</time>\n\
                 <div itemprop=\"location\" itemscope itemtype=\"{ns}Place\"><span itemprop=\"name\">{} Hall</span>\n\
                 <span itemprop=\"address\">{}</span></div>\n\
                 <data itemprop=\"maximumAttendeeCapacity\" value=\"{}\">many</data>\n</div>\n",
                words(rng, 3),
                1 + rng.below(9),
                rng.pick(CITY),
                rng.pick(CITY),
                50 + rng.below(500)
            );
        }
    }
}

fn rdfa_block(rng: &mut Rng, h: &mut String) {
    let ns = schema_ns(rng);
    match rng.below(3) {
        0 => {
            let _ = write!(
                h,
                "<div class=\"rdfa-product\" vocab=\"{ns}\" typeof=\"Product\">\n\
                 <h2 property=\"name\">{}</h2>\n\
                 <img property=\"image\" src=\"/img/r{}.jpg\" alt=\"\">\n\
                 <p property=\"description\">{}</p>\n\
                 <div property=\"offers\" typeof=\"Offer\">\n\
                 <span property=\"price\" content=\"{p}\">{p} EUR</span>\n\
                 <span property=\"priceCurrency\" content=\"EUR\"></span>\n\
                 <link property=\"availability\" href=\"https://schema.org/InStock\">\n</div>\n",
                product_name(rng),
                rng.below(1000),
                words(rng, 12),
                p = price(rng)
            );
            if rng.chance(60) {
                let _ = write!(
                    h,
                    "<div property=\"aggregateRating\" typeof=\"AggregateRating\">\n\
                     <span property=\"ratingValue\">{}</span> of <span property=\"bestRating\">5</span>\n</div>\n",
                    1 + rng.below(5)
                );
            }
            h.push_str("</div>\n");
        }
        1 => {
            let _ = write!(
                h,
                "<article prefix=\"schema: http://schema.org/\" typeof=\"schema:BlogPosting\">\n\
                 <h2 property=\"schema:headline\">{}</h2>\n\
                 <time property=\"schema:datePublished\" datetime=\"2024-05-{:02}\">May</time>\n\
                 <span property=\"schema:author\" typeof=\"schema:Person\">by <span property=\"schema:name\">{}</span></span>\n\
                 <div property=\"schema:articleBody\"><p>{}</p></div>\n</article>\n",
                words(rng, 5),
                1 + rng.below(28),
                person(rng),
                words(rng, 30)
            );
        }
        _ => {
            let _ = write!(
                h,
                "<div vocab=\"{ns}\" typeof=\"LocalBusiness\">\n\
                 <h3 property=\"name\">{} Store</h3>\n\
                 <div property=\"address\" typeof=\"PostalAddress\">\n\
                 <span property=\"streetAddress\">{} Main St</span>, <span property=\"addressLocality\">{}</span>\n</div>\n\
                 <span property=\"telephone\">+1-555-01{:02}</span>\n\
                 <a property=\"url\" href=\"/stores/{}\">details</a>\n</div>\n",
                rng.pick(CITY),
                1 + rng.below(500),
                rng.pick(CITY),
                rng.below(100),
                rng.below(50)
            );
        }
    }
}

/// Writes `{dir}/p/{i}.html` for `i` in `0..pages`.
pub fn generate_corpus(dir: &Path, pages: usize) -> io::Result<()> {
    let p = dir.join("p");
    std::fs::create_dir_all(&p)?;
    for i in 0..pages {
        std::fs::write(p.join(format!("{i}.html")), generate_page(i))?;
    }
    Ok(())
}

/// Per syntax, the sorted `"{Types}:{distinct top-level properties}"` of each top-level item
/// (types sorted and joined by `|`). `bench/extruct_bench.py` derives the same from extruct.
pub fn summarize(items: &[SchemaItem]) -> BTreeMap<&'static str, Vec<String>> {
    let mut out: BTreeMap<&'static str, Vec<String>> = [
        ("json-ld", Vec::new()),
        ("microdata", Vec::new()),
        ("rdfa", Vec::new()),
    ]
    .into_iter()
    .collect();
    for item in items {
        let key = match item.syntax {
            Syntax::JsonLd => "json-ld",
            Syntax::Microdata => "microdata",
            Syntax::Rdfa => "rdfa",
        };
        let mut types: Vec<&str> = item.types.iter().map(String::as_str).collect();
        types.sort_unstable();
        // RDFa counts only schema.org properties (extruct's expanded IRIs from other
        // vocabularies are not comparable); short names are exactly the schema.org ones.
        let n = match item.syntax {
            Syntax::Rdfa => item
                .properties
                .keys()
                .filter(|k| !k.contains("://"))
                .count(),
            _ => item.properties.len(),
        };
        if let Some(v) = out.get_mut(key) {
            v.push(format!("{}:{n}", types.join("|")));
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::extract::extract;
    use super::*;

    #[test]
    fn pages_are_deterministic_and_sized() {
        assert_eq!(generate_page(7), generate_page(7));
        assert_ne!(generate_page(7), generate_page(8));
        let total: usize = (0..200).map(|i| generate_page(i).len()).sum();
        let avg = total / 200;
        assert!((6_000..8_500).contains(&avg), "average page size {avg}");
    }

    #[test]
    fn pages_mix_syntaxes_and_link_to_each_other() {
        let mut with = [0usize; 3];
        let mut multi = 0;
        for i in 0..210 {
            let base = url::Url::parse(&format!("{BASE_URL}/p/{i}.html")).unwrap();
            let e = extract(&generate_page(i), &base);
            let s = summarize(&e.items);
            let present: Vec<bool> = ["json-ld", "microdata", "rdfa"]
                .iter()
                .map(|k| !s[k].is_empty())
                .collect();
            for (k, p) in present.iter().enumerate() {
                with[k] += usize::from(*p);
            }
            multi += usize::from(present.iter().filter(|p| **p).count() > 1);
            assert!(present.iter().any(|p| *p), "page {i} has no items");
            assert!(e.links.iter().all(|u| u.fragment().is_none()));
            assert!(
                e.links
                    .iter()
                    .any(|u| u.as_str().starts_with("https://shop.example/p/"))
            );
        }
        for n in with {
            assert!(n > 80, "syntax counts {with:?}");
        }
        assert!(multi > 60);
    }
}
