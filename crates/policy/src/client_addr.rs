//! The client's address (SPEC section 3, step 5): the TCP peer, or, when the peer is a
//! trusted proxy, the right-most `X-Forwarded-For` entry that is not itself trusted.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// Resolves the client address. `xff` are the `X-Forwarded-For` header values in the
    /// order received (several headers are one comma-separated list). Headers from an
    /// untrusted peer are ignored. An unparsable entry stops the walk: the last trusted
    /// hop is then the client, since nothing left of garbage can be believed.
    pub fn client_addr<'a>(&self, peer: IpAddr, xff: impl IntoIterator<Item = &'a str>) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        let entries: Vec<&str> = xff.into_iter().flat_map(|v| v.split(',')).collect();
        let mut current = peer;
        for raw in entries.iter().rev() {
            let Some(ip) = parse_entry(raw.trim()) else { return current };
            current = ip;
            if !self.contains(ip) {
                return ip;
            }
        }
        current
    }
}

/// Why a trusted proxy's `X-Forwarded-For` could not be read. Carries no header bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadForwardedFor {
    #[error("X-Forwarded-For from a trusted proxy is not UTF-8")]
    NotUtf8,
    #[error("X-Forwarded-For from a trusted proxy has an entry that is not an IP address")]
    NotAnAddress,
}

impl TrustedProxies {
    /// Resolves the client address like [`client_addr`](Self::client_addr), from the raw
    /// `X-Forwarded-For` header values (bytes, in the order received; several headers are
    /// one comma-separated list), but says when a trusted proxy's chain cannot be read
    /// instead of falling back to the proxy's own address.
    ///
    /// - Untrusted peer: `Ok(peer)`, headers ignored whatever they hold.
    /// - Trusted peer: walking from the right, each entry (surrounding whitespace allowed;
    ///   `ip`, `ip:port` or `[v6]:port`) is read until the first one that is not a trusted
    ///   proxy, which is the client. An entry met on that walk that is not UTF-8 is
    ///   `Err(NotUtf8)`; one that is empty or not an address is `Err(NotAnAddress)`. A
    ///   header present but empty counts as an empty entry. Entries left of the client are
    ///   whatever the client itself sent and are never read (so `unknown, 1.2.3.4` is
    ///   `1.2.3.4`, as with `client_addr`).
    /// - Trusted peer, no header, or only trusted hops: the left-most trusted hop (the
    ///   peer when there is no header).
    pub fn client_addr_checked<'a>(&self, peer: IpAddr, xff: impl IntoIterator<Item = &'a [u8]>) -> Result<IpAddr, BadForwardedFor> {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return Ok(peer);
        }
        let entries: Vec<&[u8]> = xff.into_iter().flat_map(|v| v.split(|b| *b == b',')).collect();
        let mut current = peer;
        for raw in entries.iter().rev() {
            let text = std::str::from_utf8(raw).map_err(|_| BadForwardedFor::NotUtf8)?;
            let ip = parse_entry(text.trim()).ok_or(BadForwardedFor::NotAnAddress)?;
            current = ip;
            if !self.contains(ip) {
                return Ok(ip);
            }
        }
        Ok(current)
    }
}

/// The prefix length [`rate_key`] is meant to be called with for IPv6: one /64 is what
/// one subscriber usually gets, and holds 2^64 addresses to rotate through.
pub const DEFAULT_IPV6_RATE_PREFIX: u8 = 64;

