//! Origin allow-lists: exact origins and wildcard subdomains, compared on the normalised
//! scheme, host and port (SPEC section 3, step 8).

use std::collections::HashSet;

/// A parsed, normalised origin: lowercase scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses a serialized origin (`scheme://host[:port]`, RFC 6454). Anything with a
    /// path, query, userinfo or an unknown scheme is refused, as is `null`.
    pub fn parse(text: &str) -> Option<Origin> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" | "wss" => 443,
            "http" | "ws" => 80,
            _ => return None,
        };
        // An origin may carry a lone trailing slash from sloppy clients; nothing more.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', '\\', ' ']) {
            return None;
        }
        let (host, port) = split_host_port(rest)?;
        let port = match port {
            Some(p) => parse_port(p)?,
            None => default_port,
        };
        let host = normalise_host(host)?;
        Some(Origin { scheme, host, port })
    }

    /// The canonical serialization: `scheme://host`, with `:port` only when it is not the
    /// scheme's default (`https://app.example.com`, `http://localhost:8080`). It parses
    /// back to the same `Origin`, and is what a browser sends for that origin.
    pub fn normalized(&self) -> String {
        let default_port = match self.scheme.as_str() {
            "https" | "wss" => 443,
            _ => 80,
        };
        if self.port == default_port {
            format!("{}://{}", self.scheme, self.host)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalized())
    }
}

