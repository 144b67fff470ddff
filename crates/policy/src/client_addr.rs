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

    proptest! {
        #[test]
        fn never_panics_and_untrusted_result_or_trusted_chain(s in ".{0,120}") {
            let got = tp().client_addr(ip("10.0.0.1"), [s.as_str()]);
            let _ = got;
        }
    }
}
