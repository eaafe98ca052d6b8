//! Private-address guard: keeps the fetcher from reaching loopback, private,
//! link-local and other non-public addresses unless the operator allowlists them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

use super::FetchError;

/// Most entries an allowlist may hold; a longer list is almost surely a mistake.
pub const MAX_ALLOW_ENTRIES: usize = 256;

/// Operator allowlist: exact host names, `*.suffix` wildcards (subdomains only,
/// not the bare suffix) and CIDRs / single IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "Vec<String>")]
pub struct Allow {
    hosts: Vec<String>,
    suffixes: Vec<String>,
    nets: Vec<IpNet>,
}

impl Allow {
    /// Parses allowlist entries such as `localhost`, `*.corp.example`, `10.0.0.0/8`, `::1`.
    pub fn parse(entries: &[String]) -> Result<Allow, String> {
        if entries.len() > MAX_ALLOW_ENTRIES {
            return Err(format!(
                "allow list has {} entries; at most {MAX_ALLOW_ENTRIES} are accepted",
                entries.len()
            ));
        }
        let mut allow = Allow::none();
        for (i, raw) in entries.iter().enumerate() {
            let entry = raw.trim();
            let bad = |why: &str| format!("allow entry #{} {raw:?}: {why}", i + 1);
            if entry.is_empty() {
                return Err(bad("is empty"));
            }
            if entry.contains("://") {
                return Err(bad(
                    "must be a host name or CIDR, not a URL (drop the scheme)",
                ));
            }
            if let Ok(net) = entry.parse::<IpNet>() {
                allow.nets.push(net.trunc());
                continue;
            }
            let unbracketed = entry
                .strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(entry);
            if let Ok(ip) = unbracketed.parse::<IpAddr>() {
                allow.nets.push(IpNet::from(ip));
                continue;
            }
            if entry.contains('/') {
                return Err(bad(
                    "is neither a valid CIDR nor a host name (host names take no path)",
                ));
            }
            if entry.contains(':') || entry.contains('[') {
                return Err(bad(
                    "must be a host name or CIDR without a port (ports are not filtered)",
                ));
            }
            if entry.contains('@') {
                return Err(bad("must be a host name without user info"));
            }
            let lower = entry.to_ascii_lowercase();
            let lower = lower.strip_suffix('.').unwrap_or(&lower);
            let (wildcard, name) = match lower.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, lower),
            };
            if let Err(why) = validate_host_name(name) {
                return Err(bad(&why));
            }
            if wildcard {
                allow.suffixes.push(format!(".{name}"));
            } else {
                allow.hosts.push(name.to_string());
            }
        }
        Ok(allow)
    }

    /// An empty allowlist: every restricted address is refused.
    pub fn none() -> Allow {
        Allow::default()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty() && self.suffixes.is_empty() && self.nets.is_empty()
    }

    /// Whether `host` (a name or IP literal, case-insensitive) is allowlisted.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let unbracketed = host
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .unwrap_or(&host);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return self.allows_ip(ip);
        }
        self.hosts.contains(&host)
            || self
                .suffixes
                .iter()
                .any(|s| host.len() > s.len() && host.ends_with(s.as_str()))
    }

    /// Whether `ip` falls in an allowlisted CIDR (IPv4-mapped IPv6 matches
    /// IPv4 CIDRs too). A cloud metadata address must be named on its own
    /// (`169.254.169.254` or `/32`): a wide CIDR such as `0.0.0.0/0` or
    /// `169.254.0.0/16` never lets a crawl read instance credentials.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let metadata = is_metadata(ip) || mapped.is_some_and(is_metadata);
        self.nets.iter().any(|n| {
            let covers = n.contains(&ip) || mapped.is_some_and(|m| n.contains(&m));
            covers && (!metadata || n.prefix_len() == n.max_prefix_len())
        })
    }

    /// Checks that every entry of this list (a campaign's `config.allow`) is
    /// covered by `operator` (`ORCH_CAMPAIGN_ALLOW`), so a request can narrow
    /// the operator's list but never widen it. The error names the entry.
    pub fn within(&self, operator: &Allow) -> Result<(), String> {
        let refused = |entry: String| {
            Err(format!(
                "{entry:?} is not covered by the operator's ORCH_CAMPAIGN_ALLOW \
                 (a campaign may only narrow it)"
            ))
        };
        for host in &self.hosts {
            if !operator.allows_host(host) {
                return refused(host.clone());
            }
        }
        for suffix in &self.suffixes {
            let covered = operator
                .suffixes
                .iter()
                .any(|o| suffix == o || suffix.ends_with(o.as_str()));
            if !covered {
                return refused(format!("*{suffix}"));
            }
        }
        for net in &self.nets {
            let covered = if net.prefix_len() == net.max_prefix_len() {
                operator.allows_ip(net.addr())
            } else {
                operator.nets.iter().any(|o| o.contains(net))
            };
            if !covered {
                return refused(net.to_string());
            }
        }
        Ok(())
    }
}