/// Whether two serialized origins are the same origin once normalised (scheme and host
/// lowercased, a trailing dot or lone trailing slash dropped, the scheme's default port
/// written or not): `https://App.example.com` and `https://app.example.com:443/` are.
/// Anything [`Origin::parse`] refuses (`null`, a path, an unknown scheme) is the same
/// origin as nothing, itself included.
///
/// For a ticket's Origin binding: compare the Origin presented at the handshake with the
/// one given at minting (better still, store [`Origin::normalized`] at minting).
pub fn same_origin(a: &str, b: &str) -> bool {
    match (Origin::parse(a.trim()), Origin::parse(b.trim())) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(after) = s.strip_prefix('[') {
        let end = after.find(']')?;
        let host = &s[..end + 2];
        let tail = &after[end + 1..];
        return match tail {
            "" => Some((host, None)),
            t => Some((host, Some(t.strip_prefix(':')?))),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

fn normalise_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    if host.starts_with('[') {
        let inner = &host[1..host.len() - 1];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(host);
    }
    let ok = host
        .split('.')
        .all(|label| !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    ok.then_some(host)
}

/// Error naming what is wrong with an allow-list entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadPattern(pub String);

/// The compiled allow-list.
#[derive(Debug, Clone, Default)]
pub struct OriginMatcher {
    exact: HashSet<Origin>,
    /// (scheme, port, suffix with leading dot): `https://*.example.com` is
    /// ("https", 443, ".example.com").
    wildcards: Vec<(String, u16, String)>,
    allow_missing: bool,
}

impl OriginMatcher {
    pub fn new<S: AsRef<str>>(patterns: &[S], allow_missing: bool) -> Result<Self, (usize, BadPattern)> {
        let mut m = OriginMatcher { allow_missing, ..Default::default() };
        for (i, p) in patterns.iter().enumerate() {
            let p = p.as_ref();
            match p.split_once("://*.") {
                Some((scheme, rest)) => {
                    let o = Origin::parse(&format!("{scheme}://{rest}"))
                        .ok_or_else(|| (i, BadPattern(format!("`{p}` is not an origin pattern"))))?;
                    if !o.host.contains('.') && !o.host.starts_with('[') {
                        // `https://*.com` would allow every .com site.
                        return Err((i, BadPattern(format!("`{p}`: a wildcard needs a domain of two labels or more"))));
                    }
                    m.wildcards.push((o.scheme, o.port, format!(".{}", o.host)));
                }
                None => {
                    if p.contains('*') {
                        return Err((i, BadPattern(format!("`{p}`: only a leading `*.` label is allowed"))));
                    }
                    let o = Origin::parse(p).ok_or_else(|| (i, BadPattern(format!("`{p}` is not an origin (scheme://host[:port])"))))?;
                    m.exact.insert(o);
                }
            }
        }
        Ok(m)
    }

    /// Whether a request with this `Origin` header value (or none) is allowed.
    pub fn allows(&self, header: Option<&str>) -> bool {
        let Some(value) = header else { return self.allow_missing };
        let Some(o) = Origin::parse(value.trim()) else { return false };
        if self.exact.contains(&o) {
            return true;
        }
        self.wildcards.iter().any(|(scheme, port, suffix)| {
            *scheme == o.scheme && *port == o.port && o.host.len() > suffix.len() && o.host.ends_with(suffix.as_str())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &[&str]) -> OriginMatcher {
        OriginMatcher::new(p, false).expect("valid patterns")
    }

    #[test]
    fn exact_and_normalised() {
        let m = m(&["https://app.example.com"]);
        assert!(m.allows(Some("https://app.example.com")));
        assert!(m.allows(Some("HTTPS://App.Example.COM:443")));
        assert!(!m.allows(Some("https://app.example.com:8443")));
        assert!(!m.allows(Some("http://app.example.com")));
        assert!(!m.allows(Some("https://app.example.com.evil.net")));
        assert!(!m.allows(Some("null")));
        assert!(!m.allows(None));
    }

    #[test]
    fn wildcard_subdomains() {
        let m = m(&["https://*.example.com"]);
        assert!(m.allows(Some("https://a.example.com")));
        assert!(m.allows(Some("https://a.b.example.com")));
        assert!(!m.allows(Some("https://example.com")));
        assert!(!m.allows(Some("https://example.com.evil.net")));
        assert!(!m.allows(Some("https://evilexample.com")));
        assert!(!m.allows(Some("http://a.example.com")));
    }

    #[test]
    fn missing_origin() {
        assert!(OriginMatcher::new::<&str>(&[], true).expect("ok").allows(None));
        assert!(!OriginMatcher::new::<&str>(&[], false).expect("ok").allows(None));
    }

    #[test]
    fn bad_patterns_are_refused() {
        for p in ["app.example.com", "https://*.com", "https://a.*.example.com", "ftp://x.y", "https://x/y"] {
            assert!(OriginMatcher::new(&[p], false).is_err(), "{p} accepted");
        }
    }

    #[test]
    fn same_origin_compares_normalised_forms() {
        for (a, b) in [
            ("https://App.example.com", "https://app.example.com"),
            ("HTTPS://APP.EXAMPLE.COM", "https://app.example.com"),
            ("https://app.example.com:443", "https://app.example.com"),
            ("https://app.example.com/", "https://app.example.com"),
            ("https://app.example.com.", "https://app.example.com"),
            ("http://app.example.com:80", "http://app.example.com"),
            ("https://app.example.com:8443", "https://APP.example.com:8443"),
            ("https://[2001:DB8::1]", "https://[2001:db8::1]:443"),
        ] {
            assert!(same_origin(a, b), "{a} vs {b}");
            assert!(same_origin(b, a), "{b} vs {a}");
        }
        for (a, b) in [
            ("https://app.example.com", "http://app.example.com"),
            ("https://app.example.com", "https://app.example.com:8443"),
            ("https://app.example.com", "https://evil.example.com"),
            ("https://app.example.com", "https://app.example.com.evil.net"),
            ("http://app.example.com:443", "https://app.example.com"),
            ("null", "null"),
            ("", ""),
            ("https://app.example.com/path", "https://app.example.com/path"),
        ] {
            assert!(!same_origin(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn normalized_form() {
        let n = |s: &str| Origin::parse(s).expect("origin").normalized();
        assert_eq!(n("HTTPS://App.Example.COM:443/"), "https://app.example.com");
        assert_eq!(n("http://app.example.com:80"), "http://app.example.com");
        assert_eq!(n("https://app.example.com:8443"), "https://app.example.com:8443");
        assert_eq!(n("http://app.example.com:443"), "http://app.example.com:443");
        assert_eq!(n("wss://x.example.com:443"), "wss://x.example.com");
        assert_eq!(n("https://[2001:DB8::1]:443"), "https://[2001:db8::1]");
        assert_eq!(n("https://app.example.com."), "https://app.example.com");
    }

    fn origin_text() -> impl Strategy<Value = String> {
        (
            "(?i)(https?|wss?)",
            proptest::collection::vec("[a-zA-Z0-9_-]{1,10}", 1..4),
            proptest::option::of(0u16..=u16::MAX),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(scheme, labels, port, dot, slash)| {
                let mut s = format!("{scheme}://{}", labels.join("."));
                if dot {
                    s.push('.');
                }
                if let Some(p) = port {
                    s.push_str(&format!(":{p}"));
                }
                if slash {
                    s.push('/');
                }
                s
            })
    }

    fn flip_case(s: &str, mask: &[bool]) -> String {
        s.chars().zip(mask.iter().cycle()).map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect()
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,80}") {
            let _ = Origin::parse(&s);
            let _ = m(&["https://*.example.com"]).allows(Some(&s));
            let _ = same_origin(&s, "https://app.example.com");
        }

        #[test]
        fn same_origin_is_reflexive(s in origin_text(), junk in ".{0,40}") {
            for x in [s.as_str(), junk.as_str()] {
                if let Some(o) = Origin::parse(x) {
                    prop_assert!(same_origin(x, x), "{}", x);
                    // The normalised form parses back to the same origin and matches.
                    let n = o.normalized();
                    prop_assert_eq!(Origin::parse(&n), Some(o));
                    prop_assert!(same_origin(&n, x), "{} vs {}", n, x);
                    prop_assert_eq!(Origin::parse(&n).map(|o| o.normalized()), Some(n));
                } else {
                    prop_assert!(!same_origin(x, x), "{}", x);
                }
            }
        }

        #[test]
        fn host_case_does_not_matter(s in origin_text(), mask in proptest::collection::vec(any::<bool>(), 1..16)) {
            prop_assume!(Origin::parse(&s).is_some());
            let other = flip_case(&s, &mask);
            prop_assert!(same_origin(&s, &other), "{} vs {}", s, other);
            prop_assert!(m(&[s.as_str()]).allows(Some(&other)));
        }
    }
}