/// The key a per-IP limit (rate or cap) should count a client under: an IPv4 address
/// (IPv4-mapped IPv6 included) as itself, an IPv6 address masked to its
/// `/ipv6_prefix_len` network (lengths over 128 are 128), so one host cannot escape its
/// limit by rotating addresses within its prefix.
pub fn rate_key(ip: IpAddr, ipv6_prefix_len: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let len = u32::from(ipv6_prefix_len.min(128));
            let mask = u128::MAX.checked_shl(128 - len).unwrap_or(0);
            IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn parse_entry(s: &str) -> Option<IpAddr> {
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // "1.2.3.4:5678" or "[::1]:5678"
    s.parse::<SocketAddr>().ok().map(|sa| canonical(sa.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net"), "127.0.0.1/32".parse().expect("net")])
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_headers_ignored() {
        assert_eq!(tp().client_addr(ip("203.0.113.9"), ["1.2.3.4"]), ip("203.0.113.9"));
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let t = tp();
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["6.6.6.6, 1.2.3.4, 10.2.2.2"]), ip("1.2.3.4"));
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["6.6.6.6", "1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["[2001:db8::1]:443"]), ip("2001:db8::1"));
        assert_eq!(t.client_addr(ip("::ffff:10.1.1.1"), ["1.2.3.4:99"]), ip("1.2.3.4"));
    }

    #[test]
    fn garbage_and_empty() {
        let t = tp();
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["1.2.3.4, nonsense"]), ip("10.1.1.1"));
        assert_eq!(t.client_addr(ip("10.1.1.1"), std::iter::empty::<&str>()), ip("10.1.1.1"));
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["10.3.3.3"]), ip("10.3.3.3"));
    }

    fn checked(t: &TrustedProxies, peer: &str, xff: &[&[u8]]) -> Result<IpAddr, BadForwardedFor> {
        t.client_addr_checked(ip(peer), xff.iter().copied())
    }

    #[test]
    fn checked_resolves_like_client_addr() {
        let t = tp();
        assert_eq!(checked(&t, "10.1.1.1", &[b"6.6.6.6, 1.2.3.4, 10.2.2.2"]), Ok(ip("1.2.3.4")));
        assert_eq!(checked(&t, "10.1.1.1", &[b"6.6.6.6", b" 1.2.3.4 "]), Ok(ip("1.2.3.4")));
        assert_eq!(checked(&t, "10.1.1.1", &[b"[2001:db8::1]:443"]), Ok(ip("2001:db8::1")));
        assert_eq!(checked(&t, "::ffff:10.1.1.1", &[b"1.2.3.4:99"]), Ok(ip("1.2.3.4")));
        assert_eq!(checked(&t, "10.1.1.1", &[]), Ok(ip("10.1.1.1")), "no header: the proxy itself");
        assert_eq!(checked(&t, "10.1.1.1", &[b"10.3.3.3"]), Ok(ip("10.3.3.3")));
        // Left of the client is whatever the client sent: not read, so not an error.
        assert_eq!(checked(&t, "10.1.1.1", &[b"unknown, 1.2.3.4"]), Ok(ip("1.2.3.4")));
        assert_eq!(checked(&t, "10.1.1.1", &[b"\xff\xfe", b"1.2.3.4"]), Ok(ip("1.2.3.4")));
    }

    #[test]
    fn checked_reports_a_broken_chain_from_a_trusted_proxy() {
        let t = tp();
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4, nonsense"]), Err(BadForwardedFor::NotAnAddress));
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4, 10.2.2.2, nonsense, 10.3.3.3"]), Err(BadForwardedFor::NotAnAddress));
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4,"]), Err(BadForwardedFor::NotAnAddress), "empty entry");
        assert_eq!(checked(&t, "10.1.1.1", &[b""]), Err(BadForwardedFor::NotAnAddress), "empty header");
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4:http"]), Err(BadForwardedFor::NotAnAddress));
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4", b"garbage"]), Err(BadForwardedFor::NotAnAddress));
        assert_eq!(checked(&t, "10.1.1.1", &[b"\xff1.2.3.4"]), Err(BadForwardedFor::NotUtf8));
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4, \xc3"]), Err(BadForwardedFor::NotUtf8));
        assert_eq!(checked(&t, "10.1.1.1", &[b"1.2.3.4", "1.2.3.4\u{e9}".as_bytes()]), Err(BadForwardedFor::NotAnAddress));
        // From an untrusted peer, headers are ignored whatever they hold.
        assert_eq!(checked(&t, "203.0.113.9", &[b"\xff", b"nonsense"]), Ok(ip("203.0.113.9")));
        // The old API keeps its fallback to the last trusted hop.
        assert_eq!(t.client_addr(ip("10.1.1.1"), ["1.2.3.4, nonsense"]), ip("10.1.1.1"));
    }

    #[test]
    fn rate_keys_bucket_ipv6_by_prefix() {
        assert_eq!(rate_key(ip("203.0.113.9"), 64), ip("203.0.113.9"));
        assert_eq!(rate_key(ip("203.0.113.9"), 0), ip("203.0.113.9"), "IPv4 is never masked");
        assert_eq!(rate_key(ip("::ffff:203.0.113.9"), 64), ip("203.0.113.9"), "mapped IPv4 is IPv4");
        assert_eq!(rate_key(ip("2001:db8:1:2:3:4:5:6"), DEFAULT_IPV6_RATE_PREFIX), ip("2001:db8:1:2::"));
        assert_eq!(rate_key(ip("2001:db8:1:2:ffff::1"), 64), rate_key(ip("2001:db8:1:2::2"), 64));
        assert_ne!(rate_key(ip("2001:db8:1:2::1"), 64), rate_key(ip("2001:db8:1:3::1"), 64));
        assert_eq!(rate_key(ip("2001:db8:1:2:3:4:5:6"), 48), ip("2001:db8:1::"));
        assert_eq!(rate_key(ip("2001:db8:1:2ff:3:4:5:6"), 56), ip("2001:db8:1:200::"));
        assert_eq!(rate_key(ip("2001:db8:1:2:3:4:5:6"), 128), ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(rate_key(ip("2001:db8:1:2:3:4:5:6"), 200), ip("2001:db8:1:2:3:4:5:6"), "over 128: the whole address");
        assert_eq!(rate_key(ip("2001:db8:1:2:3:4:5:6"), 0), ip("::"));
        assert_eq!(rate_key(ip("2001:db8::1"), 1), ip("::"));
        assert_eq!(rate_key(ip("8001:db8::1"), 1), ip("8000::"));
    }

    /// An X-Forwarded-For entry as a proxy chain may carry it.
    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            (0u8..=255, 0u8..=255).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            Just("127.0.0.1".to_owned()),
            (1u8..=9, 0u8..=255).prop_map(|(a, b)| format!("{a}.2.3.{b}")),
            (1u8..=9, any::<u16>()).prop_map(|(a, p)| format!("{a}.9.9.9:{p}")),
            any::<u16>().prop_map(|x| format!("2001:db8::{x:x}")),
            any::<u16>().prop_map(|x| format!("[2001:db8::{x:x}]:443")),
            (0u8..=255).prop_map(|b| format!("::ffff:10.0.0.{b}")),
            "[a-z]{0,6}",
        ]
    }

    proptest! {
        #[test]
        fn never_panics_and_untrusted_result_or_trusted_chain(s in ".{0,120}", list in proptest::collection::vec(entry(), 0..6), pad in " {0,2}") {
            let t = tp();
            let peer = ip("10.0.0.1");
            for header in [s.clone(), list.join(&format!("{pad},{pad}"))] {
                let entries: Vec<Option<IpAddr>> = header.split(',').map(|e| parse_entry(e.trim())).collect();
                let got = t.client_addr(peer, [header.as_str()]);
                // The result is the peer or one of the entries.
                prop_assert!(got == peer || entries.contains(&Some(got)), "{} from {:?}", got, header);
                // Walking from the right, the first entry not trusted is the client.
                let walked: Vec<Option<IpAddr>> = entries.iter().rev().copied().take_while(Option::is_some).collect();
                let first_untrusted = walked.iter().flatten().find(|ip| !t.contains(**ip)).copied();
                match first_untrusted {
                    Some(client) => prop_assert_eq!(got, client, "{:?}", header),
                    // Only trusted hops before the end or garbage: the last trusted one.
                    None => {
                        prop_assert!(t.contains(got), "{} from {:?}", got, header);
                        prop_assert_eq!(got, walked.last().copied().flatten().unwrap_or(peer));
                    }
                }
                // The checked API agrees where the walk did not hit garbage, and says so where it did.
                let checked = t.client_addr_checked(peer, [header.as_bytes()]);
                if first_untrusted.is_some() || walked.len() == entries.len() {
                    prop_assert_eq!(checked, Ok(got));
                } else {
                    prop_assert_eq!(checked, Err(BadForwardedFor::NotAnAddress));
                }
                // An untrusted peer is never replaced.
                prop_assert_eq!(t.client_addr(ip("203.0.113.7"), [header.as_str()]), ip("203.0.113.7"));
            }
        }

        #[test]
        fn rate_key_is_a_prefix(a in any::<u128>(), p in 0u8..=128) {
            let v6 = std::net::Ipv6Addr::from(a);
            let key = rate_key(IpAddr::V6(v6), p);
            if v6.to_ipv4_mapped().is_some() {
                prop_assert!(key.is_ipv4());
            } else {
                let net = ipnet::Ipv6Net::new(v6, p).expect("prefix");
                prop_assert_eq!(key, IpAddr::V6(net.network()));
            }
        }
    }
}