/// Cloud instance metadata services (AWS, GCP and Azure share
/// 169.254.169.254; AWS ECS task metadata; Alibaba; AWS over IPv6): they
/// hand out credentials to whoever asks from the instance.
fn is_metadata(ip: IpAddr) -> bool {
    const METADATA: [IpAddr; 4] = [
        IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
        IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    ];
    METADATA.contains(&ip)
}

impl TryFrom<Vec<String>> for Allow {
    type Error = String;

    fn try_from(entries: Vec<String>) -> Result<Self, Self::Error> {
        Allow::parse(&entries)
    }
}

fn validate_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err("is not a valid host name".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("has an empty or over-long label".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("has a label starting or ending with '-'".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!(
                "contains {c:?}; use a bare host name (punycode for IDNs), \
                 optionally prefixed with \"*.\", or a CIDR"
            ));
        }
    }
    Ok(())
}

/// Whether an address is one the guard refuses unless allowlisted.
pub fn is_restricted(ip: IpAddr) -> bool {
    classify(ip).is_some()
}

/// Why an address is restricted, phrased to follow "is"/"resolves to X,"; `None` if public.
pub fn classify(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    let in_net = |net: [u8; 4], prefix: u32| {
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        };
        u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
    };
    Some(match () {
        _ if ip.is_unspecified() => "an unspecified address",
        _ if o[0] == 0 => "a 'this network' (0.0.0.0/8) address",
        _ if ip.is_loopback() => "a loopback address",
        _ if in_net([10, 0, 0, 0], 8) || in_net([172, 16, 0, 0], 12) => "a private address",
        _ if in_net([192, 168, 0, 0], 16) => "a private address",
        _ if in_net([169, 254, 169, 254], 32) => "a link-local (cloud metadata) address",
        _ if in_net([169, 254, 0, 0], 16) => "a link-local address",
        _ if in_net([100, 64, 0, 0], 10) => "a carrier-grade NAT (shared) address",
        _ if in_net([192, 0, 0, 0], 24) => "an IETF protocol-assignment address",
        _ if in_net([192, 0, 2, 0], 24)
            || in_net([198, 51, 100, 0], 24)
            || in_net([203, 0, 113, 0], 24) =>
        {
            "a documentation address"
        }
        _ if in_net([198, 18, 0, 0], 15) => "a benchmarking address",
        _ if in_net([192, 88, 99, 0], 24) => "a 6to4 relay anycast address",
        _ if ip.is_broadcast() => "the broadcast address",
        _ if ip.is_multicast() => "a multicast address",
        _ if in_net([240, 0, 0, 0], 4) => "a reserved address",
        _ => return None,
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if ip.is_unspecified() {
        return Some("an unspecified address");
    }
    if ip.is_loopback() {
        return Some("a loopback address");
    }
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible) and ::ffff:0:a.b.c.d (translated)
    // all reach the IPv4 host on dual-stack sockets or translators.
    if seg[..5] == [0; 5] && (seg[5] == 0xffff || seg[5] == 0) {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    if seg[..4] == [0; 4] && seg[4] == 0xffff && seg[5] == 0 {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    // NAT64 well-known prefix 64:ff9b::/96 maps onto IPv4 through a translator.
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return classify_v4(embedded_v4(seg[6], seg[7]));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2] == 1 {
        return Some("a local-use NAT64 address");
    }
    // 6to4 (2002::/16) embeds the IPv4 address in bits 16..48.
    if seg[0] == 0x2002 {
        return classify_v4(embedded_v4(seg[1], seg[2]));
    }
    // Teredo (2001::/32) embeds the client IPv4 address, bit-inverted, in the last 32 bits.
    if seg[0] == 0x2001 && seg[1] == 0 {
        return classify_v4(embedded_v4(!seg[6], !seg[7]));
    }
    Some(match seg[0] {
        s if s & 0xfe00 == 0xfc00 => "a unique-local address",
        s if s & 0xffc0 == 0xfe80 => "a link-local address",
        s if s & 0xffc0 == 0xfec0 => "a site-local address",
        s if s & 0xff00 == 0xff00 => "a multicast address",
        0x2001 if seg[1] == 0xdb8 => "a documentation address",
        0x2001 if seg[1] == 2 && seg[2] == 0 => "a benchmarking address",
        s if s & 0xfff0 == 0x3ff0 => "a documentation address",
        0x100 if seg[1..4] == [0, 0, 0] => "a discard-only address",
        _ => return None,
    })
}

/// Checks a URL before any connection is made: http(s) only, a host, no user info,
/// and an IP-literal host must be unrestricted or allowlisted.
pub fn check_url(url: &Url, allow: &Allow) -> Result<(), FetchError> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(FetchError::InvalidUrl(format!(
                "{url}: scheme {other:?} is not allowed (only http and https)"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(FetchError::InvalidUrl(format!(
            "{}: URLs with user info are not fetched",
            redact_userinfo(url)
        )));
    }
    let ip = match url.host() {
        None => {
            return Err(FetchError::InvalidUrl(format!("{url}: URL has no host")));
        }
        Some(Host::Domain(_)) => return Ok(()),
        Some(Host::Ipv4(v4)) => IpAddr::V4(v4),
        Some(Host::Ipv6(v6)) => IpAddr::V6(v6),
    };
    match classify(ip) {
        Some(class) if !allow.allows_ip(ip) => Err(FetchError::Blocked {
            url: url.clone(),
            reason: format!(
                "{ip} is {class}; the operator must list it in ORCH_CAMPAIGN_ALLOW to crawl it"
            ),
        }),
        _ => Ok(()),
    }
}

fn redact_userinfo(url: &Url) -> Url {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u
}

/// Resolver error raised when every address of a name is restricted.
#[derive(Debug, Clone)]
pub struct BlockedAddress {
    pub host: String,
    pub ip: IpAddr,
    pub class: &'static str,
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} resolves to {}, {}; the operator must list it in ORCH_CAMPAIGN_ALLOW to crawl it",
            self.host, self.ip, self.class
        )
    }
}

impl std::error::Error for BlockedAddress {}

/// DNS resolver for reqwest that drops restricted addresses unless allowlisted.
/// Filtering at resolution time means the connection uses exactly the checked
/// addresses, so DNS rebinding between check and connect is not possible.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow: Arc<Allow>,
}

impl GuardedResolver {
    pub fn new(allow: Arc<Allow>) -> Self {
        Self { allow }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow = Arc::clone(&self.allow);
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if allow.allows_host(&host) {
                return Ok(Box::new(addrs.into_iter()) as Addrs);
            }
            let mut blocked = None;
            let kept: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|a| match classify(a.ip()) {
                    Some(class) if !allow.allows_ip(a.ip()) => {
                        blocked.get_or_insert((a.ip(), class));
                        false
                    }
                    _ => true,
                })
                .collect();
            if kept.is_empty() {
                if let Some((ip, class)) = blocked {
                    return Err(BlockedAddress { host, ip, class }.into());
                }
                return Err(format!("{host}: no addresses found").into());
            }
            if let Some((ip, _)) = blocked {
                tracing::debug!(%host, %ip, "dropped restricted address from DNS answer");
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_addresses() {
        for s in [
            "127.0.0.1",
            "127.9.9.9",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "2001:0:4136:e378:8000:63bf:f5ff:fffe", // Teredo, client 10.0.0.1
            "2001:db8::1",
            "fec0::1",
        ] {
            assert!(is_restricted(ip(s)), "{s} should be restricted");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::1",
            "64:ff9b::808:808",
        ] {
            assert!(!is_restricted(ip(s)), "{s} should be public");
        }
    }

    #[test]
    fn allow_parse_and_match() {
        let a = Allow::parse(&[
            "LocalHost".into(),
            "*.corp.example".into(),
            "10.0.0.0/8".into(),
            "::1".into(),
            "[fd00::5]".into(),
        ])
        .unwrap();
        assert!(a.allows_host("localhost"));
        assert!(a.allows_host("LOCALHOST."));
        assert!(a.allows_host("a.b.corp.example"));
        assert!(!a.allows_host("corp.example"));
        assert!(!a.allows_host("evilcorp.example"));
        assert!(a.allows_host("[::1]"));
        assert!(a.allows_ip(ip("10.2.3.4")));
        assert!(a.allows_ip(ip("::ffff:10.2.3.4")));
        assert!(a.allows_ip(ip("fd00::5")));
        assert!(!a.allows_ip(ip("127.0.0.1")));
        assert!(!Allow::none().allows_host("localhost"));
    }

    fn list(entries: &[&str]) -> Allow {
        Allow::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn metadata_addresses_need_an_exact_entry() {
        let wide = list(&["0.0.0.0/0", "::/0", "169.254.0.0/16"]);
        assert!(wide.allows_ip(ip("169.254.1.1")));
        for metadata in [
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "169.254.170.2",
            "100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(!wide.allows_ip(ip(metadata)), "{metadata}");
            assert!(!wide.allows_host(metadata), "{metadata}");
        }
        let exact = list(&["169.254.169.254/32"]);
        assert!(exact.allows_ip(ip("169.254.169.254")));
        assert!(list(&["169.254.169.254"]).allows_host("169.254.169.254"));
    }

    #[test]
    fn a_campaign_list_may_only_narrow_the_operators() {
        let operator = list(&["127.0.0.0/8", "localhost", "*.corp.example", "10.0.0.0/8"]);
        for narrower in [
            &["127.0.0.1"][..],
            &["127.0.0.0/16"],
            &["localhost"],
            &["*.corp.example"],
            &["*.eu.corp.example"],
            &["db.corp.example"],
            &["10.1.0.0/16", "127.0.0.1"],
        ] {
            list(narrower).within(&operator).unwrap();
        }
        for (wider, named) in [
            (&["0.0.0.0/0"][..], "0.0.0.0/0"),
            (&["::/0"], "::/0"),
            (&["169.254.169.254/32"], "169.254.169.254/32"),
            (&["127.0.0.1", "192.168.0.0/16"], "192.168.0.0/16"),
            (&["*.example"], "*.example"),
            (&["corp.example"], "corp.example"),
            (&["10.0.0.0/7"], "10.0.0.0/7"),
        ] {
            let err = list(wider).within(&operator).unwrap_err();
            assert!(err.contains(named), "{err}");
        }
        // Nothing is covered by an empty operator list.
        let err = list(&["127.0.0.1"]).within(&Allow::none()).unwrap_err();
        assert!(err.contains("ORCH_CAMPAIGN_ALLOW"), "{err}");
        // Metadata must be named by the operator too.
        let operator = list(&["169.254.0.0/16"]);
        assert!(list(&["169.254.169.254"]).within(&operator).is_err());
        let operator = list(&["169.254.169.254"]);
        list(&["169.254.169.254"]).within(&operator).unwrap();
    }

    #[test]
    fn allow_parse_rejects_bad_entries() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("   ", "is empty"),
            ("http://example.com", "not a URL"),
            ("example.com/path", "no path"),
            ("example.com:8080", "without a port"),
            ("10.0.0.0/33", "neither a valid CIDR"),
            ("user@example.com", "user info"),
            ("exa mple.com", "contains ' '"),
            ("-bad.example", "starting or ending with '-'"),
            ("a..b", "empty or over-long label"),
            ("*.", "contains '*'"),
            ("*", "contains '*'"),
        ];
        for (entry, needle) in cases {
            let err = Allow::parse(&["ok.example".into(), entry.to_string()]).unwrap_err();
            assert!(err.contains(needle), "{entry:?}: {err}");
            assert!(err.contains("#2"), "{entry:?}: {err}");
        }
        let many: Vec<String> = (0..257).map(|i| format!("h{i}.example")).collect();
        assert!(Allow::parse(&many).unwrap_err().contains("at most 256"));
        assert!(Allow::parse(&many[..256]).is_ok());
    }

    #[test]
    fn allow_deserializes_from_a_list() {
        use serde::Deserialize;
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error, SeqDeserializer};
        let de = |v: Vec<&str>| -> SeqDeserializer<_, Error> {
            v.into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
                .into_deserializer()
        };
        let allow = Allow::deserialize(de(vec!["localhost", "10.0.0.0/8"])).unwrap();
        assert!(allow.allows_host("localhost") && allow.allows_ip(ip("10.1.1.1")));
        let err = Allow::deserialize(de(vec!["http://x"])).unwrap_err();
        assert!(err.to_string().contains("not a URL"), "{err}");
    }

    #[test]
    fn check_url_rules() {
        let none = Allow::none();
        let u = |s: &str| Url::parse(s).unwrap();
        for s in [
            "http://127.0.0.1/",
            "http://[::1]:8080/",
            "http://2130706433/",
            "http://0177.0.0.1/",
            "http://0x7f.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
        ] {
            let err = check_url(&u(s), &none).unwrap_err();
            assert_eq!(err.kind(), "blocked", "{s}: {err}");
            assert!(err.to_string().contains("ORCH_CAMPAIGN_ALLOW"), "{err}");
        }
        for s in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://u:p@example.com/",
        ] {
            assert_eq!(
                check_url(&u(s), &none).unwrap_err().kind(),
                "invalid_url",
                "{s}"
            );
        }
        assert!(
            !check_url(&u("http://u:secret@example.com/"), &none)
                .unwrap_err()
                .to_string()
                .contains("secret")
        );
        assert!(check_url(&u("https://example.com/x"), &none).is_ok());
        assert!(check_url(&u("http://8.8.8.8/"), &none).is_ok());
        let allow = Allow::parse(&["127.0.0.0/8".into()]).unwrap();
        assert!(check_url(&u("http://127.0.0.1/"), &allow).is_ok());
        assert!(check_url(&u("http://[::ffff:127.0.0.1]/"), &allow).is_ok());
    }
}
